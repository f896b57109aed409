"""What the Trainer does when the NaN guard fires: nothing was applied to the weights; find the
cause, then apply the `on_nan` verdict (skip the batch, roll back to the last checkpoint, or stop)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from torchsmith.callbacks.base import CheckpointSource
from torchsmith.doctor.diagnosis import NanReport
from torchsmith.train.guard import ROLLBACK_LR_FACTOR, RolledBack

if TYPE_CHECKING:
    from torchsmith.train.trainer import Trainer


def on_nonfinite(trainer: Trainer, inputs: Any, targets: Any, indices: torch.Tensor | None) -> None:
    """The guard fired: nothing was applied to the weights. Find the cause, then apply the
    `on_nan` verdict: skip the batch, roll back to the last checkpoint, or stop."""
    assert trainer.optimizer is not None
    state = trainer.state
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.guard.snapshot.restore()  # undo the failing forward's running statistics, before the doctor replays
    trainer.seed_step()  # the failing step's dropout masks
    lr = trainer.optimizer.param_groups[0]["lr"]
    report = trainer.guard.investigate(trainer.model, trainer.output_loss, (inputs, targets, indices), state, lr)
    can_roll_back = any(isinstance(c, CheckpointSource) for c in trainer.callbacks)
    verdict = trainer.guard.verdict(report, state, indices, can_roll_back)  # records the event
    if verdict == "skip":
        state.position += 1  # the batch is dropped; the weights never saw it
    elif verdict == "rollback":
        roll_back(trainer, report)
    else:
        state.status = "failed"
        raise trainer.guard.failure(report, can_roll_back)


def roll_back(trainer: Trainer, report: NanReport) -> None:
    """Restore the newest checkpoint, lower the learning rate, skip the failing batch."""
    memory = trainer.guard.rollback_memory(report, trainer.state)  # what the restore must not undo
    trainer.restore(trainer.checkpoint_source("--on-nan rollback").latest())
    trainer.guard.after_rollback(memory, report, trainer.state)
    for group in trainer.optimizer.param_groups if trainer.optimizer else []:
        group["lr"] *= ROLLBACK_LR_FACTOR
    if trainer.scheduler is not None and hasattr(trainer.scheduler, "base_lrs"):
        trainer.scheduler.base_lrs = [lr * ROLLBACK_LR_FACTOR for lr in trainer.scheduler.base_lrs]
    raise RolledBack()
