"""The report's pictures, written by hand: line charts as SVG, example inputs as PNG.

Why not matplotlib: importing it and drawing two figures took about 0.9 s of every
`torchsmith train` command (a sixth of a short run, measured on a 2-core CPU), while the
report needs only line charts and small images. SVG line charts are a few hundred lines
of text and scale crisply; PNG needs only zlib. `lr-find --plot` still uses matplotlib.

Example:
    >>> svg = line_chart_svg({"loss": [("train_loss", [1, 2, 3], [0.9, 0.5, 0.4])]}, "epoch")
    >>> svg.startswith("<svg")
    True
"""

from __future__ import annotations

import struct
import zlib

import torch

from torchsmith.io.charts import PALETTE, Series, line_chart_svg, nice_ticks

__all__ = ["PALETTE", "Series", "encode_png", "example_png", "line_chart_svg", "nice_ticks"]

# ---- PNG -----------------------------------------------------------------------------------

# Anchors of a dark-to-bright colour map for spectrograms (close to matplotlib's "magma").
_MAGMA = ((0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66), (245, 125, 21), (252, 253, 191))


def example_png(example: torch.Tensor, modality: str) -> bytes:
    """PNG of one input: (C, H, W) image, or (1, M, T) spectrogram with low bins at the bottom."""
    x = example.detach().cpu().float()
    x = x.permute(1, 2, 0) if x.dim() == 3 and x.shape[0] == 3 else x.reshape(-1, x.shape[-1])  # (H, W[, 3])
    # uint8 pixels keep their brightness; normalised floats are stretched to [0, 1]
    x = x / 255 if example.dtype == torch.uint8 else (x - x.min()) / (x.max() - x.min()).clamp(min=1e-12)
    x = x.clamp(0, 1)
    if modality == "audio":
        x = _colour_map(x.flip(0))  # (M, T, 3), low frequencies down
    pixels = (x * 255).round().to(torch.uint8)
    return encode_png(pixels)


def _colour_map(values: torch.Tensor) -> torch.Tensor:
    """(H, W) in [0, 1] -> (H, W, 3) in [0, 1], linear between the anchors."""
    anchors = torch.tensor(_MAGMA, dtype=torch.float32) / 255  # (K, 3)
    position = values * (len(_MAGMA) - 1)
    low = position.floor().long().clamp(max=len(_MAGMA) - 2)
    weight = (position - low).unsqueeze(-1)
    return anchors[low] * (1 - weight) + anchors[low + 1] * weight


def encode_png(pixels: torch.Tensor) -> bytes:
    """PNG bytes of (H, W) grey or (H, W, 3) RGB uint8 pixels (no filtering, zlib level 6)."""
    if pixels.dtype != torch.uint8 or pixels.dim() not in (2, 3) or (pixels.dim() == 3 and pixels.shape[2] != 3):
        raise ValueError(f"encode_png needs (H, W) or (H, W, 3) uint8 pixels, got {tuple(pixels.shape)}")
    height, width = pixels.shape[:2]
    colour_type = 2 if pixels.dim() == 3 else 0
    rows = pixels.reshape(height, -1)
    raw = torch.cat([torch.zeros(height, 1, dtype=torch.uint8), rows], dim=1)  # filter byte 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw.contiguous().numpy().tobytes(), 6))
        + _chunk(b"IEND", b"")
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
