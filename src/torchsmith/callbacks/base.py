"""The callback protocol: a base class with no-op hooks, each taking the trainer.

Shared data lives on `trainer.state` (see `torchsmith.state.TrainState`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torchsmith.train.trainer import Trainer


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
