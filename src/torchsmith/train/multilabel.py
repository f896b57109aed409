"""Multi-label: targets (B, C) of 0/1, one logit per label (B, C), binary cross entropy per label.

Metrics from integer counts: per label true/false positives and false negatives at a threshold
(per-label, macro and micro F1), exact matches, and per-label score histograms for mAP (mean
average precision) and macro AUROC.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from torchsmith.errors import UsageError
from torchsmith.train.task_base import (
    Task,
    auroc_from_histogram,
    average_precision_from_histogram,
    f1_scores,
    metric_label,
    nanmean,
    score_histogram,
)


class MultiLabel(Task):
    """Example:
    >>> task = MultiLabel(names=["cat", "animal"], threshold=0.5)
    >>> totals = task.stats(torch.tensor([[2.0, 3.0], [-1.0, 1.0]]), torch.tensor([[1, 1], [1, 1]]))
    >>> task.summarize(0.1, {k: v.double() for k, v in totals.items()}, 2)["f1_cat"]
    0.666...
    """

    name = "multilabel"
    default_loss = "bce_with_logits"
    metric_names = ("f1_macro", "f1_micro", "f1_per_label", "map", "auroc", "exact_match")
    default_metrics = ("f1_macro", "f1_micro", "f1_per_label", "map")

    def __init__(self, names: Sequence[str] | None = None, threshold: float = 0.5) -> None:
        super().__init__()
        if not 0 < threshold < 1:
            raise UsageError(f"the multi-label threshold must be in (0, 1), got {threshold}")
        self.names = [metric_label(n) for n in names or []]
        self.threshold = threshold
        self.logit_threshold = math.log(threshold / (1 - threshold))  # sigmoid(x) > t  <=>  x > logit(t)

    def knows(self, metric: str) -> bool:
        return super().knows(metric) or metric.removeprefix("f1_") in self.names

    def loss_view(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return outputs, targets.to(outputs.dtype)

    def count(self, targets: torch.Tensor) -> int:
        return targets.shape[0]

    def stats(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        positive = targets > 0.5  # (B, C)
        predicted = outputs > self.logit_threshold
        out = {
            "tp": (predicted & positive).sum(dim=0),
            "fp": (predicted & ~positive).sum(dim=0),
            "fn": (~predicted & positive).sum(dim=0),
        }
        if "exact_match" in self.selected:
            out["exact"] = (predicted == positive).all(dim=1).sum()
        if {"map", "auroc"} & set(self.selected):
            out["scores"] = score_histogram(outputs.float().sigmoid(), positive)
        return out

    def summarize(self, loss: float, totals: dict[str, Any], count: int) -> dict[str, float]:
        out = {"loss": loss}
        if "tp" not in totals:
            return out
        tp, fp, fn = (torch.as_tensor(totals[k], dtype=torch.float64).reshape(-1) for k in ("tp", "fp", "fn"))
        per_label = f1_scores(tp, fp, fn)
        chosen = set(self.selected)
        if "f1_macro" in chosen:
            out["f1_macro"] = float(per_label.mean())
        if "f1_micro" in chosen:
            out["f1_micro"] = float(f1_scores(tp.sum(), fp.sum(), fn.sum()))
        if "f1_per_label" in chosen:
            names = self.names if len(self.names) == tp.numel() else [str(i) for i in range(tp.numel())]
            out.update({f"f1_{name}": float(v) for name, v in zip(names, per_label.tolist(), strict=True)})
        if "exact" in totals:
            out["exact_match"] = float(totals["exact"]) / max(count, 1)
        if "scores" in totals:
            if "map" in chosen:  # over the labels that have a positive sample
                out["map"] = nanmean(average_precision_from_histogram(totals["scores"]))
            if "auroc" in chosen:
                out["auroc"] = nanmean(auroc_from_histogram(totals["scores"]))
        return out
