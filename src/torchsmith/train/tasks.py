"""Tasks decide how outputs meet targets: the loss's view of them and the metrics.

Classification: one label per sample, outputs (B, C) -> cross entropy; accuracy, top5, macro
F1/precision/recall (confusion counts), AUROC (score histograms).
Sequence: one target per position, outputs (B, T, V) -> per-position cross entropy,
perplexity and bits per character.
Regression and multi-label: see train/regression.py and train/multilabel.py.
The Trainer never assumes "one label per sample"; the protocol is in train/task_base.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from collections.abc import Sequence as Names
from typing import Any

import torch
from torch import nn

from torchsmith.config import TASK_NAMES
from torchsmith.data.bundle import DataInfo
from torchsmith.errors import UsageError, did_you_mean
from torchsmith.train.multilabel import MultiLabel
from torchsmith.train.regression import Regression
from torchsmith.train.task_base import (
    Task,
    auroc_from_histogram,
    f1_scores,
    nanmean,
    score_histogram,
)

__all__ = ["LOSSES", "TASKS", "LossFn", "Task", "resolve_loss", "resolve_task", "task_for_data"]

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


class Classification(Task):
    name = "classification"
    metric_names = ("accuracy", "top5", "f1_macro", "precision_macro", "recall_macro", "auroc")
    default_metrics = ("accuracy",)

    def hits(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        if outputs.dim() != 2 or targets.dim() not in (1, 2):
            return None
        if targets.dim() == 2:  # soft targets (mixup, cutmix): the class with the largest share
            targets = targets.argmax(dim=1)
        return outputs.argmax(dim=1) == targets

    def stats(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        if outputs.dim() != 2 or targets.dim() != 1:
            return {}
        chosen, classes, out = set(self.selected), outputs.shape[1], {}
        if "top5" in chosen:
            top = outputs.topk(min(5, classes), dim=1).indices  # (B, 5)
            out["top5"] = (top == targets[:, None]).any(dim=1).sum()
        if chosen & {"f1_macro", "precision_macro", "recall_macro"}:
            cells = targets * classes + outputs.argmax(dim=1)  # (true, predicted) pairs
            out["confusion"] = torch.bincount(cells, minlength=classes * classes)
        if "auroc" in chosen:
            positive = torch.nn.functional.one_hot(targets, classes)
            out["scores"] = score_histogram(outputs.float().softmax(dim=1), positive)
        return out

    def summarize(self, loss: float, totals: dict[str, Any], count: int) -> dict[str, float]:
        out = {"loss": loss}
        if "correct" in totals:
            out["accuracy"] = totals["correct"] / max(count, 1)
        if "top5" in totals:
            out["top5"] = totals["top5"] / max(count, 1)
        if "confusion" in totals:
            out.update(_confusion_metrics(totals["confusion"], self.selected))
        if "scores" in totals:
            areas = auroc_from_histogram(totals["scores"])
            # binary: the positive class's curve (scikit-learn's binary AUROC); else macro one-vs-rest
            out["auroc"] = float(areas[1]) if areas.numel() == 2 else nanmean(areas)
        return out


def _confusion_metrics(flat: torch.Tensor, selected: Names[str]) -> dict[str, float]:
    """Macro F1, precision and recall from (C*C) confusion counts, averaged over the classes that
    occur among targets or predictions (as scikit-learn averages)."""
    classes = math.isqrt(flat.numel())
    confusion = flat.view(classes, classes).double()
    tp = confusion.diagonal()
    predicted, present = confusion.sum(dim=0), confusion.sum(dim=1)
    seen = (predicted + present) > 0
    values = {
        "f1_macro": f1_scores(tp, predicted - tp, present - tp),
        "precision_macro": torch.where(predicted > 0, tp / predicted.clamp_min(1), 0.0),
        "recall_macro": torch.where(present > 0, tp / present.clamp_min(1), 0.0),
    }
    return {name: float(v[seen].mean()) if seen.any() else 0.0 for name, v in values.items() if name in selected}


class Sequence(Task):
    """Next-token prediction. The loss is per token; `chars_per_token` (characters of text per
    token, 1 for a character model) also gives it per character (`loss_per_char`, nats, and
    `bits_per_char`), so models over different tokenizers compare on the same text."""

    name = "sequence"
    metric_names = ("accuracy", "perplexity", "loss_per_char", "bits_per_char")
    default_metrics = metric_names

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

    def summarize(self, loss: float, totals: dict[str, Any], count: int) -> dict[str, float]:
        per_char = loss / self.chars_per_token
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "loss_per_char": per_char,
            "bits_per_char": per_char / math.log(2),
            "accuracy": totals.get("correct", 0.0) / max(count, 1),
        }


TASKS: dict[str, type[Task]] = dict(zip(TASK_NAMES, (Classification, Sequence, Regression, MultiLabel), strict=True))


def task_for_data(info: DataInfo) -> Task:
    """The task a dataset names, with its class or output names and its task options (a table's
    target scaling, which the regression metrics undo; a token model's characters per token)."""
    if info.task == "sequence":
        return Sequence(float(info.preprocessing.get("chars_per_token", 1.0)))
    return resolve_task(info.task, names=info.class_names, options=info.preprocessing.get("task_options"))


def resolve_task(task: str | Task, names: list[str] | None = None, options: dict[str, Any] | None = None) -> Task:
    """A task by name (with the class or output `names` and task `options` where it takes them), or
    the user's own `Task` as given."""
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise UsageError(f"unknown task '{task}'; known tasks: {', '.join(TASKS)}")
    kind = TASKS[task]
    if kind in (Regression, MultiLabel):
        return kind(names=names, **(options or {}))
    return kind()
