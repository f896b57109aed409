"""Build the embedded MNIST sample shipped in src/torchsmith/data/samples/.

Usage: python tools/make_mnist_sample.py MNIST_ROOT [--train N] [--test N]
MNIST_ROOT is a folder holding MNIST/raw/*-ubyte (torchvision's layout). The sample is
the first N training and first N test digits, in their original order.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from torchvision.datasets import MNIST


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root")
    parser.add_argument("--train", type=int, default=12000)
    parser.add_argument("--test", type=int, default=2000)
    args = parser.parse_args()
    train = MNIST(args.root, train=True, download=False)
    test = MNIST(args.root, train=False, download=False)
    out = Path(__file__).resolve().parents[1] / "src/torchsmith/data/samples/mnist_sample.npz"
    np.savez_compressed(
        out,
        train_images=train.data[: args.train].numpy(),
        train_labels=train.targets[: args.train].numpy().astype(np.uint8),
        test_images=test.data[: args.test].numpy(),
        test_labels=test.targets[: args.test].numpy().astype(np.uint8),
    )
    print(f"wrote {out.name}: {out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
