"""Predictions of regression and multi-label runs, with the same `top_k` rows as class predictions
so `torchsmith predict` prints and writes every kind alike."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ValuePrediction:
    """Regression values (N, K) in the target's own units, one column per target.

    Example:
        >>> ValuePrediction(torch.tensor([[151.5]]), ["target"]).top_k(1)
        [[('target', 151.5)]]
    """

    values: torch.Tensor  # (N, K) float
    names: list[str]

    def top_k(self, k: int = 1) -> list[list[tuple[str, float]]]:
        """Every output's (name, value) per input (`k` does not apply to values)."""
        return [list(zip(self.names, map(float, row), strict=True)) for row in self.values.tolist()]


@dataclass
class LabelPrediction:
    """Multi-label probabilities (N, C), each label on its own (sigmoid), and the run's threshold.

    Example:
        >>> p = LabelPrediction(torch.tensor([[0.9, 0.2, 0.7]]), ["cat", "dog", "animal"], 0.5)
        >>> p.labels
        [['cat', 'animal']]
    """

    probabilities: torch.Tensor  # (N, C) float in [0, 1]
    class_names: list[str]
    threshold: float = 0.5

    @property
    def labels(self) -> list[list[str]]:
        return [[label for label, _ in row] for row in self.top_k()]

    def top_k(self, k: int = 0) -> list[list[tuple[str, float]]]:
        """Per input, every label above the threshold, most probable first (`k` > 0 keeps at most k)."""
        out = []
        for row in self.probabilities.tolist():
            above = sorted(((p, i) for i, p in enumerate(row) if p > self.threshold), reverse=True)
            out.append([(self.class_names[i], p) for p, i in (above[:k] if k > 0 else above)])
        return out
