"""Results in a notebook: `results_html` renders a trainer's state (the headline, then the curves)
for `Trainer._repr_html_`, and `LiveCurves` redraws the curves in one display area, in place, as
training goes (IPython display handles, at most once per `every_s` seconds).

The charts are SVG inlined in the HTML, so hovering a point shows its value and nothing is fetched.
"""

from __future__ import annotations

import math
import time
from html import escape
from typing import TYPE_CHECKING, Any

from torchsmith.callbacks.base import Callback
from torchsmith.io.charts import Series, line_chart_svg
from torchsmith.state import TrainState, lower_is_better

if TYPE_CHECKING:
    from torchsmith.train.trainer import Trainer

Row = dict[str, float]
METRIC_ORDER = ("accuracy", "perplexity", "bits_per_char", "f1", "mae", "rmse", "r2")


def curves_svg(rows: list[Row], nan_steps: list[int]) -> str:
    """Loss and the first metric against the step; NaN doctor events as points on the loss panel."""
    panels: dict[str, list[Series]] = {}
    loss = [_series(rows, key) for key in ("train_loss", "val_loss") if any(key in row for row in rows)]
    if loss:
        panels["loss"] = loss + ([event_series(rows, nan_steps)] if nan_steps else [])
    metric = next((m for m in METRIC_ORDER if any(f"val_{m}" in r or f"train_{m}" in r for r in rows)), None)
    if metric is not None:
        keys = (f"train_{metric}", f"val_{metric}")
        panels[metric] = [_series(rows, key) for key in keys if any(key in row for row in rows)]
    return line_chart_svg(panels, "step") if panels else ""


def _series(rows: list[Row], key: str) -> Series:
    points = [(row["step"], row[key]) for row in rows if key in row]
    return key, [x for x, _ in points], [y for _, y in points]


def event_series(rows: list[Row], steps: list[int]) -> Series:
    """One point per event at the train loss logged nearest it; NaN between points keeps them apart."""
    logged = [(row["step"], row["train_loss"]) for row in rows if math.isfinite(row.get("train_loss", math.nan))]
    xs: list[float] = []
    ys: list[float] = []
    for step in steps:
        y = min(logged, key=lambda p: abs(p[0] - step))[1] if logged else 0.0
        xs += [step, step]
        ys += [y, math.nan]
    return "NaN/Inf step", xs, ys


def headline(state: TrainState) -> list[tuple[str, str]]:
    """(label, value) pairs that answer "how did it go": status, metrics, best epoch, time, events."""
    items = [("status", state.status), ("epoch", f"{state.epoch}/{state.max_epochs}"), ("step", str(state.step))]
    last = state.history[-1] if state.history else {}
    items += [(key, f"{last[key]:.4f}") for key in last if key.startswith(("val_", "train_"))]
    monitor = next((k for k in ("val_loss", "val_accuracy") if k in last), None)
    if monitor is not None:
        pick = min if lower_is_better(monitor) else max
        best = pick(state.history, key=lambda row: row.get(monitor, math.nan))
        items.append(("best epoch", f"{int(best['epoch'])} ({monitor} {best[monitor]:.4f})"))
    if state.train_time_s > 0:
        rate = state.samples_seen / state.train_time_s
        items.append(("time", f"{state.train_time_s:.1f} s ({rate:,.0f} samples/s)"))
    events = len(state.nan_events)
    items.append(("doctor events", f"{events} NaN/Inf step{'s' if events != 1 else ''}" if events else "none"))
    return items


def results_html(state: TrainState, rows: list[Row] | None = None, redraws: int = 0) -> str:
    """The headline as a table, then the curves (per log point in `rows`, else per epoch)."""
    cells = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in headline(state))
    table = f'<table class="torchsmith-headline">{cells}</table>'
    svg = curves_svg(rows if rows else state.history, [int(e.get("step", 0)) for e in state.nan_events])
    return f'<div class="torchsmith-results" data-redraws="{redraws}">{table}{svg}</div>'


class LiveCurves(Callback):
    """Redraws the headline and the curves in one notebook display area while `fit` runs.

    Example:
        >>> trainer = Trainer(model, callbacks=[LiveCurves()])  # doctest: +SKIP
    """

    def __init__(self, every_s: float = 1.0) -> None:
        self.every_s = every_s  # a redraw sends the whole SVG to the browser: about once a second
        self.rows: list[Row] = []
        self.handle: Any = None
        self.redraws = 0
        self._last = 0.0

    def on_fit_start(self, trainer: Trainer) -> None:
        from IPython.display import HTML, display

        self.handle = display(HTML(results_html(trainer.state, self.rows)), display_id=True)
        self._last = time.monotonic()  # just drawn

    def on_step_end(self, trainer: Trainer) -> None:
        if trainer.state.metrics_updated:  # the trainer has just read the sums: no extra sync
            self.rows.append({"step": trainer.state.step, **trainer.train_metrics.interval})
            self._redraw(trainer, force=False)

    def on_epoch_end(self, trainer: Trainer) -> None:
        state = trainer.state
        evaluated = {k: v for k, v in state.metrics.items() if k.startswith("val_")}
        self.rows.append({"step": state.step, **trainer.train_metrics.interval, **evaluated})
        self._redraw(trainer, force=False)

    def on_fit_end(self, trainer: Trainer) -> None:
        self._redraw(trainer, force=True)
        self.handle = None  # the next fit draws in its own cell

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        self.on_fit_end(trainer)

    def _redraw(self, trainer: Trainer, force: bool) -> None:
        now = time.monotonic()
        if self.handle is None or (not force and now - self._last < self.every_s):
            return
        from IPython.display import HTML

        self._last, self.redraws = now, self.redraws + 1
        self.handle.update(HTML(results_html(trainer.state, self.rows, self.redraws)))
