"""metrics.csv's train_loss is the mean over each log interval, not the epoch's running mean."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_mlp
from torch import nn

from torchsmith import Trainer
from torchsmith.callbacks import MetricsLogger


class LossRecorder(Trainer):
    """Records each step's loss (a host read per step: fine in a test)."""

    losses: list[tuple[int, float]]

    def train_step(self, model: nn.Module, batch: tuple[Any, Any]) -> dict[str, torch.Tensor]:
        out = super().train_step(model, batch)
        self.losses.append((self.state.step + 1, float(out["loss"].detach())))
        return out


def test_train_loss_rows_are_interval_means(blobs: Any, tmp_path: Path) -> None:
    trainer = LossRecorder(
        tiny_mlp(), max_epochs=2, batch_size=32, log_every=3, progress="none",
        callbacks=[MetricsLogger(tmp_path, tensorboard=False)],
    )  # fmt: skip
    trainer.losses = []
    history = trainer.fit(blobs)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    # 8 steps per epoch, logged every 3 steps and at each epoch's end: the intervals close at
    # steps 3, 6, 8 (epoch end), 9, 12, 15, 16 (epoch end)
    assert [int(r["step"]) for r in rows] == [3, 6, 8, 9, 12, 15, 16]
    bounds = [0, 3, 6, 8, 9, 12, 15, 16]
    for row, start, end in zip(rows, bounds[:-1], bounds[1:], strict=True):
        interval = [loss for step, loss in trainer.losses if start < step <= end]
        assert float(row["train_loss"]) == pytest.approx(sum(interval) / len(interval), rel=1e-6)
    # the epoch's own line (history, summary.json) is still the mean over the whole epoch
    epoch_two = [loss for step, loss in trainer.losses if step > 8]
    assert history[1]["train_loss"] == pytest.approx(sum(epoch_two) / 8, rel=1e-6)
    assert float(rows[-1]["train_loss"]) != pytest.approx(history[1]["train_loss"], rel=1e-6)


def test_an_epoch_ending_on_a_log_step_repeats_that_interval(blobs: Any, tmp_path: Path) -> None:
    trainer = LossRecorder(
        tiny_mlp(), max_epochs=1, batch_size=32, log_every=4, progress="none",
        callbacks=[MetricsLogger(tmp_path, tensorboard=False)],
    )  # fmt: skip
    trainer.losses = []
    trainer.fit(blobs)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [4, 8, 8]
    assert rows[1]["train_loss"] == rows[2]["train_loss"]  # the steps 5-8 interval, not steps 1-8
    assert float(rows[2]["train_loss"]) == pytest.approx(sum(loss for _, loss in trainer.losses[4:]) / 4, rel=1e-6)
