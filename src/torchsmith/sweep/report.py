"""What a sweep leaves in its folder: `trials.csv`, `sweep.html`, and the best trial's command line.

The HTML page is self-contained: the best trials, each searched setting against the metric
(one scatter per setting, log scale where the search was), and the optimisation history
(each trial's value and the best so far), drawn with the run report's SVG charts.
"""

from __future__ import annotations

import csv
import io
import math
import shlex
from html import escape
from pathlib import Path
from typing import Any

from torchsmith.io.files import atomic_write_text
from torchsmith.report.plots import line_chart_svg
from torchsmith.sweep.space import SearchParam, as_set_value, decode
from torchsmith.sweep.study import SweepPlan

STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f4f4f4}"
    "code{background:#f4f4f4;padding:2px 4px}"
)


def trial_rows(study: Any, plan: SweepPlan) -> list[dict[str, Any]]:
    """One row per trial, in trial order."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        duration = trial.duration.total_seconds() if trial.duration else None
        value = trial.value if trial.state.name == "COMPLETE" else None  # a pruned trial's is its last report
        row: dict[str, Any] = {"number": trial.number, "state": _state(trial), plan.metric: value}
        row.update({param.key: decode(trial.params.get(param.key)) for param in plan.space})
        row.update(
            {
                "last_reported": trial.intermediate_values.get(max(trial.intermediate_values, default=-1)),
                "epochs": trial.user_attrs.get("epochs"),
                "duration_s": round(duration, 1) if duration is not None else None,
                "run_dir": trial.user_attrs.get("run_dir", ""),
                "reason": trial.user_attrs.get("fail_reason", ""),
            }
        )
        rows.append(row)
    return rows


def _state(trial: Any) -> str:
    state = trial.state.name.lower()
    if state == "fail" and "fail_reason" not in trial.user_attrs:
        return "interrupted"
    return {"complete": "completed", "fail": "failed"}.get(state, state)


def best_rows(rows: list[dict[str, Any]], plan: SweepPlan, count: int = 10) -> list[dict[str, Any]]:
    done = [row for row in rows if row["state"] == "completed" and row[plan.metric] is not None]
    return sorted(done, key=lambda r: r[plan.metric], reverse=plan.direction == "maximize")[:count]


def best_command(args_words: list[str], best: dict[str, Any], plan: SweepPlan) -> str:
    """`torchsmith train` with the base flags and the best trial's settings."""
    settings = [word for param in plan.space for word in ("--set", f"{param.key}={as_set_value(best[param.key])}")]
    return shlex.join(["torchsmith", "train", *args_words, *settings, "--run-dir", str(plan.folder / "best")])


def write_sweep_report(study: Any, plan: SweepPlan, command: str) -> tuple[Path, Path]:
    rows = trial_rows(study, plan)
    columns = list(rows[0]) if rows else ["number", "state", plan.metric]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    table = plan.folder / "trials.csv"
    atomic_write_text(table, buffer.getvalue())
    page = plan.folder / "sweep.html"
    atomic_write_text(page, _html(rows, plan, command))
    return table, page


def _cell(value: Any) -> Any:
    return as_set_value(value) if isinstance(value, (list, dict)) else value


def _html(rows: list[dict[str, Any]], plan: SweepPlan, command: str) -> str:
    counts = {state: sum(r["state"] == state for r in rows) for state in ("completed", "pruned", "failed")}
    best = best_rows(rows, plan)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>sweep {escape(plan.study_name)}</title>",
        f"<style>{STYLE}</style></head><body><h1>Sweep {escape(plan.study_name)}</h1>",
        f"<p>{len(rows)} trials: {counts['completed']} completed, {counts['pruned']} pruned, "
        f"{counts['failed']} failed. Metric <b>{escape(plan.metric)}</b> ({plan.direction}), sampler "
        f"{plan.sampler}, pruner {plan.pruner}, storage <code>{escape(plan.storage)}</code>.</p>",
    ]
    if command:
        parts.append(f"<p>Best trial again: <code>{escape(command)}</code></p>")
    parts.append("<h2 id='best'>Best trials</h2>" + _table(best, plan))
    parts.append("<h2 id='settings'>Each setting against the metric</h2>" + _settings_charts(rows, plan))
    parts.append("<h2 id='history'>Optimisation history</h2>" + _history_chart(rows, plan))
    failed = [r for r in rows if r["state"] in ("failed", "interrupted")]
    if failed:
        parts.append("<h2 id='failed'>Failed trials</h2>" + _table(failed, plan))
    return "".join(parts) + "</body></html>\n"


def _table(rows: list[dict[str, Any]], plan: SweepPlan) -> str:
    if not rows:
        return "<p>none yet</p>"
    columns = ["number", plan.metric, *(p.key for p in plan.space), "state", "epochs", "duration_s", "reason"]
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(_format(row.get(c)))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(_cell(value))


def _settings_charts(rows: list[dict[str, Any]], plan: SweepPlan) -> str:
    done = [r for r in rows if r[plan.metric] is not None]
    charts = []
    for param in plan.space:
        xs, label = _axis(param, [r[param.key] for r in done])
        series = [(plan.metric, xs, [float(r[plan.metric]) for r in done])]
        charts.append(line_chart_svg({param.key: series}, label, lines=False))
    return "".join(charts) or "<p>no completed trial yet</p>"


def _axis(param: SearchParam, values: list[Any]) -> tuple[list[float], str]:
    """x positions: log10 for log ranges, the choice's index for lists (named in the label)."""
    if param.kind == "log":
        return [math.log10(v) for v in values], f"log10({param.key})"
    if param.kind == "choice":
        names = [as_set_value(c) for c in param.choices]
        index = {name: i for i, name in enumerate(names)}
        legend = ", ".join(f"{i}={name}" for i, name in enumerate(names))
        return [float(index[as_set_value(v)]) for v in values], f"choice: {legend}"
    return [float(v) for v in values], param.key


def _history_chart(rows: list[dict[str, Any]], plan: SweepPlan) -> str:
    done = [r for r in rows if r[plan.metric] is not None]
    if not done:
        return "<p>no completed trial yet</p>"
    numbers = [float(r["number"]) for r in done]
    values = [float(r[plan.metric]) for r in done]
    pick = max if plan.direction == "maximize" else min
    best = [pick(values[: i + 1]) for i in range(len(values))]
    series = [(plan.metric, numbers, values), ("best so far", numbers, best)]
    return line_chart_svg({f"{plan.metric} by trial": series}, "trial")
