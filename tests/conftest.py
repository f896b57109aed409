"""Shared fixtures: tiny synthetic data and models, real-format files, the real datasets."""

from __future__ import annotations

import gzip  # noqa: F401  (kept for tests writing compressed IDX variants)
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
# TORCHSMITH_SHARED_DATA points elsewhere when the checkout does not sit beside shared/ (a worktree)
SHARED_DATA = Path(os.environ.get("TORCHSMITH_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_dataset(relative: str) -> Path:
    """A real dataset under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real dataset {relative} not found beside the repository (../shared/data)")
    return path


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an uncompressed IDX file (the MNIST format): magic, dims, big-endian data."""
    dtype_code = {np.uint8: 0x08}[array.dtype.type]
    header = struct.pack(">HBB", 0, dtype_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    """A tiny MNIST in torchvision's layout (MNIST/raw/*-ubyte) with learnable digits."""
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 600), ("t10k", 200)):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        images = rng.integers(0, 60, (count, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):  # a bright bar whose row encodes the label
            images[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return tmp_path / "mnist"


@pytest.fixture
def blobs() -> tuple[torch.Tensor, torch.Tensor]:
    """256 samples of 8 features in 4 separable classes."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (256,), generator=generator)
    centers = torch.randn(4, 8, generator=generator) * 3
    inputs = centers[labels] + torch.randn(256, 8, generator=generator) * 0.5
    return inputs, labels


def tiny_mlp(in_features: int = 8, num_classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(in_features, 16), nn.ReLU(), nn.Linear(16, num_classes))


def write_image_tree(root: Path, classes: int = 3, per_class: int = 12, size: int = 16) -> Path:
    """PNG images in root/<class>/, each class a different colour, for imagefolder tests."""
    from torchvision.io import write_png

    generator = torch.Generator().manual_seed(0)
    for label in range(classes):
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = torch.randint(0, 40, (3, size, size), dtype=torch.uint8, generator=generator)
            image[label % 3, : 2 + label] = 220  # colour and a band whose height encodes the class
            write_png(image, str(folder / f"{i:03d}.png"))
    return root
