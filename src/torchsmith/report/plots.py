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

import math
import struct
import zlib
from html import escape

import torch

Series = tuple[str, list[float], list[float]]  # label, x values, y values

# matplotlib's "tab10" colours, so the curves look as they did.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")
_WIDTH, _HEIGHT = 440, 320  # one panel, in pixels
_LEFT, _RIGHT, _TOP, _BOTTOM = 62, 14, 30, 44  # margins around the plotting area
_MARKERS_BELOW = 50  # points per series under which each point gets a dot


def line_chart_svg(panels: dict[str, list[Series]], x_label: str, lines: bool = True) -> str:
    """One row of line charts (title -> series), as a standalone SVG document; `lines=False`
    draws the points alone (a scatter plot)."""
    body = [_panel(i * _WIDTH, title, series, x_label, lines) for i, (title, series) in enumerate(panels.items())]
    width = _WIDTH * max(1, len(panels))
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{_HEIGHT}" '
        f'viewBox="0 0 {width} {_HEIGHT}" font-family="sans-serif" font-size="11">'
        f'<rect width="{width}" height="{_HEIGHT}" fill="white"/>{"".join(body)}</svg>'
    )


def _panel(left: int, title: str, series: list[Series], x_label: str, lines: bool = True) -> str:
    xs = [x for _, sx, sy in series for x, y in zip(sx, sy, strict=True) if math.isfinite(y)]
    ys = [y for _, _, sy in series for y in sy if math.isfinite(y)]
    x0, x1 = _span(xs)
    y0, y1 = _span(ys)
    x_ticks, y_ticks = nice_ticks(x0, x1), nice_ticks(y0, y1)
    x0, x1 = min(x0, x_ticks[0]), max(x1, x_ticks[-1])
    y0, y1 = min(y0, y_ticks[0]), max(y1, y_ticks[-1])
    area = (left + _LEFT, _TOP, _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM)  # x, y, width, height

    def px(x: float) -> float:
        return area[0] + (x - x0) / (x1 - x0) * area[2]

    def py(y: float) -> float:
        return area[1] + area[3] - (y - y0) / (y1 - y0) * area[3]

    parts = [f'<text x="{left + _WIDTH / 2:.1f}" y="18" text-anchor="middle" font-size="13">{escape(title)}</text>']
    for x in x_ticks:
        parts.append(_line(px(x), area[1], px(x), area[1] + area[3], "#e5e5e5"))
        parts.append(_label(px(x), area[1] + area[3] + 14, _tick(x), "middle"))
    for y in y_ticks:
        parts.append(_line(area[0], py(y), area[0] + area[2], py(y), "#e5e5e5"))
        parts.append(_label(area[0] - 5, py(y) + 4, _tick(y), "end"))
    parts.append(f'<rect x="{area[0]}" y="{area[1]}" width="{area[2]}" height="{area[3]}" fill="none" stroke="#444"/>')
    parts.append(_label(area[0] + area[2] / 2, _HEIGHT - 8, x_label, "middle"))
    for index, (label, sx, sy) in enumerate(series):
        colour = PALETTE[index % len(PALETTE)]
        points = [(px(x), py(y)) for x, y in zip(sx, sy, strict=True)]
        if lines:
            parts.extend(_polylines(points, sy, colour))
        if len(points) < _MARKERS_BELOW or not lines:
            parts.extend(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"/>'
                for (x, y), value in zip(points, sy, strict=True)
                if math.isfinite(value)
            )
        ly = area[1] + 14 + 15 * index  # legend, top right inside the plot
        parts.append(_line(area[0] + area[2] - 120, ly - 4, area[0] + area[2] - 102, ly - 4, colour, 2))
        parts.append(_label(area[0] + area[2] - 97, ly, label, "start"))
    return "".join(parts)


def _polylines(points: list[tuple[float, float]], values: list[float], colour: str) -> list[str]:
    """One polyline per run of finite values: a NaN or Inf breaks the line, as in matplotlib."""
    runs: list[list[tuple[float, float]]] = [[]]
    for point, value in zip(points, values, strict=True):
        if math.isfinite(value):
            runs[-1].append(point)
        elif runs[-1]:
            runs.append([])
    return [
        f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="'
        + " ".join(f"{x:.1f},{y:.1f}" for x, y in run)
        + '"/>'
        for run in runs
        if len(run) > 1
    ]


def _span(values: list[float]) -> tuple[float, float]:
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    if high - low < 1e-12 * max(1.0, abs(high)):
        pad = abs(high) * 0.05 or 1.0
        return low - pad, high + pad
    return low, high


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values (steps of 1, 2 or 5 times a power of ten) covering [low, high].

    Example:
        >>> nice_ticks(0.13, 0.92)
        [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    """
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step)
    last = math.ceil(high / step)
    return [float(f"{i * step:.12g}") for i in range(first, last + 1)]  # 0.6, not 0.6000000000000001


def _tick(value: float) -> str:
    return f"{value:.4g}" if abs(value) > 1e-12 else "0"


def _line(x1: float, y1: float, x2: float, y2: float, colour: str, width: float = 1) -> str:
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}" stroke-width="{width}"/>'


def _label(x: float, y: float, text: str, anchor: str) -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}">{escape(text)}</text>'


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
