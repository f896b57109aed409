"""The tutorial's original ConvNet, unchanged, on a folder of photos of any size.

Its `x.view(-1, 128 * 8 * 8)` fits 64x64 inputs (64 -> 32 -> 16 -> 8 after three
poolings); `data.options.image_size=64` makes every photo that size, whatever it was.

    python examples/photos_convnet.py --data-dir photos/ --epochs 2
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
        self.fc1 = nn.Linear(128 * 8 * 8, 256)
        self.fc2 = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = self.pool(F.relu(self.conv3(x)))
        x = x.view(-1, 128 * 8 * 8)  # as the tutorial wrote it: right for 64x64 inputs
        return self.fc2(F.relu(self.fc1(x)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True, help="folder with one sub-folder of photos per class")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=None)
    args = parser.parse_args()

    config = DataConfig(name=f"imagefolder:{args.data_dir}", options={"image_size": 64})
    data = load_data(config, seed=0)
    model = ConvNet(num_classes=data.info.num_classes)
    trainer = Trainer(model, max_epochs=args.epochs, max_steps=args.max_steps, batch_size=64)
    trainer.fit(data.train, data.val)
    print(trainer.evaluate(data.test))


if __name__ == "__main__":
    main()
