"""`ProgressPrinter`: a live bar on a terminal (tqdm), a widget bar in a Jupyter notebook (tqdm's
notebook flavour, on ipywidgets), one plain line per epoch otherwise."""

from __future__ import annotations

import importlib.util
import sys
from typing import TYPE_CHECKING, Any

from torchsmith.callbacks.base import Callback
from torchsmith.callbacks.live_curves import LiveCurves

if TYPE_CHECKING:
    from torchsmith.train.trainer import Trainer


def format_metrics(metrics: dict[str, float], keys: tuple[str, ...]) -> str:
    parts = []
    for key in keys:
        if key in metrics:
            value = metrics[key]
            parts.append(f"{key} {value:.4g}" if key == "lr" else f"{key} {value:.4f}")
    return "  ".join(parts)


EPOCH_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_perplexity", "val_bits_per_char")


NOTEBOOK_REFRESH_S = 0.25  # a widget redraw is a message to the browser: a few a second at most


def in_notebook_kernel() -> bool:
    """Whether this code runs in a Jupyter kernel (as tqdm.auto decides: IPython's kernel app)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def auto_mode(stream: Any, in_kernel: bool, has_widgets: bool) -> str:
    """ "notebook" in a Jupyter kernel with ipywidgets, else "bar" on a terminal, else "lines"."""
    if in_kernel:
        return "notebook" if has_widgets else "lines"  # without widgets a text bar would print every redraw
    return "bar" if getattr(stream, "isatty", lambda: False)() else "lines"


class ProgressPrinter(Callback):
    """A live bar on a terminal (tqdm), a widget bar in a notebook, one plain line per epoch otherwise.

    The bar is advanced per step (cheap: tqdm redraws at most every `mininterval`) and its
    loss text is refreshed only at log points, when the trainer has read its metrics anyway,
    so the bar adds no host-device sync. In a notebook one bar spans the whole fit (it stays
    on the page, red if the fit was stopped early), the epoch lines print below it, and below
    them the headline and curves are redrawn in place (`LiveCurves`).
    """

    def __init__(self, mode: str = "auto", stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            has_widgets = importlib.util.find_spec("ipywidgets") is not None
            mode = auto_mode(self.stream, in_notebook_kernel(), has_widgets)
        self.mode = mode
        self.bar: Any = None
        self.curves = LiveCurves() if mode == "notebook" else None

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.mode == "notebook" and not trainer.state.finished:  # `fit` after a complete fit shows nothing
            from tqdm.notebook import tqdm as notebook_tqdm

            state = trainer.state
            self.bar = notebook_tqdm(
                total=state.total_steps,
                initial=state.step,
                desc=self._epoch_text(trainer),
                unit="step",
                leave=True,
                mininterval=NOTEBOOK_REFRESH_S,
            )
        if self.curves is not None:
            self.curves.on_fit_start(trainer)

    @staticmethod
    def _epoch_text(trainer: Trainer) -> str:
        return f"Epoch {trainer.state.epoch + 1}/{trainer.state.max_epochs}"

    def on_epoch_start(self, trainer: Trainer) -> None:
        if self.mode == "notebook" and self.bar is not None:
            self.bar.set_description(self._epoch_text(trainer), refresh=False)
        if self.mode == "bar":
            from tqdm import tqdm

            state = trainer.state
            self.bar = tqdm(
                total=state.steps_per_epoch,
                initial=state.position,
                file=self.stream,
                desc=f"Epoch {state.epoch + 1}/{state.max_epochs}",
                unit="step",
                dynamic_ncols=True,
                leave=False,
                mininterval=0.2,
            )

    def on_step_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.update(1)
            state = trainer.state
            if state.metrics_updated:
                rate = state.samples_seen / state.train_time_s if state.train_time_s > 0 else None
                text = f"loss {state.last_loss:.4f}" + (f"  {rate:,.0f} samples/s" if rate else "")
                self.bar.set_postfix_str(text, refresh=False)
        if self.curves is not None:
            self.curves.on_step_end(trainer)

    def on_epoch_end(self, trainer: Trainer) -> None:
        if self.mode == "bar" and self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.mode == "none":
            return
        state = trainer.state
        line = format_metrics(state.metrics, EPOCH_KEYS)
        seconds = state.metrics.get("epoch_time_s", 0.0)
        print(f"Epoch {state.epoch + 1}/{state.max_epochs}  {line}  {seconds:.1f} s", file=self.stream, flush=True)
        if self.curves is not None:
            self.curves.on_epoch_end(trainer)

    def on_fit_end(self, trainer: Trainer) -> None:
        self._close()  # a notebook's bar stays on the page; a terminal's bar of a stopped epoch goes
        if self.curves is not None:
            self.curves.on_fit_end(trainer)

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        self._close()
        if self.curves is not None:
            self.curves.on_exception(trainer, error)

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
