"""One optimizer step's forward and backward: gradient accumulation over micro-batches, the DDP
loss weight, and loss scaling for fp16 (GradScaler).

With `train.accumulate = N` the global batch (`--batch-size`) is cut into N micro-batches. Each
micro-batch's mean loss is weighted by its share of the batch's loss terms (samples, or target
tokens that the loss does not ignore), so the summed gradients are those of the whole batch's mean
loss: N micro-batches give the same update as one batch. Under DDP only the last micro-batch
synchronises the gradients (`no_sync` before it).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch

from torchsmith.train.optim import prime_fused_momentum

if TYPE_CHECKING:
    from torchsmith.train.trainer import Trainer

# (detached micro-batch loss, its outputs or None, its targets): what the train metrics add up
Part = tuple[torch.Tensor, Any, Any]


def split_batch(value: Any, parts: int) -> list[Any]:
    """A batch's inputs or targets (a tensor, or tuples/lists/dicts of them) cut into `parts` along dim 0."""
    if isinstance(value, torch.Tensor):
        return list(value.tensor_split(parts))
    if isinstance(value, (tuple, list)):
        columns = [split_batch(v, parts) for v in value]
        return [type(value)(column[i] for column in columns) for i in range(parts)]
    if isinstance(value, dict):
        split = {k: split_batch(v, parts) for k, v in value.items()}
        return [{k: v[i] for k, v in split.items()} for i in range(parts)]
    return [value] * parts


def loss_terms(trainer: Trainer, targets: Any) -> torch.Tensor | int:
    """How many terms a micro-batch adds to the batch's mean loss: its samples (or positions), less
    the targets the loss ignores (e.g. padding labelled with cross entropy's `ignore_index`)."""
    ignore = getattr(trainer.loss_fn, "ignore_index", None)
    if ignore is not None and isinstance(targets, torch.Tensor) and not targets.is_floating_point():
        return (targets != ignore).sum()  # a device tensor: no host sync
    return trainer.task.count(targets)


def forward_backward(trainer: Trainer, inputs: Any, targets: Any, weight: float) -> tuple[torch.Tensor, list[Part]]:
    """Forward and backward of one global batch (this rank's slice of it, `weight` its DDP loss factor);
    returns the batch's mean loss (detached) and the micro-batches' parts for the metrics."""
    model, scaler = trainer.forward_model, trainer.scaler
    parts = min(trainer.config.accumulate, len(targets)) if isinstance(targets, torch.Tensor) else 1
    if parts <= 1:
        out = trainer.train_step(model, (inputs, targets))
        loss = out["loss"] * weight if weight != 1.0 else out["loss"]
        (scaler.scale(loss) if scaler is not None else loss).backward()  # DDP averages over ranks here
        return out["loss"].detach(), [(out["loss"].detach(), out.get("outputs"), targets)]
    micro_inputs, micro_targets = split_batch(inputs, parts), split_batch(targets, parts)
    terms = [loss_terms(trainer, t) for t in micro_targets]
    total = sum(terms)
    batch_loss: torch.Tensor | float = 0.0
    done: list[Part] = []
    for i, (x, y) in enumerate(zip(micro_inputs, micro_targets, strict=True)):
        last = i == parts - 1
        no_sync = getattr(model, "no_sync", None)  # DDP: gradients sync on the last micro-batch only
        sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
        with sync:
            out = trainer.train_step(model, (x, y))
            share = terms[i] / total
            loss = out["loss"] * (share * weight)
            (scaler.scale(loss) if scaler is not None else loss).backward()
        micro_loss = out["loss"].detach()
        batch_loss = batch_loss + micro_loss * share
        done.append((micro_loss, out.get("outputs"), y))
    assert isinstance(batch_loss, torch.Tensor)
    return batch_loss, done


def make_scaler(precision: str, device: torch.device, optimizer: Any) -> Any:
    """A GradScaler for fp16 (its gradients underflow without loss scaling); None otherwise."""
    if precision != "fp16" or device.type not in ("cuda", "cpu", "xpu"):
        return None
    prime_fused_momentum(optimizer)  # the scaler may skip the very first step
    return torch.amp.GradScaler(device.type)
