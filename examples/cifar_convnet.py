"""The classic ConvNet on CIFAR-10, written the way the tutorial writes it, with one fix:
`torch.flatten(x, 1)` instead of `x.view(-1, 128 * 8 * 8)`, and the flatten size that
32x32 inputs really give (128 * 4 * 4).

    python examples/cifar_convnet.py --data-dir ../data/cifar10-jpeg --epochs 2
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from torchsmith import Trainer
from torchsmith.config import DataConfig
from torchsmith.data.registry import load_data


class ConvNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(128 * 4 * 4, 128)  # 32 -> 16 -> 8 -> 4 after three poolings
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = self.pool(F.relu(self.conv3(x)))
        x = torch.flatten(x, 1)  # (B, 2048)
        return self.fc2(F.relu(self.fc1(x)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True, help="folder with train/<class>/ and test/<class>/ images")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=None)
    args = parser.parse_args()

    data = load_data(DataConfig(name=f"imagefolder:{args.data_dir}", augment="crop-flip"), seed=0)
    torch.manual_seed(0)
    model = ConvNet(num_classes=data.info.num_classes)
    trainer = Trainer(
        model,
        loss="cross_entropy",
        optimizer=lambda params: torch.optim.AdamW(params, lr=2e-3),
        max_epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=128,
    )
    trainer.fit(data.train, data.val)
    result = trainer.evaluate(data.test)
    print(f"test accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}")


if __name__ == "__main__":
    main()
