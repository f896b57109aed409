"""Whether a run's training step may be captured as a CUDA graph, and if not, why.

A captured step replays fixed kernels on fixed memory: it needs a CUDA device, batches of
one shape (in-memory data at a fixed batch size), an optimizer that keeps its step counter
on the device (`capturable=True` or fused), no `torch.compile` of its own and no loss
scaler reading the host. This module makes that decision from the run's settings alone,
before training, so that `train.capture` says once, in the log and in summary.json, why
capture is off. The decision is what the CPU can test; the capture itself needs a GPU.

Example:
    >>> decide(TrainConfig(), device=torch.device("cpu"), optimizer="adamw", in_memory=True).reason
    'no CUDA device (CUDA graphs need one)'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from torchsmith.config import TrainConfig
from torchsmith.errors import UsageError

# optimizers whose update can be recorded in a graph: a `capturable` or `fused` variant in torch
CAPTURABLE = ("sgd", "adam", "adamw", "adadelta", "rmsprop", "adamax", "nadam", "radam")


@dataclass(frozen=True)
class CaptureDecision:
    """`enabled`: the step may be captured; `reason`: why not (empty when it may)."""

    enabled: bool
    reason: str = ""

    def to_text(self) -> str:
        if self.enabled:  # the decision is made; the captured step itself is GPU work still to come
            return "graph capture: the step qualifies (it still runs eagerly in this version)"
        return f"graph capture off: {self.reason}"


def decide(config: TrainConfig, *, device: torch.device, optimizer: Any, in_memory: bool) -> CaptureDecision:
    """The capture decision for `train.capture` (true, false, "auto") from the run's settings.

    `optimizer`: its name, or the optimizer object or factory the user passed; `in_memory`:
    whether the training batches come from an in-memory source at a fixed batch size (a
    DataLoader or Dataset may give batches of any shape). With `capture=true`, a reason to stay
    off is a UsageError; with "auto", it is the decision's `reason`.
    """
    if config.capture is False:
        return CaptureDecision(False, "train.capture is false")
    reason = reason_off(config, device, optimizer, in_memory)
    if reason and config.capture is True:
        raise UsageError(f"train.capture=true, but the step cannot be captured: {reason}. Use --set train.capture=auto")
    return CaptureDecision(not reason, reason)


def reason_off(config: TrainConfig, device: torch.device, optimizer: Any, in_memory: bool) -> str:
    """The first reason the step cannot be captured, or ''."""
    name = optimizer.lower() if isinstance(optimizer, str) else type(optimizer).__name__.lower()
    if device.type != "cuda":
        return "no CUDA device (CUDA graphs need one)"
    if not in_memory:
        return "batches come from a DataLoader or Dataset, whose shapes may change from batch to batch"
    if config.group_by_length:
        return "train.group_by_length gives batches of different lengths (dynamic shapes)"
    if name not in CAPTURABLE:
        shown = optimizer if isinstance(optimizer, str) else type(optimizer).__name__
        return f"optimizer {shown} has no capturable or fused variant (use sgd, adam or adamw)"
    if config.compile:
        return "torch.compile is on (its mode='reduce-overhead' captures graphs itself)"
    if config.precision == "fp16":
        return "fp16 needs a loss scaler that reads the host every step (use bf16)"
    return ""
