"""Images per second through a training data path: torchvision's ImageFolder + DataLoader
against torchsmith's in-memory path, on the CIFAR-10 JPEG tree with random crop (padding 4)
and horizontal flip, batch 256.

- torchvision: `ImageFolder` + `DataLoader(num_workers=2)`, `RandomCrop(32, padding=4)`,
  `RandomHorizontalFlip`, `ToTensor`, `Normalize`: decodes every JPEG every epoch.
- torchsmith: `load_imagefolder` (decoded once, cached on disk as uint8), then
  `MemoryBatches` building each normalised, augmented batch with a few tensor ops.

Both are timed over full passes after a first (warm-up) pass, interleaved, median.

    python benchmarks/loader.py --data-dir ../shared/data/cifar10-jpeg --repeats 5
"""

from __future__ import annotations

import argparse

import torch
from common import DEFAULT_DATA, device_name, interleaved, median


def torchvision_pass(loader) -> int:
    count = 0
    for images, _ in loader:
        count += images.shape[0]
    return count


def torchsmith_pass(batches, epoch: list[int]) -> int:
    count = 0
    for images, _, _ in batches.epoch(epoch[0]):
        count += images.shape[0]
    epoch[0] += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA / "cifar10-jpeg"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="where torchsmith keeps the images and builds batches")
    args = parser.parse_args()
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from torchsmith.data.loaders import MemoryBatches
    from torchsmith.data.order import BatchOrder
    from torchsmith.data.vision import load_imagefolder

    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        ]
    )
    folder = datasets.ImageFolder(f"{args.data_dir}/train", transform=transform)
    loader = DataLoader(folder, batch_size=256, shuffle=True, num_workers=args.workers, persistent_workers=True)
    bundle = load_imagefolder(args.data_dir, val_fraction=0.0, augment="crop-flip")  # builds the cache once
    source = bundle.train.to(torch.device(args.device))
    batches = MemoryBatches(source, BatchOrder(len(source), 256, seed=0), train=True, seed=0)
    epoch = [0]
    torchvision_pass(loader)  # first pass: workers start, page cache warms
    torchsmith_pass(batches, epoch)
    images = len(folder)
    times = interleaved(
        {"torchvision": lambda: torchvision_pass(loader), "torchsmith": lambda: torchsmith_pass(batches, epoch)},
        args.repeats,
    )
    rates = {name: images / median(values) for name, values in times.items()}
    print(
        f"torch {torch.__version__}, torchsmith on {device_name(args.device)}, {images} training images, "
        f"median of {args.repeats} interleaved passes"
    )
    for name, rate in rates.items():
        print(f"{name:12s} {rate:12,.0f} images/s")
    print(f"loader ratio (torchsmith / torchvision images/s) = {rates['torchsmith'] / rates['torchvision']:.1f}")


if __name__ == "__main__":
    main()
