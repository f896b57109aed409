"""The callback protocol: a base class with no-op hooks, each taking the trainer.

Shared data lives on `trainer.state` (see `torchsmith.state.TrainState`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import nn

    from torchsmith.io.checkpoint import Checkpoint
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


@runtime_checkable
class CheckpointSource(Protocol):
    """A callback that keeps checkpoints (the `Checkpointer`): the Trainer resumes from, and the
    NaN policy `rollback` returns to, its newest complete one."""

    def latest(self) -> Checkpoint: ...


def _key(index: int, callback: Callback) -> str:
    return f"{index}:{type(callback).__name__}"


def callback_states(callbacks: Sequence[Callback]) -> dict[str, Any]:
    """Each callback's `state_dict`, keyed by its place and class, for a checkpoint."""
    return {_key(i, c): c.state_dict() for i, c in enumerate(callbacks)}


def load_callback_states(callbacks: Sequence[Callback], saved: dict[str, Any]) -> None:
    """Give each callback back what `callback_states` saved for the callback in its place."""
    for index, callback in enumerate(callbacks):
        if _key(index, callback) in saved:
            callback.load_state_dict(saved[_key(index, callback)])


@contextlib.contextmanager
def inference_weights(callbacks: Sequence[Callback], model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model holds the weights evaluation and saved models use: its own, or
    the average a callback keeps (a callback with an `inference_weights(model)` context)."""
    with contextlib.ExitStack() as stack:
        for callback in callbacks:
            if hasattr(callback, "inference_weights"):
                stack.enter_context(callback.inference_weights(model))
        yield model
