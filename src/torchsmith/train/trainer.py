"""The Trainer: fit, evaluate and predict for any nn.Module.

`fit` reads top to bottom: every part of a training iteration is visible in `_train_one`.
The one override point for unusual batches is `train_step(model, batch)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import gc
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from torchsmith.callbacks.base import Callback
from torchsmith.callbacks.progress import ProgressPrinter
from torchsmith.config import OptimConfig, TrainConfig
from torchsmith.data.loaders import make_batches
from torchsmith.data.order import derive_seed
from torchsmith.errors import UsageError
from torchsmith.io import rank
from torchsmith.state import TrainState
from torchsmith.train import distributed
from torchsmith.train.guard import FiniteCheck, check_device_flags, flag_on_device, known_bad, loss_history
from torchsmith.train.metrics import MetricAccumulator
from torchsmith.train.optim import (
    build_optimizer,
    build_schedule,
    grad_norm,
    optimizer_step,
    resolve_device,
    steps_per_call,
    zero_grad,
)
from torchsmith.train.tasks import LossFn, Task, resolve_loss, resolve_task

RECENT = 16  # losses kept on the device for the doctor's history


class RolledBack(Exception):
    """Internal: the NaN policy restored an earlier checkpoint; the epoch loop restarts."""


class Trainer:
    """Trains any `nn.Module` whose `forward` takes the batch inputs.

    Example:
        >>> trainer = Trainer(model, loss=nn.CrossEntropyLoss(),
        ...                   optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
        ...                   max_epochs=10, batch_size=64)  # doctest: +SKIP
        >>> history = trainer.fit((x_train, y_train), (x_val, y_val))  # doctest: +SKIP
        >>> trainer.evaluate((x_test, y_test))  # {"loss": ..., "accuracy": ...}  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        loss: str | LossFn | nn.Module | None = None,
        optimizer: torch.optim.Optimizer | Any | str | None = None,
        *,
        scheduler: Any = None,
        task: str | Task = "classification",
        callbacks: Sequence[Callback] = (),
        config: TrainConfig | None = None,
        optim: OptimConfig | None = None,
        **options: Any,
    ) -> None:
        self.config = _with_options(config or TrainConfig(), options)
        self.optim_config = optim or OptimConfig()
        # A ready optimizer (or factory) keeps the learning rate it was given unless `optim`
        # names a schedule too; named optimizers get the config's schedule (cosine by default).
        self._own_schedule = optim is not None or optimizer is None or isinstance(optimizer, str)
        self.model = model  # always the unwrapped model: this is what gets saved
        self.dist = distributed.setup(self.config)  # None unless torchrun started several processes
        self.device = self.dist.device if self.dist else resolve_device(self.config.device)
        self.task = resolve_task(task)
        self.loss_fn = resolve_loss(loss, self.optim_config.label_smoothing)
        self._optimizer_spec, self._scheduler_spec = optimizer, scheduler
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.callbacks = list(callbacks)
        if (
            self.config.progress != "none"
            and rank.is_writer()
            and not any(isinstance(c, ProgressPrinter) for c in callbacks)
        ):
            self.callbacks.append(ProgressPrinter(self.config.progress))
        self.state = TrainState()
        self.forward_model: nn.Module = model  # compiled or DDP-wrapped view used for training
        self.eval_model: nn.Module = model  # compiled view for evaluation (never DDP: no collectives)
        self.train_batches: Any = None
        self.grad_norm = torch.zeros(())
        self._check = FiniteCheck([], torch.device("cpu"))  # the NaN guard's, set up with the model
        self._first_bad_step = torch.full((), -1, dtype=torch.int64)
        self._device_guard = False
        self._batches_ready = False
        self._generator = torch.default_generator
        self._params: list[nn.Parameter] = []
        self._epoch_clock = (time.perf_counter(), 0.0)
        self.meter = MetricAccumulator(self.task)
        self.epoch_totals: dict[str, float] = {}  # host sums of the finished log intervals
        self._recent_losses: list[torch.Tensor | None] = [None] * RECENT

    # ----------------------------------------------------------------- fit
    def fit(self, train_data: Any, val_data: Any = None, *, resume: bool = False) -> list[dict[str, float]]:
        """Train; returns the per-epoch history (also on `trainer.state.history`).

        `resume=True` continues from the newest complete checkpoint of the `Checkpointer`
        callback, exactly where it stopped.
        """
        state = self.state
        self.train_batches = self._batches(train_data, train=True)
        val_batches = self._batches(val_data, train=False) if val_data is not None else None
        self.setup()
        if resume:
            self.resume_from_checkpoint()
        self._call("on_fit_start")
        try:
            while not self._finished():
                self.forward_model.train()  # once per epoch: evaluation and the doctor restore it
                self._call("on_epoch_start")  # after train(): a callback may keep some layers in eval mode
                self._epoch_clock = (time.perf_counter(), state.train_time_s)
                try:
                    for inputs, targets, indices in self.train_batches.epoch(state.epoch, state.position):
                        if state.poisoned and known_bad(self.state, indices):
                            state.position += 1  # a batch a rollback found non-finite
                            continue
                        self._train_one(inputs, targets, indices)
                        if self._finished() or self._stopping():
                            break
                except RolledBack:
                    continue  # the counters moved back: iterate again from the restored position
                epoch_seconds = self._clock()
                if state.position < len(self.train_batches) and not self._finished():
                    break  # stopped mid-epoch (signal, early stop): no partial-epoch evaluation
                self._end_epoch(val_batches, epoch_seconds)
                if self._agree_stop():
                    break
            self._agree_stop()  # a signal that came after the last step's agreement
        except BaseException as error:
            state.status = "stopped" if isinstance(error, KeyboardInterrupt) else "failed"
            self._call("on_exception", error)
            raise
        finally:
            self._release_ddp()
        state.status = "stopped" if state.stop_requested else "completed"
        self._call("on_fit_end")
        return state.history

    def _train_one(self, inputs: Any, targets: Any, indices: torch.Tensor | None) -> None:
        """One optimizer step: forward, loss, backward, finite check, clip, step, schedule."""
        cfg, state = self.config, self.state
        if not self._batches_ready:
            inputs, targets = self._to_device(inputs), self._to_device(targets)
        self._seed_step()  # dropout and other module randomness follow (seed, step)
        out = self.train_step(self.forward_model, (inputs, targets))
        weight, batch_samples = self._batch_share(targets)
        (out["loss"] * weight if weight != 1.0 else out["loss"]).backward()  # DDP averages over ranks here
        loss = out["loss"].detach()
        if cfg.clip_grad_norm is not None or state.step % cfg.log_every == cfg.log_every - 1:
            self.grad_norm = grad_norm(self._params, cfg.clip_grad_norm)
        if self._device_guard:
            flag_on_device(self, self._check.flag(loss))  # the fused optimizer skips the step if flagged
        elif not self._may_step(loss):
            self._on_nonfinite(inputs, targets, indices)
            return
        assert self.optimizer is not None
        optimizer_step(self.optimizer)
        zero_grad(self.optimizer)
        if self.scheduler is not None and self._scheduler_interval == "step":
            self.scheduler.step()
        if "outputs" in out:
            self.meter.update(loss, out["outputs"], targets)
        self._recent_losses[state.step % RECENT] = loss  # for the doctor's history (detached)
        state.step += 1
        state.position += 1
        state.samples_seen += batch_samples
        state.metrics_updated = state.step % cfg.log_every == 0
        if self._device_guard and state.step % cfg.nan_check_every == 0:
            check_device_flags(self)
        if state.metrics_updated:
            self._log_train()
        self._call("on_step_end")

    def train_step(self, model: nn.Module, batch: tuple[Any, Any]) -> dict[str, torch.Tensor]:
        """Forward and loss for one batch; override for unusual batches.

        Must return {"loss": scalar tensor}, and "outputs" for the task's metrics.
        """
        inputs, targets = batch
        with self.autocast():
            outputs = model(inputs)
            loss = self.loss_fn(*self.task.loss_view(outputs, targets))
        return {"loss": loss, "outputs": outputs}

    def _end_epoch(self, val_batches: Any, seconds: float) -> None:
        state = self.state
        self._log_train()
        if val_batches is not None:
            with self.inference_weights():
                for key, value in self._evaluate_batches(val_batches).items():
                    state.metrics[f"val_{key}"] = value
            self._call("on_eval_end")
        state.metrics["epoch_time_s"] = seconds
        state.history.append({"epoch": state.epoch + 1, "step": state.step, **state.metrics})
        if self.scheduler is not None and self._scheduler_interval == "epoch":
            self.scheduler.step()  # before callbacks, so a checkpoint saved there holds the next LR
        self._call("on_epoch_end")
        state.epoch += 1
        state.position = 0
        self.epoch_totals = {}

    # ----------------------------------------------------------------- evaluate / predict
    def evaluate(self, data: Any, collect: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict[str, float]:
        """Loss and the task's metrics over `data` (all samples, each counted once).

        With `collect`, each batch's `(outputs, targets)` is appended to it (on the CPU).
        """
        self.setup(for_training=False)
        return self._evaluate_batches(self._batches(data, train=False), collect)

    def _evaluate_batches(self, batches: Any, collect: list[Any] | None = None) -> dict[str, float]:
        meter = MetricAccumulator(self.task)
        model = self.eval_model
        was_training = model.training
        model.eval()
        parts = []
        with torch.no_grad():
            for inputs, targets, indices in batches.epoch(0):
                inputs, targets = self._to_device(inputs), self._to_device(targets)
                with self.autocast():
                    outputs = self._eval_forward(model, inputs)
                    loss = self.loss_fn(*self.task.loss_view(outputs, targets))
                meter.update(loss, outputs, targets)
                if collect is not None:
                    parts.append((outputs.float().cpu(), targets.cpu(), indices))
        model.train(was_training)
        if self.dist is not None:  # each rank evaluated its slice of every batch: each sample once
            self.dist.reduce_meter(meter, agree_keys=True)
        if collect is not None:
            collect.extend(self.dist.gather_in_order(parts) if self.dist else [(o, t) for o, t, _ in parts])
        return meter.compute()

    def _eval_forward(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        if self.config.tta == "none":
            return model(inputs)
        from torchsmith.train.tta import tta_predict

        return tta_predict(model, inputs, self.config.tta)  # averaged logits over flipped/shifted views

    def predict(self, inputs: torch.Tensor | Any) -> torch.Tensor:
        """The model's outputs for `inputs` (a tensor, batched here), gathered on the CPU."""
        self.setup(for_training=False)
        outputs = []
        self.model.eval()
        with torch.no_grad():
            for batch in self.iter_inputs(inputs):
                with self.autocast():
                    outputs.append(self.eval_model(batch).float().cpu())
        return torch.cat(outputs)

    def iter_inputs(self, inputs: Any) -> Iterator[torch.Tensor]:
        if isinstance(inputs, torch.Tensor):
            for start in range(0, inputs.shape[0], self.config.eval_batch_size):
                yield self._to_device(inputs[start : start + self.config.eval_batch_size])
        else:
            for inputs_batch, _, _ in self._batches(inputs, train=False).epoch(0):
                yield self._to_device(inputs_batch)

    # ----------------------------------------------------------------- setup and helpers
    def setup(self, for_training: bool = True) -> None:
        """Move the model to the device and build optimizer, schedule and compiled view once."""
        if self.optimizer is None:
            self.model.to(self.device)
            self._first_bad_step = torch.full((), -1, dtype=torch.int64, device=self.device)
            if self.config.channels_last:
                self.model.to(memory_format=torch.channels_last)
            if self.config.deterministic:
                torch.use_deterministic_algorithms(True, warn_only=True)
            compiled: Any = torch.compile(self.model) if self.config.compile else self.model
            self.forward_model = compiled
            self.eval_model = self.forward_model
        if not for_training:
            return
        if self.dist is not None and self.forward_model is self.eval_model:
            self.forward_model = self.dist.wrap(self.model, self.config.compile)  # DDP for this fit
        if self.optimizer is not None:
            return
        self._params = list(self.model.parameters())  # listed once: walking the modules costs per step
        self._check = FiniteCheck(self._params, self.device)
        self._generator = (
            torch.cuda.default_generators[self.device.index or 0]
            if self.device.type == "cuda"
            else torch.default_generator
        )
        # In-memory data already lives on the device in its final layout: no per-step move.
        self._batches_ready = getattr(self.train_batches, "on_device", False) and not self.config.channels_last
        self.optimizer = build_optimizer(self._optimizer_spec, self.model, self.optim_config, self.config.batch_size)
        total = self.total_steps()
        if self._scheduler_spec is not None or not self._own_schedule:
            self.scheduler = self._scheduler_spec
        else:
            self.scheduler = build_schedule(self.optim_config, self.optimizer, total)
        # The sync-free guard needs an optimizer that skips flagged steps itself (fused ones).
        self._device_guard = (
            self.config.nan_guard
            and self.config.nan_check_every > 1
            and bool(getattr(self.optimizer, "_step_supports_amp_scaling", False))
            and any(g.get("fused") for g in self.optimizer.param_groups)
        )
        if self.config.nan_guard and self.config.nan_check_every > 1 and not self._device_guard:
            print(
                "note: train.nan_check_every > 1 needs a fused optimizer (sgd, adam, adamw, adagrad); "
                "checking every step",
                file=sys.stderr,
            )
        self._scheduler_interval = "step" if self._scheduler_spec is None else steps_per_call(self.scheduler)
        self.state.max_epochs, self.state.max_steps = self.config.max_epochs, self.config.max_steps
        self.state.steps_per_epoch = len(self.train_batches)

    def total_steps(self) -> int:
        per_epoch = len(self.train_batches)
        total = per_epoch * self.config.max_epochs
        return min(total, self.config.max_steps) if self.config.max_steps else total

    def _finished(self) -> bool:
        state = self.state
        if self.config.max_steps is not None and state.step >= self.config.max_steps:
            return True
        return state.epoch >= self.config.max_epochs

    def _batches(self, data: Any, train: bool) -> Any:
        cfg = self.config
        rank, world_size = (self.dist.rank, self.dist.world_size) if self.dist else (0, 1)
        return make_batches(
            data,
            batch_size=cfg.batch_size if train else cfg.eval_batch_size,
            train=train,
            seed=cfg.seed,
            device=self.device,
            rank=rank,
            world_size=world_size,
            group_by_length=train and cfg.group_by_length,
        )

    def _to_device(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            if value.device != self.device:
                value = value.to(self.device, non_blocking=True)
            if self.config.channels_last and value.dim() == 4:
                value = value.contiguous(memory_format=torch.channels_last)
            return value
        if isinstance(value, (tuple, list)):
            return type(value)(self._to_device(v) for v in value)
        if isinstance(value, dict):
            return {k: self._to_device(v) for k, v in value.items()}
        return value

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.config.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _seed_step(self) -> None:
        # The device's default generator directly: torch.manual_seed would also reseed every
        # other backend, which costs more than a small training step.
        # Under DDP each rank draws its own masks for its own samples.
        counters = (3, self.state.step) if self.dist is None else (3, self.state.step, self.dist.rank)
        self._generator.manual_seed(derive_seed(self.config.seed, *counters))

    def _may_step(self, loss: torch.Tensor) -> bool:
        """The NaN guard's verdict, with one host read. Under DDP all ranks agree on it, and on
        their stop requests, in one reduction, before any of them steps."""
        if self.dist is not None:
            return self.dist.agree_step(self.state, self._check.flag(loss) if self.config.nan_guard else None)
        return not self.config.nan_guard or self._check.passes(loss)

    def _batch_share(self, targets: Any) -> tuple[float, int]:
        """(weight of this rank's mean loss, samples in the global batch) for the current step."""
        if self.dist is None:
            return 1.0, targets.shape[0]
        total = self.train_batches.order.batch_size_at(self.state.position)
        return self.dist.loss_weight(targets.shape[0], total), total

    def _release_ddp(self) -> None:
        # DDP lives for one fit. Its reducer holds the process group from within reference cycles:
        # left to the interpreter's exit, its teardown can abort the process (seen with gloo).
        if self.forward_model is not self.eval_model:
            self.forward_model = self.eval_model
            gc.collect()

    def _stopping(self) -> bool:
        """The stop request, as all ranks agreed on it in this step's reduction under DDP."""
        return self.state.stop_requested if self.dist is None else self.dist.stop_agreed

    def _agree_stop(self) -> bool:
        return self.state.stop_requested if self.dist is None else self.dist.agree_stop(self.state)

    def _clock(self) -> float:
        """Update `state.train_time_s`; returns the seconds spent in the current epoch."""
        started, before = self._epoch_clock
        seconds = time.perf_counter() - started
        self.state.train_time_s = before + seconds
        return seconds

    def _log_train(self) -> None:
        """Read the device-side sums (one sync) into `state.metrics` as train_*."""
        self._clock()
        meter = self.meter
        if self.dist is not None:
            self.dist.reduce_meter(meter)  # the sums and counts of all ranks
        count = meter.count
        values = meter.compute()
        meter.reset()
        totals = self.epoch_totals
        for key, value in values.items():
            totals[key] = totals.get(key, 0.0) + value * count
        totals["_count"] = totals.get("_count", 0) + count
        if totals["_count"]:
            for key in values:
                self.state.metrics[f"train_{key}"] = totals[key] / totals["_count"]
        if "loss" in values:
            self.state.last_loss = values["loss"]
        self.state.metrics["lr"] = self.optimizer.param_groups[0]["lr"] if self.optimizer else 0.0
        self.state.metrics["grad_norm"] = float(self.grad_norm)

    def _on_nonfinite(self, inputs: Any, targets: Any, indices: torch.Tensor | None) -> None:
        """The guard fired: nothing was applied to the weights. Find the cause, then apply
        the `on_nan` policy: stop, skip the batch, or roll back to the last checkpoint."""
        from torchsmith.train.guard import apply_nan_policy, investigate

        assert self.optimizer is not None
        self.optimizer.zero_grad(set_to_none=True)
        report = investigate(self, inputs, targets, indices, loss_history(self))
        batch = indices.tolist() if indices is not None else None
        self.state.nan_events.append({"policy": self.config.on_nan, **report.to_dict(), "batch_indices": batch})
        apply_nan_policy(self, report)  # raises TrainingFailure or RolledBack, or returns to skip

    def parameters_changed(self) -> None:
        """Call after changing which parameters require gradients during `fit` (as `FineTune`
        does): under DDP the wrapper is rebuilt, since it reduces the gradients of the
        parameters that trained when it was built."""
        if self.dist is not None and self.forward_model is not self.eval_model:
            self._release_ddp()
            self.forward_model = self.dist.wrap(self.model, self.config.compile)

    def resume_from_checkpoint(self) -> None:
        """Restore the newest complete checkpoint of the Checkpointer callback."""
        from torchsmith.callbacks.checkpointer import Checkpointer, restore

        checkpointer = next((c for c in self.callbacks if isinstance(c, Checkpointer)), None)
        if checkpointer is None:
            raise UsageError("resume needs a Checkpointer callback (a run directory) to find checkpoints in")
        restore(self, checkpointer.latest())

    @contextlib.contextmanager
    def inference_weights(self) -> Iterator[nn.Module]:
        """Within the block the model holds the weights that evaluation and saved models use:
        its own, or the average a callback keeps (EMA without lookahead)."""
        with contextlib.ExitStack() as stack:
            for callback in self.callbacks:
                if hasattr(callback, "inference_weights"):
                    stack.enter_context(callback.inference_weights(self.model))
            yield self.model

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)


def _with_options(config: TrainConfig, options: dict[str, Any]) -> TrainConfig:
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = [k for k in options if k not in names]
    if unknown:
        hints = [
            f"'{k}'" + (f" (did you mean '{m[0]}'?)" if (m := difflib.get_close_matches(k, names, 1)) else "")
            for k in unknown
        ]
        raise TypeError(f"Trainer got unknown option(s) {', '.join(hints)}; options are: {', '.join(names)}")
    return dataclasses.replace(config, **options)
