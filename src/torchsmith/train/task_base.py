"""The `Task` protocol: how a model's outputs meet the targets, for the loss and for the metrics.

A task turns a batch's `(outputs, targets)` into

- the loss's view of them (`loss_view`), and the number of loss terms it averages (`count`);
- integer or float64 *sums* on the device (`hits`, `stats`): confusion counts, sums of errors and
  squares, score histograms. The Trainer adds them up over batches and, under DDP, over processes,
  so a metric never is an average of per-batch values: any batch size and any number of processes
  give the same value;
- the metrics from those sums (`summarize`), once per log interval or evaluation.

Write your own by subclassing `Task` and passing it as `Trainer(..., task=MyTask())`; see
docs/tasks.md for a worked example.

Example:
    >>> class MeanAbsoluteError(Task):
    ...     name, default_loss = "my_regression", "l1"
    ...     metric_names = default_metrics = ("mae",)
    ...     def stats(self, outputs, targets):
    ...         return {"abs_err": (outputs.squeeze(1) - targets).abs().double().sum()}
    ...     def summarize(self, loss, totals, count):
    ...         return {"loss": loss, "mae": totals["abs_err"] / count}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from torchsmith.errors import UsageError, did_you_mean

SCORE_BINS = 1000  # histogram bins of a probability in [0, 1] (AUROC and average precision)


class Task:
    """Decides the loss's view of outputs and targets and the metrics, as sums on the device.

    Override what your task needs; every method has a working default:

    - `loss_view(outputs, targets) -> (outputs, targets)` as the loss function takes them;
    - `count(targets) -> int`: how many terms the batch's mean loss averages over;
    - `hits(outputs, targets) -> bool tensor | None`: per target whether it is right (`accuracy`);
    - `stats(outputs, targets) -> {name: tensor}`: further sums (any shape; exact when integer or
      float64), added over batches and processes under their names;
    - `summarize(loss, totals, count) -> {metric: float}` from the sums (a 0-d sum arrives as a
      float, a larger one as a float64 CPU tensor).

    `metric_names` are the metrics `--metrics` may choose; `default_metrics` those computed when
    it chooses none; `self.selected` is what was chosen (`stats` may skip what is not in it).
    """

    name = "task"
    default_loss = "cross_entropy"
    metric_names: tuple[str, ...] = ()
    default_metrics: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.selected: tuple[str, ...] = self.default_metrics

    def select(self, names: Sequence[str]) -> None:
        """Compute these metrics (names from `metric_names`); an empty selection keeps the defaults."""
        unknown = [name for name in names if name not in self.metric_names]
        if unknown:
            hint = did_you_mean(unknown[0], self.metric_names)
            known = ", ".join(self.metric_names) or "none besides the loss"
            raise UsageError(
                f"--metrics: the {self.name} task has no metric '{unknown[0]}'.{hint} Its metrics: {known}"
            )
        if names:
            self.selected = tuple(dict.fromkeys(names))

    def knows(self, metric: str) -> bool:
        """Whether `metric` (without a train_/val_ prefix) is one this task can report."""
        return metric == "loss" or metric in self.metric_names

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

    def summarize(self, loss: float, totals: dict[str, Any], count: int) -> dict[str, float]:
        return {"loss": loss}


def sum_dtype(device: torch.device) -> torch.dtype:
    """float64 for float sums (exact enough in any grouping); MPS has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def score_histogram(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Counts (C, 2, SCORE_BINS) of scores in [0, 1] (B, C) by column, target (0/1) and bin: one
    bincount. Integer counts: exact over batches and processes."""
    columns = scores.shape[1]
    bins = (scores.float().clamp(0, 1) * SCORE_BINS).long().clamp_(max=SCORE_BINS - 1)  # (B, C)
    column = torch.arange(columns, device=scores.device).expand_as(bins)
    index = (column * 2 + positive.long()) * SCORE_BINS + bins
    return torch.bincount(index.reshape(-1), minlength=columns * 2 * SCORE_BINS).view(columns, 2, SCORE_BINS)


def auroc_from_histogram(histogram: torch.Tensor) -> torch.Tensor:
    """Per column, the area under the ROC curve from (C, 2, BINS) counts; ties within a bin count
    one half (as scikit-learn counts tied scores). NaN where a column lacks positives or negatives."""
    negatives, positives = histogram[:, 0].double(), histogram[:, 1].double()
    below = negatives.cumsum(dim=1) - negatives  # negatives scored strictly lower
    pairs = (positives * (below + 0.5 * negatives)).sum(dim=1)
    total = positives.sum(dim=1) * negatives.sum(dim=1)
    return torch.where(total > 0, pairs / total.clamp_min(1), torch.nan)


def average_precision_from_histogram(histogram: torch.Tensor) -> torch.Tensor:
    """Per column, average precision (scikit-learn's step-wise sum over thresholds) from (C, 2, BINS)
    counts, thresholds at the bins from the highest down. NaN where a column has no positive."""
    negatives, positives = histogram[:, 0].double().flip(1), histogram[:, 1].double().flip(1)
    true_positives = positives.cumsum(dim=1)
    predicted = (positives + negatives).cumsum(dim=1)
    precision = true_positives / predicted.clamp_min(1)
    total = positives.sum(dim=1)
    return torch.where(total > 0, (positives * precision).sum(dim=1) / total.clamp_min(1), torch.nan)


def f1_scores(
    true_positives: torch.Tensor, false_positives: torch.Tensor, false_negatives: torch.Tensor
) -> torch.Tensor:
    """Per column F1 = 2TP / (2TP + FP + FN), 0 where nothing was predicted or present."""
    tp, fp, fn = (v.double() for v in (true_positives, false_positives, false_negatives))
    denominator = 2 * tp + fp + fn
    return torch.where(denominator > 0, 2 * tp / denominator.clamp_min(1), 0.0)


def nanmean(values: torch.Tensor) -> float:
    kept = values[~values.isnan()]
    return float(kept.mean()) if kept.numel() else float("nan")


def metric_label(name: str) -> str:
    """A class or column name as part of a metric name (`f1_<label>`): letters, digits, `_`, `-`."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(name))


def configure_metrics(task: Task, metrics: str | Sequence[str], monitor: str) -> None:
    """Select `--metrics` (comma-separated names, empty for the task's defaults) and check that
    `train.monitor` names a metric the run reports; a monitored metric is computed even when
    `--metrics` leaves it out. Raises UsageError before training otherwise."""
    names = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else list(metrics)
    task.select([name for name in names if name])
    split, _, metric = monitor.partition("_")
    if split not in ("train", "val") or not metric:
        raise UsageError(f"train.monitor must be train_<metric> or val_<metric> (e.g. val_loss), got '{monitor}'")
    if metric in task.metric_names and metric not in task.selected:
        task.selected = (*task.selected, metric)
    elif task.metric_names and not task.knows(metric):
        known = [f"{split}_{name}" for name in ("loss", *task.metric_names)]
        hint = did_you_mean(monitor, known)
        raise UsageError(
            f"train.monitor '{monitor}' is no metric of the {task.name} task.{hint} Known: {', '.join(known)}; "
            f"e.g. --set train.monitor={known[-1]}"
        )
