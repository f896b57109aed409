"""Tasks decide how outputs meet targets: the loss's view of them and the metrics.

Classification: one label per sample, outputs (B, C) -> cross entropy, accuracy.
Sequence: one target per position, outputs (B, T, V) -> per-position cross entropy,
perplexity, and loss and bits per character. The Trainer never assumes "one label per sample".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from torchsmith.config import TASK_NAMES
from torchsmith.errors import UsageError, did_you_mean

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LOSSES: dict[str, Callable[[], nn.Module]] = {
    "cross_entropy": nn.CrossEntropyLoss,
    "nll": nn.NLLLoss,
    "mse": nn.MSELoss,
    "l1": nn.L1Loss,
    "smooth_l1": nn.SmoothL1Loss,
    "bce_with_logits": nn.BCEWithLogitsLoss,
}


def resolve_loss(loss: str | LossFn | nn.Module | None, label_smoothing: float = 0.0) -> LossFn:
    """A loss module, a callable `(outputs, targets) -> loss`, or a name from LOSSES."""
    if loss is None or loss == "cross_entropy":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if isinstance(loss, str):
        if loss not in LOSSES:
            hint = did_you_mean(loss, LOSSES)
            raise UsageError(f"unknown loss '{loss}'.{hint} Known losses: {', '.join(LOSSES)}")
        return LOSSES[loss]()
    if not callable(loss):
        raise TypeError(f"loss must be a name, an nn.Module or a callable, got {type(loss).__name__}")
    return loss


class Task:
    """Turns a batch's outputs into the loss and into summed statistics on the device."""

    name = "task"

    def loss_view(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return outputs, targets

    def count(self, targets: torch.Tensor) -> int:
        """How many loss terms the batch's mean loss averages over."""
        return targets.shape[0]

    def hits(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        """Per target, whether the prediction is right (summed as `correct`); None if undefined."""
        return None

    def stats(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Further per-batch sums, added up on the device under their names."""
        return {}

    def summarize(self, loss: float, totals: dict[str, float], count: int) -> dict[str, float]:
        return {"loss": loss}

    def metric_names(self) -> tuple[str, ...]:
        """The names `summarize` returns (what train.monitor may name, after train_/val_)."""
        return tuple(self.summarize(1.0, {"correct": 0.0}, 1))


class Classification(Task):
    name = "classification"

    def hits(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        if outputs.dim() != 2 or targets.dim() not in (1, 2):
            return None
        if targets.dim() == 2:  # soft targets (mixup, cutmix): the class with the largest share
            targets = targets.argmax(dim=1)
        return outputs.argmax(dim=1) == targets

    def summarize(self, loss: float, totals: dict[str, float], count: int) -> dict[str, float]:
        out = {"loss": loss}
        if "correct" in totals:
            out["accuracy"] = totals["correct"] / max(count, 1)
        return out


class MultiLabel(Task):
    """Several labels per sample: outputs (B, C) logits, targets (B, C) multi-hot.

    `accuracy` is the fraction of samples whose every label is right (logit > 0 where the
    target is 1); `label_accuracy` the fraction of right (sample, label) decisions.
    """

    name = "multilabel"

    def hits(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        return ((outputs > 0) == (targets > 0.5)).all(dim=1)

    def stats(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        right = ((outputs > 0) == (targets > 0.5)).sum()
        return {"label_correct": right, "label_count": torch.tensor(targets.numel(), device=targets.device)}

    def summarize(self, loss: float, totals: dict[str, float], count: int) -> dict[str, float]:
        out = {"loss": loss, "accuracy": totals.get("correct", 0.0) / max(count, 1)}
        if totals.get("label_count"):
            out["label_accuracy"] = totals["label_correct"] / totals["label_count"]
        return out


class Sequence(Task):
    """Next-token prediction. The loss is per token; `chars_per_token` (characters of text per
    token, 1 for a character model) also gives it per character (`loss_per_char`, nats, and
    `bits_per_char`), so models over different tokenizers compare on the same text."""

    name = "sequence"

    def __init__(self, chars_per_token: float = 1.0) -> None:
        if not chars_per_token > 0:
            raise UsageError(f"chars_per_token must be positive, got {chars_per_token}")
        self.chars_per_token = chars_per_token

    def loss_view(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1)  # (B*T, V), (B*T,)

    def count(self, targets: torch.Tensor) -> int:
        return targets.numel()

    def hits(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        return outputs.argmax(dim=-1) == targets

    def summarize(self, loss: float, totals: dict[str, float], count: int) -> dict[str, float]:
        per_char = loss / self.chars_per_token
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "loss_per_char": per_char,
            "bits_per_char": per_char / math.log(2),
            "accuracy": totals.get("correct", 0.0) / max(count, 1),
        }


TASKS: dict[str, type[Task]] = dict(zip(TASK_NAMES, (Classification, Sequence, MultiLabel), strict=True))


def task_for_data(task: str, preprocessing: dict[str, Any]) -> Task:
    """The task a dataset names, with what its preprocessing tells it (characters per token)."""
    if task == "sequence":
        return Sequence(float(preprocessing.get("chars_per_token", 1.0)))
    return resolve_task(task)


def resolve_task(task: str | Task) -> Task:
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise UsageError(f"unknown task '{task}'; known tasks: {', '.join(TASKS)}")
    return TASKS[task]()
