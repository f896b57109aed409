"""The on-device guard (train.nan_check_every > 1) keeps the guard's promises: a NaN in the last
steps is read and reported, and the policies it cannot apply are refused before training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchsmith import Trainer
from torchsmith.errors import TrainingFailure, UsageError


def setup(check_every: int, **options: object) -> tuple[Trainer, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    inputs, targets = torch.randn(64, 4), torch.randint(0, 3, (64,))
    inputs[60, 1] = float("nan")
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    trainer = Trainer(
        model, loss="cross_entropy", optimizer="sgd", max_epochs=1, batch_size=8, nan_check_every=check_every, **options
    )
    return trainer, (inputs, targets)


def test_a_nan_after_the_last_check_is_reported_and_the_run_is_not_completed() -> None:
    trainer, data = setup(check_every=16)  # 8 steps: no check inside the loop at all
    with pytest.raises(TrainingFailure, match="Non-finite loss or gradient at step"):
        trainer.fit(data)
    if not trainer.guard.on_device:
        pytest.skip("no fused optimizer here: the guard checks every step")
    assert trainer.state.status == "failed" and len(trainer.state.nan_events) == 1
    assert all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters())


@pytest.mark.parametrize("policy", ["skip", "rollback"])
def test_policies_the_on_device_guard_cannot_apply_are_refused(policy: str) -> None:
    trainer, data = setup(check_every=4, on_nan=policy)
    try:
        trainer.fit(data)
    except UsageError as error:
        assert "--set train.nan_check_every=1" in str(error)
        assert trainer.state.step == 0  # refused before the first step
        return
    assert not trainer.guard.on_device, "an unfused optimizer checks every step, where every policy works"
