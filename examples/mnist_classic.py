"""The classic walk-through: define a layer class and a model class, pick a loss and an
optimizer, train and evaluate on MNIST with torchsmith's Trainer.

    python examples/mnist_classic.py                       # the MNIST sample shipped in the package
    python examples/mnist_classic.py --data-dir ../data/mnist --epochs 5   # full MNIST (IDX files)
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from torchsmith import Trainer
from torchsmith.config import DataConfig
from torchsmith.data.registry import load_data


class DenseLayer(nn.Module):
    """A layer class of our own: Linear followed by ReLU."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.linear(x))


class SimpleNet(nn.Module):
    """784 -> 128 -> 10, built from the layer class above."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = DenseLayer(28 * 28, 128)
        self.out = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)  # (B, 784): keep the batch dimension
        return self.out(self.hidden(x))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default=None, help="MNIST root (holds MNIST/raw); default: embedded sample")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=None)
    args = parser.parse_args()

    name = "mnist" if args.data_dir else "mnist-sample"
    data = load_data(DataConfig(name=name, dir=args.data_dir), seed=0)
    torch.manual_seed(0)
    model = SimpleNet()
    trainer = Trainer(
        model,
        loss=nn.CrossEntropyLoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
        max_epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=64,
    )
    trainer.fit(data.train, data.val)
    result = trainer.evaluate(data.test)
    print(f"test accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}")


if __name__ == "__main__":
    main()
