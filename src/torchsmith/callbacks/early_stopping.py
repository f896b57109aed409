"""`EarlyStopping`: stop when the monitored metric has not improved for some epochs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchsmith.callbacks.base import Callback
from torchsmith.state import lower_is_better

if TYPE_CHECKING:
    from torchsmith.train.trainer import Trainer


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved for `patience` epochs ("loss" metrics: lower is better).

    Example:
        >>> EarlyStopping(monitor="val_accuracy", patience=3)  # doctest: +ELLIPSIS
        <torchsmith.callbacks.EarlyStopping object at ...>
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 3, min_delta: float = 0.0) -> None:
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.lower_is_better = lower_is_better(monitor)
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
