"""A finished run shown inside a notebook: `torchsmith.load(RUN)` renders as its headline and its
curves (inline SVG, values on hover); the full page stays `report.html`.

Example:
    >>> html = run_html("runs/convnet-mnist")  # doctest: +SKIP
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from torchsmith.callbacks.live_curves import curves_svg
from torchsmith.io.files import read_json
from torchsmith.report.headline import HEADLINE_CSS, headline_html
from torchsmith.report.html import read_metrics


def run_html(run_dir: str | Path, checkpoint: str = "") -> str:
    """The run's headline (from summary.json and doctor.json) and curves (from metrics.csv)."""
    run = Path(run_dir)
    summary = read_json(run / "summary.json")
    events = read_json(run / "doctor.json").get("events") or []
    rows = read_metrics(run / "metrics.csv")
    svg = curves_svg(rows, [int(e.get("step", 0)) for e in events])
    weights = f", weights: {escape(checkpoint)}" if checkpoint else ""
    more = "report.html" if (run / "report.html").is_file() else "no report.html yet (`torchsmith report RUN`)"
    return (
        f'<div class="torchsmith-run"><style>{HEADLINE_CSS}</style>'
        f"<p><b>{escape(run.name)}</b>{weights}</p>{headline_html(summary, len(events))}{svg}"
        f"<p>full report: {escape(more)}</p></div>"
    )
