"""Models for tables: a multilayer perceptron over the encoded feature columns."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Linear-ReLU-Dropout blocks of `hidden` widths, then a linear head with `num_classes` outputs
    (class logits, label logits, or regression values).

    Example:
        >>> MLP(in_features=10, num_classes=3)(torch.randn(4, 10)).shape
        torch.Size([4, 3])
    """

    def __init__(
        self, in_features: int, num_classes: int, hidden: Sequence[int] = (128, 64), dropout: float = 0.1
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.flatten(x, 1))  # (B, F) -> (B, num_classes)
