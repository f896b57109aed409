"""MNIST-style IDX files read directly, when they are already on disk.

Written by hand because it is faster: `import torchvision` alone imports torch._dynamo
(through torchvision.ops) and took 1.5-1.8 s of every `--data mnist` run, longer than
reading the files. Downloading (with checksums) stays with torchvision.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

# torchvision's class names for these datasets (datasets.MNIST.classes, FashionMNIST.classes)
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CLASSES = {
    "mnist": [f"{digit} - {word}" for digit, word in enumerate(DIGITS)],
    "fashion-mnist": [
        *("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"),
        *("Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ],
}
FILES = {  # split -> (images, labels), as in torchvision's `<root>/<Name>/raw/` folder
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def raw_files(raw: Path) -> dict[str, tuple[Path, Path]] | None:
    """The four uncompressed IDX files under `raw`, or None when any is missing."""
    paths = {split: (raw / images, raw / labels) for split, (images, labels) in FILES.items()}
    return paths if all(path.is_file() for pair in paths.values() for path in pair) else None


def read_idx(path: Path, dims: int) -> torch.Tensor:
    """An unsigned-byte IDX file with `dims` dimensions as a uint8 tensor (no copy of the data).

    Raises ValueError when the header is not that of such a file or the data is truncated.
    """
    data = np.fromfile(path, dtype=np.uint8)
    header = 4 + 4 * dims
    if len(data) < header or data[:4].tolist() != [0, 0, 0x08, dims]:
        raise ValueError(f"{path.name} is not an unsigned-byte IDX file with {dims} dimensions")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i].tobytes(), "big") for i in range(dims))
    body = data[header:]
    if len(body) != int(np.prod(shape)):
        raise ValueError(f"{path.name} holds {len(body)} bytes of data, its header says {shape}")
    return torch.from_numpy(body.reshape(shape))


def read_split(images: Path, labels: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, H, W) uint8 images and (N,) int64 labels of one split."""
    x, y = read_idx(images, 3), read_idx(labels, 1)
    if len(x) != len(y):
        raise ValueError(f"{images.name} holds {len(x)} images but {labels.name} {len(y)} labels")
    return x.unsqueeze(1), y.long()
