"""The NaN policies' limits: nan_max_skips, and rollback without any checkpoint to return to."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchsmith import Trainer
from torchsmith.errors import TrainingFailure


def data(bad_rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 4, generator=generator)
    inputs[bad_rows, 0] = float("nan")
    return inputs, torch.randint(0, 3, (64,), generator=generator)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_skip_gives_up_after_nan_max_skips() -> None:
    trainer = Trainer(
        model(), loss="cross_entropy", optimizer="sgd", max_epochs=1, batch_size=8, on_nan="skip", nan_max_skips=2
    )
    with pytest.raises(TrainingFailure, match="after 2 skipped steps"):
        trainer.fit(data(bad_rows=list(range(0, 64, 8))))  # every batch holds a bad row
    assert trainer.state.skipped_steps == 2 and len(trainer.state.nan_events) == 3


def test_skip_within_the_limit_completes_and_counts() -> None:
    trainer = Trainer(model(), loss="cross_entropy", optimizer="sgd", max_epochs=1, batch_size=8, on_nan="skip")
    trainer.fit(data(bad_rows=[5]))
    assert trainer.state.status == "completed" and trainer.state.skipped_steps == 1 and trainer.state.step == 7


def test_rollback_without_a_checkpoint_stops_and_says_why() -> None:
    trainer = Trainer(model(), loss="cross_entropy", optimizer="sgd", max_epochs=1, batch_size=8, on_nan="rollback")
    with pytest.raises(TrainingFailure, match="--on-nan rollback needs checkpoints"):
        trainer.fit(data(bad_rows=[5]))
    assert trainer.state.rollbacks == 0
