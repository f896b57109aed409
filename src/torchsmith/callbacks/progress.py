"""`ProgressPrinter`: a live bar on a terminal (tqdm), one plain line per epoch otherwise."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchsmith.callbacks.base import Callback

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
