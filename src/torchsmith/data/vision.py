"""Image datasets: MNIST-style IDX files, CIFAR-10, image-folder trees, the embedded sample.

Every reader decodes once into uint8 tensors (N, C, H, W) held in memory; image folders
are also cached on disk, keyed by the source files, so later runs skip decoding.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from torchsmith.data.bundle import DataBundle, DataInfo
from torchsmith.data.memory import ImageTensors, channel_stats, split_indices
from torchsmith.errors import UsageError

if TYPE_CHECKING:
    from torchvision.io import ImageReadMode

T = TypeVar("T")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
DEFAULT_CACHE = Path(os.environ.get("TORCHSMITH_CACHE", Path.home() / ".cache" / "torchsmith"))


def make_bundle(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor] | None,
    class_names: list[str],
    *,
    val_fraction: float,
    seed: int,
    augment: str = "none",
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> DataBundle:
    """Wrap uint8 images and labels into a DataBundle, carving a seeded validation split."""
    images, labels = train
    mean, std = channel_stats(images)
    full = ImageTensors(images, labels, mean, std, augment=augment)
    if val is not None:
        train_source, val_source = full, ImageTensors(*val, mean, std)
    elif val_fraction > 0:
        train_idx, val_idx = split_indices(len(full), val_fraction, seed)
        train_source, val_source = full.subset(train_idx), full.subset(val_idx, augment="none")
    else:
        train_source, val_source = full, None
    test_source = ImageTensors(*test, mean, std) if test is not None else None
    info = DataInfo(
        modality="image",
        num_classes=len(class_names),
        input_shape=tuple(images.shape[1:]),
        class_names=class_names,
        preprocessing={
            "kind": "image",
            "mean": mean,
            "std": std,
            "size": list(images.shape[2:]),
            "channels": int(images.shape[1]),
        },
    )
    return DataBundle(train_source, val_source, test_source, info)


def load_mnist_sample(val_fraction: float = 0.1, seed: int = 0, augment: str = "none") -> DataBundle:
    """The small real MNIST sample shipped inside the package (works offline)."""
    with resources.files("torchsmith.data.samples").joinpath("mnist_sample.npz").open("rb") as handle:
        arrays = np.load(handle, allow_pickle=False)
        parts = {key: torch.from_numpy(arrays[key].copy()) for key in arrays.files}
    train = (parts["train_images"].unsqueeze(1), parts["train_labels"].long())
    test = (parts["test_images"].unsqueeze(1), parts["test_labels"].long())
    names = [str(i) for i in range(10)]
    return make_bundle(train, test, names, val_fraction=val_fraction, seed=seed, augment=augment)


def load_torchvision_digits(
    name: str, data_dir: str | None, val_fraction: float = 0.1, seed: int = 0, augment: str = "none"
) -> DataBundle:
    """MNIST or Fashion-MNIST through torchvision (IDX files; downloaded with checksums if absent)."""
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[name]
    root = Path(data_dir) if data_dir else DEFAULT_CACHE / "data"
    splits = []
    for train in (True, False):
        factory = partial(cls, str(root), train=train, download=data_dir is None)
        dataset = _open_torchvision(factory, name, root)
        splits.append((dataset.data.unsqueeze(1).contiguous(), dataset.targets.long()))
    return make_bundle(splits[0], splits[1], list(cls.classes), val_fraction=val_fraction, seed=seed, augment=augment)


def _open_torchvision(factory: Callable[[], T], name: str, root: Path) -> T:
    try:
        return factory()
    except RuntimeError as error:
        raise UsageError(
            f"could not read the {name} files under {root}: {error}. Point --data-dir at the folder "
            f"that holds {type_folder(name)}/raw/ (the original IDX files), or leave --data-dir out "
            f"to download them."
        ) from None
    except (ValueError, IndexError, AssertionError) as error:
        raise UsageError(
            f"the {name} files under {root} are corrupt or truncated ({error}); delete them and download again"
        ) from None
    except OSError as error:
        raise UsageError(
            f"could not read or download {name} into {root}: {error}. Without "
            f"internet access, pass --data-dir with a local copy."
        ) from None


def type_folder(name: str) -> str:
    return {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}.get(name, name)


def load_cifar10(
    data_dir: str | None, val_fraction: float = 0.1, seed: int = 0, augment: str = "crop-flip"
) -> DataBundle:
    """CIFAR-10: an image-folder tree (train/ and test/) or torchvision's python release."""
    if data_dir and (Path(data_dir) / "train").is_dir():
        return load_imagefolder(data_dir, val_fraction=val_fraction, seed=seed, augment=augment)
    from torchvision import datasets

    root = Path(data_dir) if data_dir else DEFAULT_CACHE / "data"
    splits = []
    for train in (True, False):
        # torchvision verifies the MD5 of every batch file before unpickling it, so only
        # the official release files are ever loaded.
        factory = partial(datasets.CIFAR10, str(root), train=train, download=data_dir is None)
        dataset = _open_torchvision(factory, "cifar10", root)
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
        splits.append((images, torch.tensor(dataset.targets)))
    return make_bundle(
        splits[0], splits[1], list(datasets.CIFAR10.classes), val_fraction=val_fraction, seed=seed, augment=augment
    )


def load_imagefolder(
    path: str,
    val_fraction: float = 0.1,
    seed: int = 0,
    augment: str = "none",
    cache_dir: Path | None = None,
    test_fraction: float = 0.1,
) -> DataBundle:
    """A class-per-folder tree; with `train/` and `test/` (and optional `val/`) inside, or one
    tree split by seed into train/val/test."""
    root = Path(path)
    if not root.is_dir():
        raise UsageError(
            f"image folder {root} does not exist; expected a folder with one "
            f"sub-folder per class (or train/ and test/ folders of that shape)"
        )
    if (root / "train").is_dir():
        classes = class_folders(root / "train")
        train = read_image_tree(root / "train", classes, cache_dir)
        test = read_image_tree(root / "test", classes, cache_dir) if (root / "test").is_dir() else None
        val = read_image_tree(root / "val", classes, cache_dir) if (root / "val").is_dir() else None
        return make_bundle(train, test, classes, val_fraction=val_fraction, seed=seed, augment=augment, val=val)
    classes = class_folders(root)
    images, labels = read_image_tree(root, classes, cache_dir)
    rest, test_idx = split_indices(len(labels), test_fraction, seed + 1)
    return make_bundle(
        (images[rest], labels[rest]),
        (images[test_idx], labels[test_idx]),
        classes,
        val_fraction=val_fraction,
        seed=seed,
        augment=augment,
    )


def class_folders(root: Path) -> list[str]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UsageError(f"{root} has no class folders: put each class's images in {root}/<class name>/")
    return classes


def read_image_tree(root: Path, classes: list[str], cache_dir: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every image under root/<class>/ into (N, C, H, W) uint8, cached on disk."""
    files: list[str] = []
    labels: list[int] = []
    digest = hashlib.sha256()
    for label, name in enumerate(classes):
        found, stamps = _image_files(root / name)
        files += found
        labels += [label] * len(found)
        digest.update("".join(stamps).encode())
    if not files:
        raise UsageError(
            f"no images found under {root} (looked for {sorted(IMAGE_SUFFIXES)} files in {', '.join(classes)})"
        )
    cache = (cache_dir or DEFAULT_CACHE / "images") / f"{digest.hexdigest()[:24]}.safetensors"
    if cache.exists():
        try:
            cached = load_file(str(cache))
            return cached["images"], cached["labels"]
        except Exception:  # a damaged cache is rebuilt, never trusted
            cache.unlink(missing_ok=True)
    images = decode_images([Path(f) for f in files])
    label_tensor = torch.tensor(labels, dtype=torch.int64)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    save_file({"images": images, "labels": label_tensor}, str(tmp))
    os.replace(tmp, cache)
    return images, label_tensor


def _image_files(folder: Path) -> tuple[list[str], list[str]]:
    """The image files of one folder, sorted, and a stamp per file (path, size, mtime) for the
    cache key: a changed, added or removed file gives another key. One directory scan and one
    stat per file, without a Path object per file (60,000 of them cost half a second)."""
    if not folder.is_dir():
        return [], []
    with os.scandir(folder) as entries:
        chosen = sorted(
            (
                (entry.path, entry)
                for entry in entries
                if os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and not entry.is_dir()
            ),
            key=lambda pair: pair[0],
        )
    stamps = []
    for path, entry in chosen:
        stat = entry.stat()
        stamps.append(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n")
    return [path for path, _ in chosen], stamps


def decode_images(files: list[Path]) -> torch.Tensor:
    """Decode files in threads (the decoders release the GIL) into one uint8 tensor."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    first = _decode_one(files[0], ImageReadMode.UNCHANGED, decode_image, read_file)
    mode = ImageReadMode.GRAY if first.shape[0] == 1 else ImageReadMode.RGB

    def work(path: Path) -> torch.Tensor:
        return _decode_one(path, mode, decode_image, read_file)

    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        # torchvision 0.29 marks its decoders deprecated in favour of torchcodec, which needs
        # FFmpeg libraries; the decoders still work and need nothing beyond torchvision.
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded = list(pool.map(work, files, chunksize=256))
    shapes = {tuple(t.shape) for t in decoded}
    if len(shapes) > 1:
        raise UsageError(
            f"images under {files[0].parent.parent} have different sizes "
            f"{sorted(shapes)[:4]}; resize them to one size first"
        )
    return torch.stack(decoded)


def _decode_one(
    path: Path, mode: ImageReadMode, decode_image: Callable[..., torch.Tensor], read_file: Callable[[str], Any]
) -> torch.Tensor:
    try:
        return decode_image(read_file(str(path)), mode=mode)
    except (RuntimeError, ValueError) as error:
        raise UsageError(f"could not decode image {path}: {error}. Remove or replace the file.") from None
