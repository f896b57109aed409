"""BatchNorm running statistics are guarded like weights: a refused step leaves them as they were."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import all_finite
from safetensors.torch import load_file
from torch import nn

from torchsmith import Trainer
from torchsmith.callbacks.checkpointer import Checkpointer
from torchsmith.errors import TrainingFailure


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def data_with_a_nan_row(row: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 4, generator=generator)
    inputs[row, 2] = float("nan")
    return inputs, torch.randint(0, 3, (64,), generator=generator)


class Boom(nn.Module):
    """log of a value that goes negative: NaN born inside the model, before the BatchNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


def test_skip_keeps_running_statistics_finite_and_evaluation_finite() -> None:
    model = bn_model()
    trainer = Trainer(model, loss="cross_entropy", optimizer="sgd", max_epochs=2, batch_size=8, on_nan="skip")
    trainer.fit(data_with_a_nan_row())
    assert trainer.state.skipped_steps == 2  # the batch holding the bad row, once per epoch
    assert all_finite(model.state_dict())
    clean = torch.randn(32, 4), torch.randint(0, 3, (32,))
    metrics = trainer.evaluate(clean)
    assert torch.isfinite(torch.tensor(metrics["loss"]))


def test_stop_saves_a_finite_last_checkpoint(tmp_path: Path) -> None:
    model = bn_model()
    checkpointer = Checkpointer(tmp_path, {}, every_steps=None)
    trainer = Trainer(
        model, loss="cross_entropy", optimizer="sgd", max_epochs=1, batch_size=8, callbacks=[checkpointer]
    )
    with pytest.raises(TrainingFailure, match="non-finite input"):
        trainer.fit(data_with_a_nan_row())
    saved = load_file(str(tmp_path / "checkpoints" / "last" / "model.safetensors"))
    assert "1.running_mean" in saved and all_finite(saved)
    assert torch.equal(saved["1.num_batches_tracked"], torch.tensor(trainer.state.step))  # the bad step not counted


def test_the_doctor_names_the_layer_not_the_poisoned_statistics() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), Boom(), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    nn.init.constant_(model[0].bias, 5.0)  # log's input positive at first...
    inputs, targets = torch.randn(64, 4), torch.randint(0, 3, (64,))
    inputs[40:48] *= 100  # ...until one batch drives it negative
    trainer = Trainer(model, loss="cross_entropy", optimizer="sgd", max_epochs=1, batch_size=8, seed=0)
    with pytest.raises(TrainingFailure):
        trainer.fit((inputs, targets))
    event = trainer.state.nan_events[0]
    assert event["stage"] == "forward" and event["module"] == "1", event
    assert all_finite(model.state_dict())


def test_a_checkpoint_with_non_finite_buffers_is_not_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = bn_model()
    checkpointer = Checkpointer(tmp_path, {}, every_steps=1)
    trainer = Trainer(model, loss="cross_entropy", optimizer="sgd", max_steps=1, batch_size=8, callbacks=[checkpointer])
    trainer.fit(data_with_a_nan_row(row=63))  # guard passes the first steps; then poison the statistics
    model[1].running_var.fill_(float("nan"))
    assert checkpointer.save(trainer, "last") is None
    assert "non-finite values in 1.running_var" in capsys.readouterr().err
    assert all_finite(load_file(str(tmp_path / "checkpoints" / "last" / "model.safetensors")))
