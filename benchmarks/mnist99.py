"""Wall time until MNIST test accuracy first reaches 99.0 %: torchsmith's `mnist-fast` recipe
(the whole `torchsmith train` command) against the canonical PyTorch MNIST example's recipe
(its two-conv network with dropout, Adadelta lr 1.0, batch 64, StepLR gamma 0.7),
re-implemented here and evaluated on the test set after every epoch, as the example does.

    python benchmarks/mnist99.py --data-dir ../shared/data/mnist --repeats 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import DEFAULT_DATA, device_name, median
from torch import nn


class CanonicalNet(nn.Module):
    """The network of pytorch/examples mnist/main.py."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(self.dropout1(x), 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


def canonical(data_dir: str, target: float, max_epochs: int, device: str) -> tuple[float, int, float]:
    """Seconds until test accuracy >= target (the example's DataLoader pipeline), epochs, accuracy."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    start = time.perf_counter()
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    # The example's loaders; on CUDA it adds one worker and pinned memory.
    extra = {"num_workers": 1, "pin_memory": True} if device.startswith("cuda") else {}
    train = DataLoader(datasets.MNIST(data_dir, train=True, transform=transform), batch_size=64, shuffle=True, **extra)
    test = DataLoader(datasets.MNIST(data_dir, train=False, transform=transform), batch_size=1000, **extra)
    torch.manual_seed(1)
    model = CanonicalNet().to(device)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    accuracy = 0.0
    for epoch in range(1, max_epochs + 1):
        model.train()
        for inputs, targets in train:
            inputs, targets = inputs.to(device), targets.to(device)
            optimizer.zero_grad()
            F.nll_loss(model(inputs), targets).backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for inputs, targets in test:
                inputs, targets = inputs.to(device), targets.to(device)
                correct += (model(inputs).argmax(1) == targets).sum().item()
        accuracy = correct / len(test.dataset)
        scheduler.step()
        if accuracy >= target:
            return time.perf_counter() - start, epoch, accuracy
    return float("inf"), max_epochs, accuracy


def torchsmith_recipe(data_dir: str, device: str) -> tuple[float, float, float]:
    """Whole-command seconds, training seconds and test accuracy of `torchsmith train --recipe mnist-fast`."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "torchsmith",
                "train",
                "--recipe",
                "mnist-fast",
                "--data-dir",
                data_dir,
                "--run-dir",
                f"{tmp}/run",
                "--device",
                device,
                "--quiet",
            ],
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"torchsmith train failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
        summary = json.loads(Path(f"{tmp}/run/summary.json").read_text())
    return seconds, summary["train_time_s"], summary["test"]["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA / "mnist"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-epochs", type=int, default=8)
    parser.add_argument("--device", default="cpu", help="cpu or cuda, for both recipes")
    args = parser.parse_args()
    ours, ours_train, baseline = [], [], []
    for round_index in range(args.repeats):
        seconds, train_s, accuracy = torchsmith_recipe(args.data_dir, args.device)
        ours.append(seconds)
        ours_train.append(train_s)
        base_s, epochs, base_acc = canonical(args.data_dir, 0.99, args.max_epochs, args.device)
        baseline.append(base_s)
        print(
            f"round {round_index + 1}/{args.repeats}: torchsmith {seconds:.1f} s (training {train_s:.1f} s, "
            f"test accuracy {accuracy:.4f})  canonical {base_s:.1f} s ({epochs} epochs, {base_acc:.4f})",
            flush=True,
        )
    print(f"torch {torch.__version__}, {device_name(args.device)}, median of {args.repeats} rounds")
    print(f"torchsmith mnist-fast: whole command {median(ours):.1f} s, training {median(ours_train):.1f} s")
    print(f"canonical example: {median(baseline):.1f} s to 99.0 %")
    print(f"mnist99 ratio (canonical / torchsmith, time to 99.0 %) = {median(baseline) / median(ours):.1f}")


if __name__ == "__main__":
    main()
