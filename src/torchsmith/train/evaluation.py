"""Evaluation for the Trainer: loss and metrics over a split, each sample counted once, and the
inputs of `predict` batched on the device. Read-only: these use the trainer's evaluation view
(`eval_model`), its loss, precision and device, and change nothing on it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchsmith.train.metrics import MetricAccumulator

if TYPE_CHECKING:
    from torchsmith.train.trainer import Trainer


def evaluate_batches(trainer: Trainer, batches: Any, collect: list[Any] | None = None) -> dict[str, float]:
    """Loss and the task's metrics over `batches`, each sample counted once (also under DDP)."""
    meter = MetricAccumulator(trainer.task)
    model = trainer.eval_model
    was_training = model.training
    model.eval()
    parts = []
    with torch.no_grad():
        for inputs, targets, indices in batches.epoch(0):
            inputs, targets = trainer.to_device(inputs), trainer.to_device(targets)
            with trainer.autocast():
                outputs, loss = _eval_forward(trainer, model, inputs, targets)
            meter.update(loss, outputs, targets)
            if collect is not None:
                parts.append((outputs.float().cpu(), targets.cpu(), indices))
    model.train(was_training)
    if trainer.dist is not None:  # each rank evaluated its slice of every batch: each sample once
        trainer.dist.reduce_meter(meter, agree_keys=True)
    if collect is not None:
        collect.extend(trainer.dist.gather_in_order(parts) if trainer.dist else [(o, t) for o, t, _ in parts])
    return meter.compute()


def validate(trainer: Trainer, val_batches: Any) -> None:
    """Evaluate with the inference weights into `state.metrics` as val_*; a plateau schedule then
    steps on the monitored metric."""
    state = trainer.state
    with trainer.inference_weights():
        for key, value in evaluate_batches(trainer, val_batches).items():
            state.metrics[f"val_{key}"] = value
    monitored = state.metrics.get(trainer.config.monitor)
    if trainer.scheduler is not None and trainer.scheduler_interval == "eval" and monitored is not None:
        trainer.scheduler.step(monitored)


def _eval_forward(trainer: Trainer, model: nn.Module, inputs: Any, targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if trainer.config.tta == "none":
        return trainer.forward_loss(model, inputs, targets)
    from torchsmith.train.tta import tta_predict

    outputs = tta_predict(model, inputs, trainer.config.tta)  # averaged logits over flipped/shifted views
    return outputs, trainer.task_loss(outputs, targets)


def iter_inputs(trainer: Trainer, inputs: Any) -> Iterator[torch.Tensor]:
    """The inputs of `inputs` (a tensor, batched here, or data the Trainer takes) on the device."""
    if isinstance(inputs, torch.Tensor):
        for start in range(0, inputs.shape[0], trainer.config.eval_batch_size):
            yield trainer.to_device(inputs[start : start + trainer.config.eval_batch_size])
    else:
        for inputs_batch, _, _ in trainer.batches(inputs, train=False).epoch(0):
            yield trainer.to_device(inputs_batch)


def predict_outputs(trainer: Trainer, inputs: Any) -> torch.Tensor:
    """The evaluation model's outputs for `inputs`, batch by batch, gathered on the CPU."""
    outputs = []
    trainer.model.eval()
    with torch.no_grad():
        for batch in iter_inputs(trainer, inputs):
            with trainer.autocast():
                outputs.append(trainer.select_output(trainer.eval_model(batch))[0].float().cpu())
    return torch.cat(outputs)
