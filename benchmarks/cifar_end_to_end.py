"""The whole `torchsmith train --model simplenet --data imagefolder:CIFAR --epochs 3` command
against the same training written by hand with torchvision's ImageFolder + DataLoader
(2 workers, ToTensor + Normalize, batch 64, AdamW lr 1e-3, the same SimpleNet), interleaved.
Both sides are whole commands, each a fresh Python process that imports torch (the
hand-written one is this script with `--hand-only`). torchsmith's image cache is built
once before timing (a first run does that).

    python benchmarks/cifar_end_to_end.py --data-dir ../shared/data/cifar10-jpeg --repeats 5
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

import torch
from common import DEFAULT_DATA, interleaved, median
from torch import nn


def torchsmith_command(data_dir: str, epochs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "torchsmith",
                "train",
                "--model",
                "simplenet",
                "--data",
                f"imagefolder:{data_dir}",
                "--epochs",
                str(epochs),
                "--run-dir",
                f"{tmp}/run",
                "--quiet",
            ],
            check=True,
            capture_output=True,
        )
    return 0.0


def hand_written_command(data_dir: str, epochs: int) -> float:
    command = [sys.executable, __file__, "--hand-only", "--data-dir", data_dir, "--epochs", str(epochs)]
    subprocess.run(command, check=True, capture_output=True)
    return 0.0


def hand_written(data_dir: str, epochs: int) -> float:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from torchsmith.models.vision import SimpleNet

    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))]
    )
    train = DataLoader(
        datasets.ImageFolder(f"{data_dir}/train", transform=transform), batch_size=64, shuffle=True, num_workers=2
    )
    test = DataLoader(datasets.ImageFolder(f"{data_dir}/test", transform=transform), batch_size=1000, num_workers=2)
    torch.manual_seed(0)
    model = SimpleNet(3 * 32 * 32, 10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        for inputs, targets in train:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(inputs), targets).backward()
            optimizer.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for inputs, targets in test:
            correct += (model(inputs).argmax(1) == targets).sum().item()
    return correct / len(test.dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA / "cifar10-jpeg"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--hand-only", action="store_true", help="run the hand-written training once and exit")
    args = parser.parse_args()
    if args.hand_only:
        print(f"test accuracy {hand_written(args.data_dir, args.epochs):.4f}")
        return
    start = time.perf_counter()
    torchsmith_command(args.data_dir, 1)  # builds the decoded-image cache, as a first run would
    print(f"first run (builds the cache): {time.perf_counter() - start:.1f} s", flush=True)
    times = interleaved(
        {
            "hand-written": lambda: hand_written_command(args.data_dir, args.epochs),
            "torchsmith": lambda: torchsmith_command(args.data_dir, args.epochs),
        },
        args.repeats,
    )
    base, ours = median(times["hand-written"]), median(times["torchsmith"])
    print(f"torch {torch.__version__}, {args.epochs} epochs, median of {args.repeats} interleaved repeats")
    print(f"hand-written ImageFolder + DataLoader (whole command): {base:.1f} s; torchsmith train: {ours:.1f} s")
    print(f"end-to-end ratio (hand-written / torchsmith) = {base / ours:.1f}")


if __name__ == "__main__":
    main()
