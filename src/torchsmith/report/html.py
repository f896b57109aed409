"""Self-contained HTML report of one run, and a page comparing several runs.

Files read from a run directory R (a run needs `summary.json` and `config.yaml`;
everything else is optional and its section shows a short note when missing):

- `summary.json`: `{"status", "model", "data", "epochs", "steps", "train": {...},
  "val": {...}, "test": {"loss", "accuracy"}, "best": {...}, "train_time_s",
  "samples_per_s", "device", "versions": {...}}`.
- `config.yaml`: the resolved config (nested mappings), shown as written.
- `metrics.csv`: header `epoch,step,<metric>,...`, one row per logged point; a cell
  is empty when that metric was not logged there. `<split>_<name>` columns
  (`train_loss`, `val_accuracy`, ...) are plotted per name; `lr` and `grad_norm`
  get a plot of their own.
- `model_summary.txt`: text shown as written. `doctor.json`: `{"events": [{...}]}`.
- `predictions.safetensors` (test split): `targets` int64 (N,), `probabilities`
  float32 (N, C); optionally `examples` (K, ...) holding the inputs of the K most
  confidently wrong samples (images (K, C, H, W) uint8 or float, spectrograms
  (K, 1, M, T)) and `example_indices` int64 (K,) into the N samples.
- `predictions.json`: `{"class_names": [...], "modality": "image"|"text"|"audio",
  "example_texts": [...], "example_names": [...]}` (texts and file names of the K
  examples, for text and audio).

Written: `R/report.html` (plots as SVG and examples as PNG, both base64 data URIs;
inline CSS, no scripts, no network links) and every plot as `R/plots/<name>.svg`. Both
prediction files above are written by `save_predictions`.

Example:
    >>> write_report("runs/convnet-mnist")
    PosixPath('runs/convnet-mnist/report.html')
"""

from __future__ import annotations

import base64
import csv
import json
from html import escape
from pathlib import Path
from typing import Any

import torch
import yaml

from torchsmith.callbacks.live_curves import event_series
from torchsmith.errors import UsageError
from torchsmith.io.charts import smoothed
from torchsmith.io.files import read_json
from torchsmith.report.headline import HEADLINE_CSS, headline_html, text_mistakes_table
from torchsmith.report.plots import Series, example_png, line_chart_svg
from torchsmith.report.predictions import (
    Predictions,
    class_table_note,
    confusion_matrix,
    most_confident_mistakes,
    per_class_metrics,
    read_predictions,
    save_predictions,
)
from torchsmith.report.regression import regression_sections

__all__ = [
    "confusion_matrix",
    "most_confident_mistakes",
    "per_class_metrics",
    "save_predictions",
    "write_comparison",
    "write_report",
]

_MAX_MATRIX_CLASSES = 100  # above this the HTML confusion table is unreadable
_SMOOTH_FROM = 20  # points in a training curve from which a smoothed line is drawn beside it
_CSS = (
    """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2rem auto;
color:#222;padding:0 1rem}table{border-collapse:collapse;margin:.5rem 0}
th,td{border:1px solid #ccc;padding:.2rem .5rem;text-align:right}
th:first-child,td:first-child{text-align:left}pre{background:#f5f5f5;padding:.8rem;
overflow:auto}.note{color:#777;font-style:italic}img.plot{max-width:100%}
.grid{display:flex;flex-wrap:wrap;gap:.8rem}figure.mistake{margin:0;width:150px;
font-size:.8rem}figure.mistake img{width:140px;image-rendering:pixelated}
details>summary{cursor:pointer}details>summary h2{display:inline}"""
    + HEADLINE_CSS
)


def write_report(run_dir: str | Path) -> Path:
    """Write `run_dir/report.html` (one self-contained file) and `run_dir/plots/*.svg`.

    Example:
        >>> write_report("runs/a")
        PosixPath('runs/a/report.html')
    """
    run = _require_run(Path(run_dir))
    summary = read_json(run / "summary.json")
    rows = read_metrics(run / "metrics.csv")
    groups: dict[str, list[str]] = {}  # "loss": ["train_loss", "val_loss"], ...
    for column in _union(k for row in rows for k in row):
        split, _, name = column.partition("_")
        if split in ("train", "val", "test") and name:
            groups.setdefault(name, []).append(column)
    order = sorted(groups, key=lambda g: (g != "loss", g != "accuracy", g))
    optim = {c: [c] for c in ("lr", "grad_norm") if any(c in row for row in rows)}
    events = read_json(run / "doctor.json").get("events") or []
    # The answer first (headline, curves, errors, per-class tables); the config and the
    # environment last, collapsed: they are for replaying the run, not for reading its result.
    sections = [
        _section("overview", "Result", headline_html(summary, len(events))),
        _plot_section(run, "curves", "Training curves", rows, {g: groups[g] for g in order}, events),
        _plot_section(run, "optimization", "Learning rate and gradient norm", rows, optim),
        *(regression_sections(run) or _prediction_sections(read_predictions(run))),
        _doctor(run / "doctor.json"),
        _section("model-summary", "Model summary", _pre(run / "model_summary.txt"), collapsed=True),
        _section("config", "Config", _pre(run / "config.yaml"), collapsed=True),
        _environment(summary),
    ]
    output = run / "report.html"
    output.write_text(_page(f"Report: {run.name}", sections), encoding="utf-8")
    return output


def write_comparison(run_dirs: list[Path], output: Path) -> Path:
    """Write an HTML page comparing final metrics, config differences and curves.

    Example:
        >>> write_comparison([Path("runs/a"), Path("runs/b")], Path("compare.html"))
        PosixPath('compare.html')
    """
    if len(run_dirs) < 2:
        raise UsageError(f"compare needs two or more run directories, got {len(run_dirs)}.")
    runs = [_require_run(Path(d)) for d in run_dirs]
    labels = [r.name for r in runs]
    labels = labels if len(set(labels)) == len(labels) else [str(r) for r in runs]
    curves = [read_metrics(r / "metrics.csv") for r in runs]
    panels = {
        metric: [(n, *_series(rows, metric, "epoch")[1:]) for n, rows in zip(labels, curves, strict=True)]
        for metric in ("val_loss", "val_accuracy")
        if any(metric in row for rows in curves for row in rows)
    }
    plot = _img(_svg(line_chart_svg(panels, "epoch")), "validation curves", mime="image/svg+xml") if panels else ""
    sections = [
        _section("metrics", "Final metrics", _final_metrics(runs, labels)),
        _section(
            "config",
            "Config differences",
            _config_differences(runs, labels),
            "The configs are identical.",
        ),
        _section("curves", "Validation curves", plot, "No val_loss or val_accuracy."),
    ]
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(_page("Comparison: " + ", ".join(labels), sections), encoding="utf-8")
    return output


def _final_metrics(runs: list[Path], labels: list[str]) -> str:
    results = [_flatten(read_json(r / "summary.json")) for r in runs]
    keys = _union(k for res in results for k in res if not k.startswith("versions."))
    rows = [[n] + [_fmt(res.get(k, "")) for k in keys] for n, res in zip(labels, results, strict=True)]
    return _table(["run", *keys], rows, "final-metrics")


def _config_differences(runs: list[Path], labels: list[str]) -> str:
    """Table of the flattened config keys whose values differ (missing counts)."""
    configs = [_flatten(yaml.safe_load(_text(r / "config.yaml")) or {}) for r in runs]
    keys = [
        k
        for k in _union(k for c in configs for k in c)
        if len({json.dumps(c.get(k, "-"), default=str) for c in configs}) > 1
    ]
    exact = [[json.dumps(c[k], default=str) if k in c else "-" for c in configs] for k in keys]
    rows = [[k] + [v.strip('"') for v in values] for k, values in zip(keys, exact, strict=True)]
    return _table(["key", *labels], rows, "config-diff") if rows else ""


# ---- reading ----------------------------------------------------------------------


def _require_run(run: Path) -> Path:
    missing = [n for n in ("summary.json", "config.yaml") if not (run / n).is_file()]
    if not run.is_dir() or missing:
        why = "it does not exist" if not run.is_dir() else "no " + " or ".join(missing)
        raise UsageError(
            f"{run} is not a run directory: {why}. Pass a folder written by `torchsmith train` (its --run-dir)."
        )
    return run


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def read_metrics(path: Path) -> list[dict[str, float]]:
    """Rows of metrics.csv as {column: value}, leaving out empty cells."""
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        try:
            return [{k: float(v) for k, v in r.items() if k and v} for r in reader]
        except ValueError as error:
            raise UsageError(f"{path} line {reader.line_num}: {error}.") from error


# ---- sections ---------------------------------------------------------------------


def _environment(summary: dict[str, Any]) -> str:
    flat = _flatten(summary)
    results = [[k, _fmt(v)] for k, v in flat.items() if k.split(".")[0] not in ("versions", "device")]
    environment = [["device", _fmt(summary.get("device", "unknown"))]]
    environment += [[k, _fmt(v)] for k, v in (summary.get("versions") or {}).items()]
    body = _table(["result", "value"], results) + _table(["environment", ""], environment)
    return _section("environment", "Results and environment", body, collapsed=True)


def _prediction_sections(p: Predictions | None) -> list[str]:
    if p is None:
        note = "No predictions.safetensors in this run (written after testing)."
        return [
            _section("predictions", "Test predictions", "", note),
            _section("mistakes", "Most confident mistakes", "", note),
        ]
    predicted = p.probabilities.argmax(dim=1)
    accuracy = float((predicted == p.targets).sum()) / max(len(p.targets), 1)
    html = f"<p>accuracy {accuracy:.4f} on {len(p.targets)} test samples</p>"
    too_many = class_table_note(len(p.class_names))
    if too_many:
        html += _note(too_many)
    else:
        cm = confusion_matrix(p.targets, predicted, len(p.class_names))
        html += f"<h3>Confusion matrix</h3>{_confusion_table(cm, p.class_names)}"
        html += f"<h3>Per-class metrics</h3>{_per_class_table(cm, p.class_names)}"
    return [_section("predictions", "Test predictions", html), _mistakes(p, predicted)]


def _confusion_table(cm: torch.Tensor, names: list[str]) -> str:
    """Rows are true classes, columns predicted ones; cells hold counts."""
    if len(names) > _MAX_MATRIX_CLASSES:
        return _note(f"{len(names)} classes are too many for a readable matrix.")
    share = cm / cm.sum(dim=1, keepdim=True).clamp(min=1)  # shading: row fraction
    rows = [
        f"<tr><th>{escape(name)}</th>"
        + "".join(
            f'<td style="background:rgba(40,110,190,{float(f):.2f})">{int(c)}</td>'
            for c, f in zip(counts, fractions, strict=True)
        )
        + "</tr>"
        for name, counts, fractions in zip(names, cm, share, strict=True)
    ]
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    return f'<table id="confusion-matrix"><tr><th>true \\ predicted</th>{head}</tr>{"".join(rows)}</table>'


def _per_class_table(cm: torch.Tensor, names: list[str]) -> str:
    stats = per_class_metrics(cm)
    rows = [
        [name] + [f"{float(stats[m][i]):.4f}" for m in ("precision", "recall", "f1")] + [str(int(stats["support"][i]))]
        for i, name in enumerate(names)
    ]
    header = ["class", "precision", "recall", "f1", "support"]
    return _table(header, rows, "per-class")


def _mistakes(p: Predictions, predicted: torch.Tensor) -> str:
    indices = p.indices
    if indices is None:  # no inputs saved: still list which samples went wrong
        indices = most_confident_mistakes(p.targets, p.probabilities)
    if p.texts and p.examples is None:  # sentences read as a table, not squeezed into image tiles
        table = text_mistakes_table(p.texts, indices.tolist(), p.targets, p.probabilities, p.class_names)
        return _section("mistakes", "Most confident mistakes", table)
    items = []
    for pos, index in enumerate(indices.tolist()):
        content = "" if p.examples is None else _img(example_png(p.examples[pos], p.modality), f"#{index}", "example")
        content += f"<blockquote>{escape(p.texts[pos])}</blockquote>" if p.texts else ""
        content += f"<code>{escape(p.names[pos])}</code>" if p.names else ""
        true, guess = int(p.targets[index]), int(predicted[index])
        confidence = float(p.probabilities[index, guess])
        caption = (
            f"#{index}: true {escape(p.class_names[true])}, predicted {escape(p.class_names[guess])} ({confidence:.2f})"
        )
        items.append(f'<figure class="mistake">{content}<figcaption>{caption}</figcaption></figure>')
    grid = f'<div class="grid">{"".join(items)}</div>' if items else ""
    return _section("mistakes", "Most confident mistakes", grid, "No wrong predictions.")


def _doctor(path: Path) -> str:
    events = read_json(path).get("events") or []
    keys = _union(k for event in events for k in event)
    rows = [[_fmt(event.get(k, "")) for k in keys] for event in events]
    table = _table(keys, rows, "doctor-events") if events else ""
    return _section("doctor", "Doctor events", table, "No doctor events recorded.")


# ---- plots and HTML ---------------------------------------------------------------


def _plot_section(
    run: Path,
    name: str,
    title: str,
    rows: list[dict[str, float]],
    panels: dict[str, list[str]],
    events: list[dict[str, Any]] | None = None,
) -> str:
    """One panel per `panels` entry (title -> columns), training series of many points with a
    smoothed line beside them, NaN doctor events marked on the loss; inlined in the page (so
    points show their values on hover) and saved as plots/<name>.svg."""
    if not panels:
        return _section(name, title, "", f"No {title.lower()} in metrics.csv.")
    x_key = _x_key(rows, [c for columns in panels.values() for c in columns])
    charts = {t: [_series(rows, c, x_key) for c in cs] for t, cs in panels.items()}
    for series in charts.values():
        series += [smoothed(s) for s in series if s[0].startswith("train_") and len(s[1]) >= _SMOOTH_FROM]
    if events and x_key == "step" and "loss" in charts:
        charts["loss"].append(event_series(rows, [int(e.get("step", 0)) for e in events]))
    svg = line_chart_svg(charts, x_key)
    (run / "plots").mkdir(exist_ok=True)
    (run / "plots" / f"{name}.svg").write_text(svg, encoding="utf-8")
    return _section(name, title, svg)


def _series(rows: list[dict[str, float]], column: str, x_key: str) -> Series:
    points = [(row.get(x_key, i), row[column]) for i, row in enumerate(rows) if column in row]
    return column, [x for x, _ in points], [y for _, y in points]


def _x_key(rows: list[dict[str, float]], columns: list[str]) -> str:
    """Plot against epoch when each metric has one value per epoch, else step."""
    for column in columns:
        epochs = [row.get("epoch") for row in rows if column in row]
        if None in epochs or len(set(epochs)) < len(epochs):
            return "step"
    return "epoch"


def _svg(text: str) -> bytes:
    return text.encode("utf-8")


def _img(content: bytes, alt: str, css_class: str = "plot", mime: str = "image/png") -> str:
    data = base64.b64encode(content).decode("ascii")
    uri = f"data:{mime};base64,{data}"
    return f'<img class="{css_class}" alt="{escape(alt)}" src="{uri}">'


def _section(section_id: str, title: str, body: str, note: str = "", collapsed: bool = False) -> str:
    """A titled section; an empty body shows `note` instead (a missing input); `collapsed` folds
    it under its title (a click opens it)."""
    content = body or _note(note)
    if collapsed:
        folded = f"<details><summary><h2>{escape(title)}</h2></summary>{content}</details>"
        return f'<section id="{section_id}">{folded}</section>\n'
    return f'<section id="{section_id}"><h2>{escape(title)}</h2>{content}</section>\n'


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _pre(path: Path) -> str:
    return f"<pre>{escape(_text(path))}</pre>" if path.is_file() else ""


def _table(header: list[str], rows: list[list[str]], table_id: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    attribute = f' id="{table_id}"' if table_id else ""
    return f"<table{attribute}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _page(title: str, sections: list[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>\n"
        f"<h1>{escape(title)}</h1>\n{''.join(sections)}</body></html>\n"
    )


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}"""
    if not isinstance(data, dict):
        return {}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        flat |= _flatten(value, name + ".") if isinstance(value, dict) else {name: value}
    return flat


def _union(keys: Any) -> list[str]:
    return list(dict.fromkeys(keys))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value, default=str)
