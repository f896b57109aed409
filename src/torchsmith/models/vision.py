"""The classic image models, sized from the data."""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from torchsmith.models.blocks import ConvLayer


class SimpleNet(nn.Module):
    """Flatten, Linear(in_features -> hidden), ReLU, Linear(hidden -> num_classes).

    With MNIST (1x28x28) that is exactly 784 -> 128 -> 10.

    Example:
        >>> SimpleNet(in_features=784, num_classes=10)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_features: int = 784, num_classes: int = 10, hidden_dim: int = 128) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_dim)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)  # (B, C*H*W): keeps the batch dimension
        return self.fc2(self.relu(self.fc1(x)))


class ConvNet(nn.Module):
    """Three 3x3 conv layers (32, 64, 128 channels) with ReLU and 2x2 max-pooling, then
    Linear(-> 128), ReLU, Linear(128 -> num_classes).

    The flatten size is computed from the input shape, so the same class serves 1x28x28
    MNIST digits and 3x32x32 CIFAR images (the tutorial's hard-coded `128*8*8` only fits
    64x64 inputs). `batch_norm=True` swaps each conv for a `ConvLayer`.

    Example:
        >>> ConvNet(input_shape=(3, 32, 32), num_classes=10)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        channels: tuple[int, int, int] = (32, 64, 128),
        hidden_dim: int = 128,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        in_channels, height, width = input_shape
        layers: dict[str, nn.Module] = {}
        for index, out_channels in enumerate(channels, start=1):
            if batch_norm:
                layers[f"conv{index}"] = ConvLayer(in_channels, out_channels, 3, 1, 1)
            else:
                layers[f"conv{index}"] = nn.Conv2d(in_channels, out_channels, 3, padding=1)
                layers[f"relu{index}"] = nn.ReLU(inplace=True)
            layers[f"pool{index}"] = nn.MaxPool2d(2)
            in_channels = out_channels
            height, width = height // 2, width // 2  # floor, as MaxPool2d(2) does
        self.features = nn.Sequential(OrderedDict(layers))  # named conv1, relu1, pool1, ...
        self.fc1 = nn.Linear(in_channels * height * width, hidden_dim)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 128, H/8, W/8)
        x = torch.flatten(x, 1)
        return self.fc2(self.relu(self.fc1(x)))


def flat_features(input_shape: tuple[int, ...]) -> int:
    return int(math.prod(input_shape))


class ConvBNNet(nn.Module):
    """A small, fast conv net: `ConvLayer` blocks (conv-BN-ReLU) each followed by 2x2
    max-pooling, then one linear layer.

    Example:
        >>> ConvBNNet(input_shape=(1, 28, 28), num_classes=10)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        widths: tuple[int, ...] = (16, 32),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        in_channels, height, width = input_shape
        blocks: list[nn.Module] = []
        for out_channels in widths:
            blocks += [ConvLayer(in_channels, out_channels, 3, 1, 1), nn.MaxPool2d(2)]
            in_channels, height, width = out_channels, height // 2, width // 2
        self.features = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(in_channels * height * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), 1)  # (B, C * H * W)
        return self.head(self.dropout(x))
