"""A small 2-D conv net over log-mel spectrograms (spoken digits, keyword spotting)."""

from __future__ import annotations

import torch
from torch import nn

from torchsmith.errors import UsageError


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),  # BN supplies the bias
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class AudioCNN(nn.Module):
    """Conv-BN-ReLU stages, each halving time and frequency, then global average pooling.

    Channels grow `width, 2*width, 4*width, ...` over `stages` stages. Pooling uses
    `ceil_mode`, so any input of at least 1 x 1 (any clip length, any number of mel
    bands) gives one vector per sample, and the classifier never depends on the
    spectrogram size.

    Example:
        >>> model = AudioCNN(num_classes=10)
        >>> model(torch.randn(8, 1, 40, 51)).shape
        torch.Size([8, 10])
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        width: int = 24,
        dropout: float = 0.1,
        stages: int = 3,
    ) -> None:
        super().__init__()
        if num_classes < 1 or width < 1 or stages < 1 or not 0 <= dropout < 1:
            raise UsageError(
                f"AudioCNN needs num_classes, width and stages >= 1 and 0 <= dropout < 1, got "
                f"num_classes={num_classes}, width={width}, stages={stages}, dropout={dropout}."
            )
        layers: list[nn.Module] = [_conv_block(in_channels, width)]
        channels = width
        for stage in range(stages):
            out_channels = width * 2 ** min(stage + 1, 3)
            layers += [
                nn.MaxPool2d(2, ceil_mode=True),
                _conv_block(channels, out_channels),
            ]
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, C, n_mels / 2**stages, frames / 2**stages)
        x = torch.flatten(self.pool(x), 1)  # (B, C)
        return self.classifier(self.dropout(x))
