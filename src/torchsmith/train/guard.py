"""What happens after the NaN guard fires: find the cause, then stop, skip or roll back.

The guard itself (`FiniteCheck`, called by `Trainer._may_step`) is one fused finite check
of the loss and every gradient before the optimizer step, so a bad step never reaches
the weights. This module also replays that step with the doctor and applies the
`on_nan` policy.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import torch

from torchsmith.doctor.diagnosis import NanReport
from torchsmith.doctor.nan_replay import localize_nonfinite
from torchsmith.errors import TrainingFailure

if TYPE_CHECKING:
    from torchsmith.state import TrainState
    from torchsmith.train.trainer import Trainer

ROLLBACK_LR_FACTOR = 0.5


class FiniteCheck:
    """Whether a step's loss and gradients are all finite: one fused pass over all of them.

    GradScaler's own kernel: it flags any NaN/Inf in a list of tensors (multiplying them by
    the scale, 1 here), far cheaper than computing a norm per step.
    """

    def __init__(self, params: list[torch.nn.Parameter], device: torch.device) -> None:
        self.params = params
        self.found = torch.zeros(1, device=device)  # stays 0 except after a hit, which resets it
        self.unit = torch.ones(1, device=device)
        # On the CPU the flag is read through a numpy view: no dispatch per step.
        self.host = self.found.numpy() if device.type == "cpu" else None

    def flag(self, loss: torch.Tensor, reset: bool = True) -> torch.Tensor:
        """A device flag, 1 where the loss or any gradient holds NaN/Inf (no host sync)."""
        tensors = [p.grad for p in self.params if p.grad is not None]
        # The loss joins as it is: the kernel multiplies it by 1.0 in place, which leaves it as
        # it is. One more tensor in the pass costs less than reading the loss on the host
        # (8.7 against 9.1 us per step in place on the overhead job). The CPU kernel takes any
        # float dtype as it is (a float64 loss above float32's range is still finite); the CUDA
        # one wants float32 with a dimension.
        loss = loss.detach() if loss.requires_grad else loss
        tensors.append(loss if self.host is not None else loss.float().reshape(1))
        if reset:
            self.found.zero_()
        torch._amp_foreach_non_finite_check_and_unscale_(tensors, self.found, self.unit)
        return self.found

    def passes(self, loss: torch.Tensor) -> bool:
        """The verdict, with one host read."""
        flag = self.flag(loss, reset=False)
        if (self.host[0] if self.host is not None else flag.item()) == 0:
            return True
        self.found.zero_()
        return False


def investigate(
    trainer: Trainer, inputs: Any, targets: Any, indices: torch.Tensor | None, history: list[dict[str, float]]
) -> NanReport:
    """Replay the failing step (same weights, batch and random seed) with hooks on every module."""
    state = trainer.state

    def loss_fn(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return trainer.loss_fn(*trainer.task.loss_view(outputs, target))

    trainer._seed_step()  # the failing step's dropout masks
    lr = trainer.optimizer.param_groups[0]["lr"] if trainer.optimizer else None
    return localize_nonfinite(
        trainer.model,
        loss_fn,
        inputs,
        targets,
        step=state.step,
        epoch=state.epoch + 1,
        sample_indices=indices,
        history=history,
        precision=trainer.config.precision,
        lr=lr,
    )


def apply_nan_policy(trainer: Trainer, report: NanReport) -> None:
    """stop: raise; skip: drop the batch and go on; rollback: restore the last checkpoint."""
    state, policy = trainer.state, trainer.config.on_nan
    max_skips, max_rollbacks = trainer.config.nan_max_skips, trainer.config.nan_max_rollbacks
    if policy == "skip" and state.skipped_steps < max_skips:
        state.skipped_steps += 1
        print(
            f"warning: skipped step {state.step} (epoch {state.epoch + 1}, batch {state.position}): "
            f"{report.cause}; {state.skipped_steps} skipped so far",
            file=sys.stderr,
        )
        state.position += 1
        return
    if policy == "rollback" and state.rollbacks < max_rollbacks:
        roll_back(trainer, report)
        return
    state.status = "failed"
    limit = {"skip": f" after {max_skips} skipped steps", "rollback": f" after {max_rollbacks} rollbacks"}
    raise TrainingFailure(
        f"{report.to_text()}\nTraining stopped{limit.get(policy, '')} before this step changed the weights; "
        f"the last good state is saved. Policies: --on-nan stop|skip|rollback."
    )


def roll_back(trainer: Trainer, report: NanReport) -> None:
    """Restore the newest checkpoint, lower the learning rate, and skip the failing batch."""
    from torchsmith.callbacks.checkpointer import Checkpointer, restore
    from torchsmith.train.trainer import RolledBack

    state = trainer.state
    checkpointer = next((c for c in trainer.callbacks if isinstance(c, Checkpointer)), None)
    if checkpointer is None:
        raise TrainingFailure(f"{report.to_text()}\n--on-nan rollback needs checkpoints (a run directory)")
    failed_at = [state.epoch, state.position]
    events, rollbacks, poisoned = list(state.nan_events), state.rollbacks + 1, [*state.poisoned, failed_at]
    # Bad input samples stay bad: every later batch holding them is skipped too.
    excluded = state.excluded_samples + (report.samples if report.stage == "input" else [])
    restore(trainer, checkpointer.latest())
    state.nan_events, state.rollbacks, state.poisoned = events, rollbacks, poisoned
    state.excluded_samples = sorted(set(excluded))
    for group in trainer.optimizer.param_groups if trainer.optimizer else []:
        group["lr"] *= ROLLBACK_LR_FACTOR
    if trainer.scheduler is not None and hasattr(trainer.scheduler, "base_lrs"):
        trainer.scheduler.base_lrs = [lr * ROLLBACK_LR_FACTOR for lr in trainer.scheduler.base_lrs]
    print(
        f"warning: {report.cause} at step {report.step}; rolled back to step {state.step}, "
        f"learning rate x{ROLLBACK_LR_FACTOR}, skipping batch {failed_at[1]} of epoch {failed_at[0] + 1} "
        f"(rollback {rollbacks}/{trainer.config.nan_max_rollbacks})",
        file=sys.stderr,
    )
    raise RolledBack()


def flag_on_device(trainer: Trainer, found: torch.Tensor) -> None:
    """The guard without a host sync: hand the device flag to the fused optimizer, which skips
    a flagged step on the device, and remember the first flagged step."""
    trainer.optimizer.found_inf = found  # type: ignore[union-attr]  # read by fused optimizers
    first = trainer._first_bad_step
    first.copy_(torch.where((first < 0) & (found[0] > 0), trainer.state.step, first))


def check_device_flags(trainer: Trainer) -> None:
    """Read the device guard's record (one sync per check interval); stop if a step was flagged."""
    state = trainer.state
    bad = int(trainer._first_bad_step)
    if bad < 0:
        return
    cause = "non-finite loss or gradient (checked on the device)"
    state.nan_events.append({"step": bad, "epoch": state.epoch + 1, "stage": "unknown", "cause": cause})
    state.status = "failed"
    raise TrainingFailure(
        f"Non-finite loss or gradient at step {bad}. The optimizer skipped that step on the device, so the "
        f"weights never saw it; the guard is read every {trainer.config.nan_check_every} steps, so "
        f"{state.step - bad - 1} more steps ran. Rerun with --set train.nan_check_every=1 to stop "
        f"within the failing step and have the doctor replay it."
    )


def known_bad(state: TrainState, indices: torch.Tensor | None) -> bool:
    """A batch an earlier rollback found non-finite, or holding a sample it excluded."""
    if [state.epoch, state.position] in state.poisoned:
        return True
    if state.excluded_samples and indices is not None:
        return bool(torch.isin(indices.cpu(), torch.tensor(state.excluded_samples)).any())
    return False


def loss_history(trainer: Trainer) -> list[dict[str, float]]:
    """The losses of the last steps (kept on the device) and the last logged gradient norms."""
    from torchsmith.train.trainer import RECENT

    state = trainer.state
    history = []
    for step in range(max(0, state.step - RECENT), state.step):
        loss = trainer._recent_losses[step % RECENT]
        if loss is not None:
            history.append({"step": step, "loss": float(loss)})
    for row in state.history[-3:]:
        if "grad_norm" in row:
            history.insert(0, {"step": row["step"], "grad_norm": row["grad_norm"], "lr": row.get("lr", 0.0)})
    return history
