"""Regression: float targets (B,) or (B, K), outputs (B,) / (B, 1) or (B, K).

Metrics from float64 sums of errors, squared errors, targets and squared targets: MAE, RMSE
and R^2 per output and their mean over the outputs (scikit-learn's `uniform_average`). When the
data standardised the targets, `mean` and `std` undo it, so the metrics are in the target's units.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from torchsmith.train.task_base import Task, metric_label, sum_dtype


class Regression(Task):
    """Example:
    >>> task = Regression()
    >>> task.summarize(0.5, {"abs_err": 2.0, "sq_err": 5.0, "t_sum": 3.0, "t_sq": 9.0}, 2)["mae"]
    1.0
    """

    name = "regression"
    default_loss = "mse"
    metric_names = ("mae", "rmse", "mse", "r2")
    default_metrics = ("mae", "rmse", "r2")

    def __init__(
        self,
        names: Sequence[str] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.names = [metric_label(n) for n in names or []]
        self.mean, self.std = mean, std
        self._scale: tuple[torch.Tensor, torch.Tensor] | None = None

    def knows(self, metric: str) -> bool:
        base, _, label = metric.partition("_")
        return super().knows(metric) or (base in self.metric_names and label in self.names)

    def loss_view(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if outputs.dim() == 2 and outputs.shape[1] == 1 and targets.dim() == 1:
            outputs = outputs.squeeze(1)  # (B, 1) -> (B,): no silent (B, B) broadcast in the loss
        return outputs, targets.to(outputs.dtype)

    def stats(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        dtype = sum_dtype(outputs.device)
        predicted, true = (v.to(dtype) for v in self.loss_view(outputs, targets))
        predicted, true = predicted.reshape(true.shape[0], -1), true.reshape(true.shape[0], -1)  # (B, K)
        if self.mean is not None and self.std is not None:
            shift, scale = self._units(predicted)
            predicted, true = predicted * scale + shift, true * scale + shift
        error = predicted - true
        return {
            "abs_err": error.abs().sum(dim=0),
            "sq_err": error.square().sum(dim=0),
            "t_sum": true.sum(dim=0),
            "t_sq": true.square().sum(dim=0),
        }

    def _units(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._scale is None or self._scale[0].device != like.device:
            shift = torch.tensor(self.mean, dtype=like.dtype, device=like.device)
            self._scale = (shift, torch.tensor(self.std, dtype=like.dtype, device=like.device))
        return self._scale

    def summarize(self, loss: float, totals: dict[str, Any], count: int) -> dict[str, float]:
        out = {"loss": loss}
        if "sq_err" not in totals or count == 0:
            return out
        sums = {
            k: torch.as_tensor(totals[k], dtype=torch.float64).reshape(-1)
            for k in ("abs_err", "sq_err", "t_sum", "t_sq")
        }
        variance = sums["t_sq"] - sums["t_sum"].square() / count  # total sum of squares per output
        per_output = {
            "mae": sums["abs_err"] / count,
            "mse": sums["sq_err"] / count,
            "rmse": (sums["sq_err"] / count).sqrt(),
            # a constant target: R^2 is 1 for a perfect fit, else 0 (scikit-learn's convention)
            "r2": torch.where(
                variance > 0, 1 - sums["sq_err"] / variance.clamp_min(1e-300), (sums["sq_err"] == 0).double()
            ),
        }
        names = self.names if len(self.names) == variance.numel() else [str(i) for i in range(variance.numel())]
        for metric in self.selected:
            values = per_output[metric]
            out[metric] = float(values.mean())
            if values.numel() > 1:
                out.update({f"{metric}_{name}": float(v) for name, v in zip(names, values.tolist(), strict=True)})
        return out
