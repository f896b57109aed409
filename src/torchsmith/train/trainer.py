"""The Trainer: fit, evaluate and predict for any nn.Module. `fit` reads top to bottom; a step is in
`_train_one`; the one override point is `train_step(model, batch)`. The NaN guard returns a verdict
that `on_nonfinite` (train/nonfinite.py) applies; checkpoints use `state_dict` / `load_state_dict`.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from torchsmith.callbacks.base import (
    Callback,
    CheckpointSource,
    callback_states,
    inference_weights,
    load_callback_states,
)
from torchsmith.callbacks.defaults import default_callbacks
from torchsmith.callbacks.live_curves import results_html
from torchsmith.config import OptimConfig, TrainConfig, with_options
from torchsmith.data.loaders import make_batches
from torchsmith.data.order import derive_seed
from torchsmith.errors import UsageError
from torchsmith.io.checkpoint import Checkpoint
from torchsmith.io.rng import capture_rng_state, restore_rng_state
from torchsmith.precision import autocast
from torchsmith.state import TrainState
from torchsmith.train import distributed
from torchsmith.train.device import default_generator, resolve_device, to_device
from torchsmith.train.evaluation import evaluate_batches, predict_outputs, validate
from torchsmith.train.guard import NanGuard, RolledBack, known_bad
from torchsmith.train.metrics import TrainMetrics
from torchsmith.train.nonfinite import on_nonfinite
from torchsmith.train.optim import build_optimizer, grad_norm, optimizer_step, schedule_for, zero_grad
from torchsmith.train.outputs import OutputSelector
from torchsmith.train.step import forward_backward, make_scaler
from torchsmith.train.task_base import configure_metrics
from torchsmith.train.tasks import LossFn, Task, resolve_loss, resolve_task


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
        model_output: str | None = None,
        callbacks: Sequence[Callback] = (),
        config: TrainConfig | None = None,
        optim: OptimConfig | None = None,
        **options: Any,
    ) -> None:
        self.config = with_options(config or TrainConfig(), options)
        self.optim_config = optim or OptimConfig()
        # A ready optimizer (or factory) keeps the learning rate it was given unless `optim`
        # names a schedule too; named optimizers get the config's schedule (cosine by default).
        self._own_schedule = optim is not None or optimizer is None or isinstance(optimizer, str)
        self.model = model  # always the unwrapped model: this is what gets saved
        self.dist = distributed.setup(self.config)  # None unless torchrun started several processes
        self.device = self.dist.device if self.dist else resolve_device(self.config.device)
        self.task = resolve_task(task)
        configure_metrics(self.task, self.config.metrics, self.config.monitor)  # a bad name stops here
        if loss is None or (loss == "cross_entropy" and self.task.default_loss != "cross_entropy"):
            loss = self.task.default_loss  # the default loss follows the task (mse, bce_with_logits)
        self.loss_fn = resolve_loss(loss, self.optim_config.label_smoothing)
        self.select_output = OutputSelector(model_output)  # the prediction in a dict/tuple output
        self._optimizer_spec, self._scheduler_spec = optimizer, scheduler
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.scheduler_interval = "step"  # "step", "epoch" or "eval": when `scheduler.step()` is called
        self.callbacks = [*callbacks, *default_callbacks(self.config.progress, callbacks)]
        self.state = TrainState()
        self.forward_model: nn.Module = model  # compiled or DDP-wrapped view used for training
        self.eval_model: nn.Module = model  # compiled view for evaluation (never DDP: no collectives)
        self.train_batches: Any = None
        self.val_batches: Any = None
        self.scaler: Any = None  # a GradScaler under fp16
        self.grad_norm = torch.zeros(())
        self.guard = NanGuard(self.config)
        self.train_metrics = TrainMetrics(self.task)
        self._batches_ready = False
        self._generator = torch.default_generator
        self._params: list[nn.Parameter] = []
        self._epoch_clock = (time.perf_counter(), 0.0)

    def fit(self, train_data: Any, val_data: Any = None, *, resume: bool = False) -> list[dict[str, float]]:
        """Train; returns the per-epoch history. `resume=True` goes on from the Checkpointer's newest checkpoint."""
        state = self.state
        self.train_batches = self.batches(train_data, train=True)
        self.val_batches = val_batches = self.batches(val_data, train=False) if val_data is not None else None
        self.setup()
        self._set_limits()  # from the config now: a second fit may train longer
        if resume:
            self.restore(self.checkpoint_source("resume").latest())
        self._call("on_fit_start")
        try:
            while not state.finished:
                self.forward_model.train()  # once per epoch: evaluation and the doctor restore it
                self._call("on_epoch_start")  # after train(): a callback may keep some layers in eval mode
                self._epoch_clock = (time.perf_counter(), state.train_time_s)
                try:
                    for inputs, targets, indices in self.train_batches.epoch(state.epoch, state.position):
                        if state.poisoned and known_bad(state, indices):
                            state.position += 1  # a batch a rollback found non-finite
                            continue
                        self._train_one(inputs, targets, indices)
                        # under DDP, the stop request as all ranks agreed on it in this step's reduction
                        if state.finished or (self.dist.stop_agreed if self.dist else state.stop_requested):
                            break
                except RolledBack:
                    continue  # the counters moved back: iterate again from the restored position
                epoch_seconds = self._clock()
                if state.position < len(self.train_batches) and not state.finished:
                    break  # stopped mid-epoch (signal, early stop): no partial-epoch evaluation
                self._end_epoch(val_batches, epoch_seconds)
                if self.dist.agree_stop(state) if self.dist else state.stop_requested:
                    break
            if self.dist:
                self.dist.agree_stop(state)  # a signal that came after the last step's agreement
            if self.guard.on_device:
                self.guard.check_record(state)  # the steps after the last check interval
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
        cfg, state, guard = self.config, self.state, self.guard
        if not self._batches_ready:
            inputs, targets = self.to_device(inputs), self.to_device(targets)
        self.seed_step()  # dropout and other module randomness follow (seed, step)
        guard.snapshot.take()  # running statistics (BatchNorm) as they were before this forward
        weight, batch_samples = (
            self.dist.batch_share(targets, self.train_batches, state.position) if self.dist else (1.0, len(targets))
        )
        loss, parts = forward_backward(self, inputs, targets, weight)  # micro-batches with --accumulate
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # true gradients for the clip and the norm
        if cfg.clip_grad_norm is not None or state.step % cfg.log_every == cfg.log_every - 1:
            self.grad_norm = grad_norm(self._params, cfg.clip_grad_norm)
        if guard.on_device:  # no host read: the fused optimizer skips a flagged step itself
            self.optimizer.found_inf = guard.device_flag(loss, state.step)  # type: ignore[union-attr]
        elif not self._may_step(loss):
            on_nonfinite(self, inputs, targets, indices)  # skip, roll back (RolledBack) or stop
            return
        assert self.optimizer is not None
        if self.scaler is not None:  # skips the step itself when the scaled gradients overflowed
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            optimizer_step(self.optimizer)
        zero_grad(self.optimizer)
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        for part_loss, outputs, part_targets in parts:
            if outputs is not None:
                self.train_metrics.update(part_loss, outputs, part_targets)
        guard.remember(state.step, loss)
        state.step += 1
        state.position += 1
        state.samples_seen += batch_samples
        state.metrics_updated = state.step % cfg.log_every == 0
        if guard.on_device and state.step % cfg.nan_check_every == 0:
            guard.check_record(state)
            if self.dist:  # no per-step agreement in this mode: the ranks' stop requests, once an interval
                self.dist.agree_stop(state)
        if state.metrics_updated:
            self._log_train()
        mid_epoch = state.position < len(self.train_batches) and self.val_batches is not None
        state.evaluated = bool(cfg.eval_every and state.step % cfg.eval_every == 0 and mid_epoch)
        if state.evaluated:
            self._validate(self.val_batches)  # every `eval_every` steps (an epoch's end evaluates anyway)
        self._call("on_step_end")

    def train_step(self, model: nn.Module, batch: tuple[Any, Any]) -> dict[str, torch.Tensor]:
        """Forward and loss for one batch; override for unusual batches. Returns {"loss": scalar
        tensor}, and "outputs" for the task's metrics."""
        inputs, targets = batch
        with self.autocast():
            outputs, loss = self.forward_loss(model, inputs, targets)
        return {"loss": loss, "outputs": outputs}

    def forward_loss(self, model: nn.Module, inputs: Any, targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(prediction, loss): the model's prediction (see `model_output`) and the loss it returned
        itself, or the task's loss on the prediction."""
        raw = model(inputs)
        return self.select_output(raw)[0], self.output_loss(raw, targets)

    def output_loss(self, raw: Any, targets: Any) -> torch.Tensor:
        """The loss of what the model returned (a tensor, dict, ModelOutput or tuple)."""
        outputs, own_loss = self.select_output(raw)
        return own_loss if own_loss is not None else self.task_loss(outputs, targets)

    def task_loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        """The loss as the task sees outputs and targets (e.g. flattened positions for sequences)."""
        return self.loss_fn(*self.task.loss_view(outputs, targets))

    def _end_epoch(self, val_batches: Any, seconds: float) -> None:
        state = self.state
        self._log_train()
        if val_batches is not None:
            self._validate(val_batches)
        state.metrics["epoch_time_s"] = seconds
        state.history.append({"epoch": state.epoch + 1, "step": state.step, **state.metrics})
        if self.scheduler is not None and self.scheduler_interval == "epoch":
            self.scheduler.step()  # before callbacks, so a checkpoint saved there holds the next LR
        self._call("on_epoch_end")
        state.epoch += 1
        state.position = 0
        self.train_metrics.end_epoch()

    def _validate(self, val_batches: Any) -> None:
        """Evaluate into `state.metrics` (val_*); a plateau schedule reads the monitored metric."""
        validate(self, val_batches)
        self._call("on_eval_end")

    def _may_step(self, loss: torch.Tensor) -> bool:
        """The guard's verdict, one host read; under DDP all ranks agree on it and on stop requests."""
        if self.dist is not None:
            return self.dist.agree_step(self.state, self.guard.flag(loss))
        return self.guard.passes(loss)

    def evaluate(self, data: Any, collect: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict[str, float]:
        """Loss and the task's metrics over `data`, each sample counted once; with `collect`, each
        batch's `(outputs, targets)` is appended to it (on the CPU)."""
        self.setup(for_training=False)
        return evaluate_batches(self, self.batches(data, train=False), collect)

    def predict(self, inputs: torch.Tensor | Any) -> torch.Tensor:
        """The model's outputs for `inputs` (a tensor, batched here), gathered on the CPU."""
        self.setup(for_training=False)
        return predict_outputs(self, inputs)

    def state_dict(self, all_ranks: bool = True) -> dict[str, Any]:
        """Everything a run needs to go on exactly but the weights (the Checkpointer saves those from
        `trainer.model`), loadable with `weights_only=True`. Under DDP with `all_ranks` (a collective)
        the open log interval's sums are those of all ranks, so it resumes on any number of processes."""
        state = self.state.state_dict()
        epoch_ended = state["position"] >= state["steps_per_epoch"] > 0
        if epoch_ended:  # saved at an epoch's end: resume at the next one's start
            state["epoch"], state["position"] = state["epoch"] + 1, 0
        return {
            "trainer": state,
            **self.train_metrics.state_dict(self.dist if all_ranks else None, epoch_ended),
            "optimizer": self.optimizer.state_dict() if self.optimizer else {},
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "callbacks": callback_states(self.callbacks),
            "rng": capture_rng_state(),
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restore what `state_dict` returned into a set-up trainer (optimizer and scheduler built)."""
        state = self.state
        state.load_state_dict(saved["trainer"])
        # How the earlier process ended is not state to go on from; limits come from the current config.
        state.stop_requested, state.stop_reason, state.stop_signal, state.status = False, "", "", "running"
        self._set_limits()
        self.train_metrics.load_state_dict(saved, self.device)
        if self.optimizer is not None and saved["optimizer"]:
            self.optimizer.load_state_dict(saved["optimizer"])
        if self.scheduler is not None and saved["scheduler"]:
            self.scheduler.load_state_dict(saved["scheduler"])
        if self.scaler is not None and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        load_callback_states(self.callbacks, saved["callbacks"])
        restore_rng_state(saved["rng"])

    def restore(self, checkpoint: Checkpoint) -> None:
        """The checkpoint's weights and training state, so training goes on exactly from it."""
        self.model.load_state_dict(checkpoint.model_state)
        self.load_state_dict(checkpoint.training_state)

    def checkpoint_source(self, purpose: str) -> CheckpointSource:
        """The callback that finds checkpoints (a run directory's Checkpointer), for resume and rollback."""
        source = next((c for c in self.callbacks if isinstance(c, CheckpointSource)), None)
        if source is None:
            raise UsageError(f"{purpose} needs a Checkpointer callback (a run directory) to find checkpoints in")
        return source

    def setup(self, for_training: bool = True) -> None:
        """Move the model to the device and build optimizer, schedule and compiled view once."""
        if self.optimizer is None:
            self.model.to(self.device)
            if self.config.channels_last:
                self.model.to(memory_format=torch.channels_last)
            if self.config.deterministic:
                torch.use_deterministic_algorithms(True, warn_only=True)
            compiled: Any = torch.compile(self.model) if self.config.compile else self.model
            self.forward_model = self.eval_model = compiled
        if not for_training:
            return
        if self.dist is not None and self.forward_model is self.eval_model:
            self.forward_model = self.dist.wrap(self.model, self.config.compile)  # DDP for this fit
        if self.optimizer is None:
            self._setup_training()

    def _setup_training(self) -> None:
        self._params = list(self.model.parameters())  # listed once: walking the modules costs per step
        self._generator = default_generator(self.device)
        # In-memory data already lives on the device in its final layout: no per-step move.
        self._batches_ready = getattr(self.train_batches, "on_device", False) and not self.config.channels_last
        self._set_limits()
        self.optimizer = build_optimizer(self._optimizer_spec, self.model, self.optim_config, self.config.batch_size)
        spec, own, monitor = self._scheduler_spec, self._own_schedule, self.config.monitor
        self.scheduler, self.scheduler_interval = schedule_for(
            spec, own, self.optim_config, self.optimizer, self.state.total_steps, monitor
        )
        self.scaler = make_scaler(self.config.precision, self.device, self.optimizer)
        buffers = list(self.model.buffers())
        self.guard.setup(self._params, self.device, self.optimizer, buffers, scaled=self.scaler is not None)

    def _set_limits(self) -> None:  # the run's length from the current config: a resumed run may be extended
        state = self.state
        state.max_epochs, state.max_steps = self.config.max_epochs, self.config.max_steps
        state.steps_per_epoch = len(self.train_batches) if self.train_batches is not None else 0

    def batches(self, data: Any, train: bool, size: int | None = None) -> Any:
        """`data` (tensors, Dataset, DataLoader, in-memory source) as the Trainer iterates it; `size`: other batches."""
        cfg, (rank_, world) = self.config, (self.dist.rank, self.dist.world_size) if self.dist else (0, 1)
        batch, grouped = (cfg.batch_size, cfg.group_by_length) if train else (cfg.eval_batch_size, False)
        where: dict[str, Any] = {"device": self.device, "rank": rank_, "world_size": world, "group_by_length": grouped}
        return make_batches(data, batch_size=size or batch, train=train, seed=cfg.seed, **where)

    def to_device(self, value: Any) -> Any:
        """A batch's inputs or targets (nested tensors too) on the training device, in its layout."""
        return to_device(value, self.device, self.config.channels_last)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.config.precision, self.device)

    def seed_step(self) -> None:
        """Seed dropout from (seed, step) on the device's generator (torch.manual_seed would reseed
        every backend, dearer than a small step); under DDP each rank draws its own masks."""
        counters = (3, self.state.step) if self.dist is None else (3, self.state.step, self.dist.rank)
        self._generator.manual_seed(derive_seed(self.config.seed, *counters))

    def _release_ddp(self) -> None:
        # DDP lives for one fit: its reducer holds the process group in reference cycles, whose
        # teardown at the interpreter's exit can abort the process (seen with gloo).
        if self.forward_model is not self.eval_model:
            self.forward_model = self.eval_model
            gc.collect()

    def _clock(self) -> float:  # updates state.train_time_s; the seconds spent in this epoch
        seconds = time.perf_counter() - self._epoch_clock[0]
        self.state.train_time_s = self._epoch_clock[1] + seconds
        return seconds

    def _log_train(self) -> None:
        """Read the device-side sums (one sync) into `state.metrics` as train_*."""
        self._clock()
        interval = self.train_metrics.read(self.dist)
        self.state.metrics.update(self.train_metrics.epoch_means())
        self.state.last_loss = interval.get("loss", self.state.last_loss)
        lr = self.optimizer.param_groups[0]["lr"] if self.optimizer else 0.0
        self.state.metrics.update(lr=lr, grad_norm=float(self.grad_norm))

    def parameters_changed(self) -> None:
        """Call after changing which parameters require gradients during `fit` (`FineTune` does):
        under DDP the wrapper is rebuilt, as it reduces only the gradients that trained when built."""
        if self.dist is not None and self.forward_model is not self.eval_model:
            self._release_ddp()
            self.forward_model = self.dist.wrap(self.model, self.config.compile)

    def inference_weights(self) -> contextlib.AbstractContextManager[nn.Module]:
        """Within the block the model holds the weights evaluation uses (its own, or an EMA's)."""
        return inference_weights(self.callbacks, self.model)

    def _repr_html_(self) -> str:  # a notebook shows a trainer as its results: headline and curves
        return results_html(self.state)

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)
