"""Image datasets: MNIST-style IDX files, CIFAR-10, image-folder trees, the embedded sample.

Every reader decodes once into uint8 tensors (N, C, H, W); image folders go through the
decoded-once store (`torchsmith.data.image_store`), cached on disk and keyed by the source
files, so later runs skip decoding, and mapped from disk when larger than memory.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from importlib import resources
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from torchsmith.data import idx
from torchsmith.data.bundle import DataBundle, DataInfo
from torchsmith.data.disk_cache import cache_root
from torchsmith.data.image_files import IMAGE_SUFFIXES, list_image_files
from torchsmith.data.image_sets import LabelledRows, check_classes, fixed_size, image_bundle, open_labelled
from torchsmith.data.image_store import ImageOptions
from torchsmith.data.memory import ImageTensors, channel_stats, split_indices
from torchsmith.errors import UsageError

T = TypeVar("T")


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
    """MNIST or Fashion-MNIST: the IDX files under `<root>/<MNIST|FashionMNIST>/raw/`, read
    directly; through torchvision (downloaded with checksums) when they are not there."""
    root = Path(data_dir) if data_dir else cache_root() / "data"
    files = idx.raw_files(root / type_folder(name) / "raw")
    if files is not None:
        try:
            train_split, test_split = (idx.read_split(*files[split]) for split in ("train", "test"))
        except (ValueError, OSError) as error:
            raise UsageError(
                f"the {name} files under {root} are corrupt or truncated ({error}); delete them and download again"
            ) from None
        return make_bundle(
            train_split, test_split, idx.CLASSES[name], val_fraction=val_fraction, seed=seed, augment=augment
        )
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[name]
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

    root = Path(data_dir) if data_dir else cache_root() / "data"
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
    options: ImageOptions | None = None,
) -> DataBundle:
    """A class-per-folder tree; with `train/` and `test/` (and optional `val/`) inside, or one
    tree split by seed into train/val/test. Images of any size and format: see `ImageOptions`."""
    options = options or ImageOptions(cache_dir=cache_dir)
    root = Path(path)
    if not root.is_dir():
        raise UsageError(
            f"image folder {root} does not exist; expected a folder with one "
            f"sub-folder per class (or train/ and test/ folders of that shape)"
        )
    if (root / "train").is_dir():
        classes = class_folders(root / "train")
        train = read_image_tree(root / "train", classes, options)
        fixed = fixed_size(options, train)
        parts = {
            "train": train,
            "test": read_image_tree(root / "test", classes, fixed) if (root / "test").is_dir() else None,
            "val": read_image_tree(root / "val", classes, fixed) if (root / "val").is_dir() else None,
        }
    else:
        classes = class_folders(root)
        full = read_image_tree(root, classes, options)
        rest, test_idx = split_indices(len(full.rows), test_fraction, seed + 1)
        parts = {"train": full.take(rest), "test": full.take(test_idx), "val": None}
    return image_bundle(parts, classes, options, val_fraction=val_fraction, seed=seed, augment=augment)


def class_folders(root: Path) -> list[str]:
    """The class names: the sub-folders' names (any script), sorted; hidden folders ignored."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UsageError(f"{root} has no class folders: put each class's images in {root}/<class name>/")
    check_classes(classes, str(root))
    return classes


def read_image_tree(root: Path, classes: list[str], options: ImageOptions) -> LabelledRows:
    """Every image under root/<class>/ (recursively), decoded once into the store."""
    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = list_image_files(root / name) if (root / name).is_dir() else []
        files += found
        labels += [label] * len(found)
    if not files:
        raise UsageError(
            f"no images found under {root} (looked for {sorted(IMAGE_SUFFIXES)} files in {', '.join(classes)})"
        )
    return open_labelled(files, torch.tensor(labels, dtype=torch.int64), options, str(root))
