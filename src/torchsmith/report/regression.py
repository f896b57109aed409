"""The report's regression view: predicted against true (a scatter) and the largest errors.

A regression run's test predictions are saved as `regression.safetensors` (`true` and `predicted`,
float32 (N, K), in the target's own units) with `regression.json` (the output names).
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from torchsmith.data.bundle import DataInfo
from torchsmith.io.files import read_json
from torchsmith.report.plots import nice_ticks

LARGEST_ERRORS = 10
_SIZE, _MARGIN = 360, 48  # the scatter's square, and the room for its axes


def save_regression(run_dir: str | Path, true: torch.Tensor, predicted: torch.Tensor, names: list[str]) -> Path:
    """Write the test split's true and predicted values (N, K) for the report."""
    run = Path(run_dir)
    tensors = {
        k: v.detach().cpu().float().reshape(v.shape[0], -1).contiguous()
        for k, v in (("true", true), ("predicted", predicted))
    }
    save_file(tensors, run / "regression.safetensors")
    (run / "regression.json").write_text(json.dumps({"names": [str(n) for n in names]}), encoding="utf-8")
    return run / "regression.safetensors"


def regression_sections(run: Path) -> list[str]:
    """The predicted-vs-true section (empty list when the run is no regression run)."""
    path = run / "regression.safetensors"
    if not path.is_file():
        return []
    tensors, names = load_file(path), read_json(run / "regression.json").get("names") or []
    true, predicted = tensors["true"], tensors["predicted"]
    name = str(names[0]) if names else "target"
    scatter = scatter_svg(true[:, 0], predicted[:, 0], name)
    note = f"<p>{len(true)} test samples; the scatter shows output '{escape(name)}'.</p>" if true.shape[1] > 1 else ""
    body = f'{note}<img class="plot" alt="predicted against true" src="data:image/svg+xml;base64,{_b64(scatter)}"/>'
    body += "<h3>Largest errors</h3>" + _largest_errors(true, predicted, names)
    return [f'<section id="predictions"><h2>Test predictions: predicted against true</h2>{body}</section>\n']


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _largest_errors(true: torch.Tensor, predicted: torch.Tensor, names: list[str]) -> str:
    error = (predicted - true).abs().sum(dim=1)  # (N,) summed over outputs
    order = error.argsort(descending=True)[:LARGEST_ERRORS].tolist()
    label = ", ".join(escape(str(n)) for n in names) or "target"
    rows = "".join(
        f"<tr><td>#{i}</td><td>{_values(true[i])}</td><td>{_values(predicted[i])}</td><td>{float(error[i]):.4g}</td></tr>"
        for i in order
    )
    head = f"<tr><th>test sample</th><th>true ({label})</th><th>predicted</th><th>|error|</th></tr>"
    return f'<table id="largest-errors">{head}{rows}</table>'


def _values(row: torch.Tensor) -> str:
    return ", ".join(f"{v:.4g}" for v in row.tolist())


def scatter_svg(true: torch.Tensor, predicted: torch.Tensor, name: str) -> str:
    """Predicted (y) against true (x) with the diagonal of perfect predictions, as SVG."""
    both = torch.cat([true, predicted])
    ticks = nice_ticks(float(both.min()), float(both.max()))
    low, high = ticks[0], ticks[-1] if ticks[-1] > ticks[0] else ticks[0] + 1
    span = _SIZE - 2 * _MARGIN

    def pos(value: float, flip: bool) -> float:
        offset = (value - low) / (high - low) * span
        return _SIZE - _MARGIN - offset if flip else _MARGIN + offset

    dots = "".join(
        f'<circle cx="{pos(x, False):.1f}" cy="{pos(y, True):.1f}" r="2" fill="#1f77b4" fill-opacity="0.6"/>'
        for x, y in zip(true.tolist()[:2000], predicted.tolist()[:2000], strict=True)
    )
    axes = "".join(
        f'<text x="{pos(t, False):.1f}" y="{_SIZE - _MARGIN + 14}" text-anchor="middle">{t:.4g}</text>'
        f'<text x="{_MARGIN - 4}" y="{pos(t, True) + 4:.1f}" text-anchor="end">{t:.4g}</text>'
        for t in ticks
    )
    frame = f'<rect x="{_MARGIN}" y="{_MARGIN}" width="{span}" height="{span}" fill="none" stroke="#888"/>'
    low_corner, high_corner = _SIZE - _MARGIN, _MARGIN
    diagonal = (
        f'<line x1="{high_corner}" y1="{low_corner}" x2="{low_corner}" y2="{high_corner}" '
        'stroke="#d62728" stroke-dasharray="4 3"/>'
    )
    labels = (
        f'<text x="{_SIZE / 2}" y="{_SIZE - 8}" text-anchor="middle">true {escape(name)}</text>'
        f'<text x="12" y="{_SIZE / 2}" transform="rotate(-90 12 {_SIZE / 2})" text-anchor="middle">predicted</text>'
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_SIZE}" height="{_SIZE}" font-family="sans-serif" '
        f'font-size="11"><rect width="{_SIZE}" height="{_SIZE}" fill="white"/>'
        f"{frame}{diagonal}{dots}{axes}{labels}</svg>"
    )


def save_test_regression(run_dir: Path, collected: list[tuple[torch.Tensor, torch.Tensor]], info: DataInfo) -> None:
    """The test split's predicted and true values, in the target's own units, for the report."""
    true = torch.cat([t for _, t in collected]).double()
    predicted = torch.cat([o for o, _ in collected]).double().reshape(true.shape[0], -1)
    true = true.reshape(true.shape[0], -1)
    scale = info.preprocessing.get("task_options") or {}
    if "mean" in scale:
        mean, std = torch.tensor(scale["mean"], dtype=torch.float64), torch.tensor(scale["std"], dtype=torch.float64)
        true, predicted = true * std + mean, predicted * std + mean
    save_regression(run_dir, true, predicted, info.class_names)
