"""The NaN guard: a fused finite check of the loss and every gradient before the optimizer step.

`NanGuard` holds everything the guard needs between steps: the finite check, the on-device
record of the first flagged step (the sync-free mode, `train.nan_check_every > 1`), and the
last losses for the doctor's history. When it fires, `investigate` replays the step with the
doctor and `verdict` says what the `on_nan` policy does with it (skip, roll back, stop); the
Trainer applies that verdict, so nothing here writes to the trainer, optimizer or scheduler.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from torchsmith.config import TrainConfig
from torchsmith.doctor.diagnosis import NanReport
from torchsmith.doctor.nan_replay import localize_nonfinite
from torchsmith.errors import TrainingFailure, UsageError
from torchsmith.state import TrainState
from torchsmith.train.optim import prime_fused_momentum

ROLLBACK_LR_FACTOR = 0.5
RECENT = 16  # losses kept on the device for the doctor's history


class RolledBack(Exception):
    """The NaN policy restored an earlier checkpoint; the epoch loop restarts from its position."""


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


class BufferSnapshot:
    """A copy of the model's buffers (BatchNorm running statistics) from before a step's forward.

    A non-finite forward updates running statistics before the guard sees the loss, so a
    refused step must put them back. They cannot be recomputed (NaN destroys the old value),
    so they are copied: one fused copy per step into tensors allocated once.
    """

    def __init__(self, buffers: list[torch.Tensor]) -> None:
        self.buffers = [b for b in buffers if not nn.parameter.is_lazy(b)]
        self.saved = [b.detach().clone() for b in self.buffers]

    def take(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.saved, self.buffers)

    def restore(self) -> None:
        if self.buffers:
            with torch.no_grad():
                torch._foreach_copy_(self.buffers, self.saved)


class NanGuard:
    """The guard's state for one Trainer: its check, its on-device record, its recent losses.

    Example:
        >>> guard = NanGuard(TrainConfig())
        >>> guard.setup([], torch.device("cpu"), optimizer=None)
        >>> guard.passes(torch.tensor(float("nan")))
        False
    """

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.check = FiniteCheck([], torch.device("cpu"))
        self.on_device = False  # the sync-free mode: a fused optimizer skips flagged steps itself
        self.first_bad_step = torch.full((), -1, dtype=torch.int64)
        self.recent: list[torch.Tensor | None] = [None] * RECENT
        self.snapshot = BufferSnapshot([])

    def setup(
        self,
        params: list[nn.Parameter],
        device: torch.device,
        optimizer: Any,
        buffers: Sequence[torch.Tensor] = (),
        scaled: bool = False,
    ) -> None:
        """Point the check at the model's parameters and buffers; choose the host or the on-device mode.

        `scaled` (fp16 with a GradScaler): the guard checks the loss alone. Gradients that overflow
        under loss scaling are the scaler's business: it skips that step and lowers the scale, which
        is no NaN event; a non-finite loss is a real one, and the guard acts on it as always."""
        self.check = FiniteCheck([] if scaled else params, device)
        self.snapshot = BufferSnapshot(list(buffers) if self.config.nan_guard else [])
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        wanted = self.config.nan_guard and self.config.nan_check_every > 1 and not scaled
        # The sync-free guard needs an optimizer that skips flagged steps itself (fused ones).
        self.on_device = (
            wanted
            and bool(getattr(optimizer, "_step_supports_amp_scaling", False))
            and any(g.get("fused") for g in optimizer.param_groups)
        )
        if self.on_device and self.config.on_nan != "stop":
            raise UsageError(
                f"--on-nan {self.config.on_nan} needs the guard's verdict within the failing step, but "
                f"train.nan_check_every={self.config.nan_check_every} reads it every "
                f"{self.config.nan_check_every} steps (the failing batch is gone by then). Use "
                f"--set train.nan_check_every=1 with --on-nan {self.config.on_nan}, or --on-nan stop."
            )
        if self.on_device:
            prime_fused_momentum(optimizer)  # a flagged first step is skipped inside the fused kernel
        if wanted and not self.on_device:
            print(
                "note: train.nan_check_every > 1 needs a fused optimizer (sgd, adam, adamw, adagrad); "
                "checking every step",
                file=sys.stderr,
            )

    def passes(self, loss: torch.Tensor) -> bool:
        """The host-mode verdict for this step's loss and gradients (one host read)."""
        return not self.config.nan_guard or self.check.passes(loss)

    def flag(self, loss: torch.Tensor) -> torch.Tensor | None:
        """The device flag without a host read (for DDP's agreement), or None with the guard off."""
        return self.check.flag(loss) if self.config.nan_guard else None

    def device_flag(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """On-device mode: the flag a fused optimizer reads as `found_inf`, and the first flagged
        step recorded on the device (read every `nan_check_every` steps by `check_record`)."""
        found = self.check.flag(loss)
        first = self.first_bad_step
        first.copy_(torch.where((first < 0) & (found[0] > 0), step, first))
        # 0-dim, as fused Adam/AdamW subtract it from their 0-dim step counters in place (a (1,)
        # flag fails there); a view, so the flag stays the one the check writes.
        return found.view(())

    def check_record(self, state: TrainState) -> None:
        """Read the on-device record (one sync per check interval); stop if a step was flagged."""
        bad = int(self.first_bad_step)
        if bad < 0:
            return
        cause = "non-finite loss or gradient (checked on the device)"
        state.nan_events.append({"step": bad, "epoch": state.epoch + 1, "stage": "unknown", "cause": cause})
        state.status = "failed"
        raise TrainingFailure(
            f"Non-finite loss or gradient at step {bad}. The optimizer skipped that step on the device, so the "
            f"weights never saw it; the guard is read every {self.config.nan_check_every} steps, so "
            f"{state.step - bad - 1} more steps ran. Rerun with --set train.nan_check_every=1 to stop "
            f"within the failing step and have the doctor replay it."
        )

    def remember(self, step: int, loss: torch.Tensor) -> None:
        self.recent[step % RECENT] = loss  # detached, on the device: read only if the guard fires

    def history(self, state: TrainState) -> list[dict[str, float]]:
        """The losses of the last steps and the last logged gradient norms, for the doctor."""
        history = []
        for step in range(max(0, state.step - RECENT), state.step):
            loss = self.recent[step % RECENT]
            if loss is not None:
                history.append({"step": step, "loss": float(loss)})
        for row in state.history[-3:]:
            if "grad_norm" in row:
                history.insert(0, {"step": row["step"], "grad_norm": row["grad_norm"], "lr": row.get("lr", 0.0)})
        return history

    def investigate(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], torch.Tensor],
        batch: tuple[Any, Any, torch.Tensor | None],
        state: TrainState,
        lr: float | None,
    ) -> NanReport:
        """Replay the failing step (same weights, batch and seed: the caller re-seeds) with the doctor."""
        inputs, targets, indices = batch
        return localize_nonfinite(
            model,
            loss_fn,
            inputs,
            targets,
            step=state.step,
            epoch=state.epoch + 1,
            sample_indices=indices,
            history=self.history(state),
            precision=self.config.precision,
            lr=lr,
        )

    def verdict(self, report: NanReport, state: TrainState, indices: torch.Tensor | None, can_roll_back: bool) -> str:
        """Record the event; what the `on_nan` policy does now: "skip", "rollback" or "stop" (its
        limits counted). A skip is counted and said here; the caller drops the batch."""
        batch = indices.tolist() if indices is not None else None
        policy = self.config.on_nan
        state.nan_events.append({"policy": policy, **report.to_dict(), "batch_indices": batch})
        if policy == "skip" and state.skipped_steps < self.config.nan_max_skips:
            state.skipped_steps += 1
            print(
                f"warning: skipped step {state.step} (epoch {state.epoch + 1}, batch {state.position}): "
                f"{report.cause}; {state.skipped_steps} skipped so far",
                file=sys.stderr,
            )
            return "skip"
        if policy == "rollback" and state.rollbacks < self.config.nan_max_rollbacks and can_roll_back:
            return "rollback"
        return "stop"

    @staticmethod
    def rollback_memory(report: NanReport, state: TrainState) -> dict[str, Any]:
        """What a rollback keeps across the restore: the events so far, the count, the batch that
        failed and, when the batch's inputs were bad, those samples (bad inputs stay bad)."""
        excluded = state.excluded_samples + (report.samples if report.stage == "input" else [])
        return {
            "nan_events": list(state.nan_events),
            "rollbacks": state.rollbacks + 1,
            "poisoned": [*state.poisoned, [state.epoch, state.position]],
            "excluded_samples": sorted(set(excluded)),
        }

    def after_rollback(self, memory: dict[str, Any], report: NanReport, state: TrainState) -> None:
        failed_epoch, failed_position = memory["poisoned"][-1]
        for key, value in memory.items():
            setattr(state, key, value)
        print(
            f"warning: {report.cause} at step {report.step}; rolled back to step {state.step}, "
            f"learning rate x{ROLLBACK_LR_FACTOR}, skipping batch {failed_position} of epoch {failed_epoch + 1} "
            f"(rollback {state.rollbacks}/{self.config.nan_max_rollbacks})",
            file=sys.stderr,
        )

    def failure(self, report: NanReport, can_roll_back: bool) -> TrainingFailure:
        """The error that ends the run, saying why the policy gave up."""
        if self.config.on_nan == "rollback" and not can_roll_back:
            return TrainingFailure(f"{report.to_text()}\n--on-nan rollback needs checkpoints (a run directory)")
        limits = {
            "skip": f" after {self.config.nan_max_skips} skipped steps",
            "rollback": f" after {self.config.nan_max_rollbacks} rollbacks",
        }
        return TrainingFailure(
            f"{report.to_text()}\nTraining stopped{limits.get(self.config.on_nan, '')} before this step changed "
            f"the weights; the last good state is saved. Policies: --on-nan stop|skip|rollback."
        )


def known_bad(state: TrainState, indices: torch.Tensor | None) -> bool:
    """A batch an earlier rollback found non-finite, or holding a sample it excluded."""
    if [state.epoch, state.position] in state.poisoned:
        return True
    if state.excluded_samples and indices is not None:
        return bool(torch.isin(indices.cpu(), torch.tensor(state.excluded_samples)).any())
    return False
