"""Callbacks: plain objects with no-op hooks that each take the trainer.

Shared data lives on `trainer.state` (see `torchsmith.state.TrainState`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torchsmith.trainer import Trainer


class Callback:
    """Base class: override the hooks you need; each receives the trainer.

    Example:
        >>> class PrintLoss(Callback):
        ...     def on_epoch_end(self, trainer):
        ...         print(trainer.state.metrics.get("train_loss"))
    """

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_epoch_start(self, trainer: Trainer) -> None: ...
    def on_step_end(self, trainer: Trainer) -> None: ...
    def on_eval_end(self, trainer: Trainer) -> None: ...
    def on_epoch_end(self, trainer: Trainer) -> None: ...
    def on_fit_end(self, trainer: Trainer) -> None: ...
    def on_exception(self, trainer: Trainer, error: BaseException) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state saved in checkpoints (empty by default)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


def format_metrics(metrics: dict[str, float], keys: tuple[str, ...]) -> str:
    parts = []
    for key in keys:
        if key in metrics:
            value = metrics[key]
            parts.append(f"{key} {value:.4g}" if key == "lr" else f"{key} {value:.4f}")
    return "  ".join(parts)


EPOCH_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_perplexity")


class ProgressPrinter(Callback):
    """A live bar on a terminal (tqdm), one plain line per epoch otherwise.

    The bar is advanced per step (cheap) and its loss text is refreshed only at log
    points, when the trainer has read its metrics anyway.
    """

    def __init__(self, mode: str = "auto", stream: Any = None) -> None:
        import sys

        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode = mode
        self.bar: Any = None

    def on_epoch_start(self, trainer: Trainer) -> None:
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

    def on_epoch_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.mode == "none":
            return
        state = trainer.state
        line = format_metrics(state.metrics, EPOCH_KEYS)
        seconds = state.metrics.get("epoch_time_s", 0.0)
        print(f"Epoch {state.epoch + 1}/{state.max_epochs}  {line}  {seconds:.1f} s", file=self.stream, flush=True)

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved for `patience` epochs ("loss" metrics: lower is better).

    Example:
        >>> EarlyStopping(monitor="val_accuracy", patience=3)  # doctest: +ELLIPSIS
        <torchsmith.callbacks.EarlyStopping object at ...>
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 3, min_delta: float = 0.0) -> None:
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.lower_is_better = "loss" in monitor or "perplexity" in monitor
        self.best: float | None = None
        self.bad_epochs = 0

    def on_epoch_end(self, trainer: Trainer) -> None:
        value = trainer.state.metrics.get(self.monitor)
        if value is None:
            raise ValueError(
                f"EarlyStopping monitors '{self.monitor}', which is not among the metrics "
                f"{sorted(trainer.state.metrics)}; pass validation data or another metric"
            )
        sign = -1.0 if self.lower_is_better else 1.0
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                trainer.state.request_stop(
                    f"early stopping: {self.monitor} did not improve for {self.patience} epochs (best {self.best:.4f})"
                )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
