"""The trainer's shared, checkpointable state: counters, latest metrics, stop requests."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class TrainState:
    """Everything callbacks read and write during `Trainer.fit`.

    `step` counts optimizer steps over the whole run; `epoch` is the current epoch
    (0-based); `position` is the number of batches of that epoch already consumed, so
    `(epoch, position)` is where a resumed run continues.

    Example:
        >>> state = TrainState()
        >>> state.step, state.epoch
        (0, 0)
    """

    epoch: int = 0
    step: int = 0
    position: int = 0
    max_epochs: int = 1
    max_steps: int | None = None
    steps_per_epoch: int = 0
    samples_seen: int = 0
    train_time_s: float = 0.0
    last_loss: float = float("nan")
    # latest metrics by name ("train_loss", "val_loss", "val_accuracy", "grad_norm", ...)
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    nan_events: list[dict[str, Any]] = field(default_factory=list)
    skipped_steps: int = 0
    rollbacks: int = 0
    # [epoch, position] of batches a rollback found non-finite; they are skipped on replay
    poisoned: list[list[int]] = field(default_factory=list)
    # dataset samples with non-finite inputs found by a rollback: batches holding them are skipped
    excluded_samples: list[int] = field(default_factory=list)
    # true on the steps where train metrics were just read (every `log_every` steps)
    metrics_updated: bool = False
    # true on the steps where a mid-epoch evaluation (`eval_every`) just wrote val_* metrics
    evaluated: bool = False
    stop_requested: bool = False
    stop_reason: str = ""
    stop_signal: str = ""  # "SIGTERM"/"SIGINT" when a signal asked for the stop
    status: str = "running"

    @property
    def finished(self) -> bool:
        """Whether the run has taken all its steps (`max_steps`) or epochs (`max_epochs`)."""
        return (self.max_steps is not None and self.step >= self.max_steps) or self.epoch >= self.max_epochs

    @property
    def total_steps(self) -> int:
        """Optimizer steps the run takes: the epochs' steps, or fewer when `max_steps` stops it first."""
        by_epochs = self.steps_per_epoch * self.max_epochs
        return min(by_epochs, self.max_steps) if self.max_steps else by_epochs

    def request_stop(self, reason: str, signal: str = "") -> None:
        self.stop_requested = True
        self.stop_reason = reason
        self.stop_signal = signal or self.stop_signal

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = {f.name for f in fields(self)}
        for key, value in state.items():
            if key in names:  # checkpoints of older versions may hold fields that are gone
                setattr(self, key, value)


# Metrics where a smaller value is better; every other metric (accuracy, F1, R^2, ...) is
# better when larger. Used wherever "best" and "improved" are decided.
LOWER_IS_BETTER = ("loss", "perplexity", "bits_per", "mae", "rmse", "mse", "error")


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of this metric (e.g. `val_loss`, `val_mae`) is better.

    Example:
        >>> lower_is_better("val_loss"), lower_is_better("val_accuracy")
        (True, False)
    """
    return any(part in metric for part in LOWER_IS_BETTER)
