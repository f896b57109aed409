"""Line charts as standalone SVG text, written by hand (see `torchsmith.report.plots` for why not
matplotlib). Low in the layers so that the report, the Trainer's notebook view and the live curves
all draw the same charts.

Example:
    >>> svg = line_chart_svg({"loss": [("train_loss", [1, 2, 3], [0.9, 0.5, 0.4])]}, "epoch")
    >>> svg.startswith("<svg")
    True
"""

from __future__ import annotations

import math
from html import escape

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
            parts.extend(  # the <title> shows the value on hover where the SVG is inline in a page
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}">'
                f"<title>{escape(label)} {_tick(at)}: {value:.4g}</title></circle>"
                for (x, y), at, value in zip(points, sx, sy, strict=True)
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


def smoothed(series: Series, weight: float = 0.6) -> Series:
    """An exponential moving average of a series (TensorBoard's smoothing, debiased so the first
    points are not pulled towards zero), labelled "<label> (smoothed)"; NaN and Inf are skipped."""
    label, xs, ys = series
    average, total, out = 0.0, 0.0, []
    for y in ys:
        if math.isfinite(y):
            average, total = average * weight + (1 - weight) * y, total * weight + (1 - weight)
        out.append(average / total if total else math.nan)
    return f"{label} (smoothed)", list(xs), out
