"""Public building blocks for user models."""

from __future__ import annotations

import torch
from torch import nn


class ConvLayer(nn.Module):
    """Conv2d -> BatchNorm2d -> ReLU, the classic convolutional building block.

    Example:
        >>> layer = ConvLayer(3, 32, kernel_size=3, stride=1, padding=1)
        >>> layer(torch.zeros(8, 3, 32, 32)).shape
        torch.Size([8, 32, 32, 32])
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1
    ) -> None:
        super().__init__()
        # No conv bias: the BatchNorm right after it has its own shift.
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))
