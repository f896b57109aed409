"""Exact resume: a stopped and resumed run equals the uninterrupted one, bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny_image_splits as data
from safetensors.torch import load_file
from torch import nn

from torchsmith import Trainer
from torchsmith.callbacks.base import Callback
from torchsmith.callbacks.checkpointer import Checkpointer
from torchsmith.config import OptimConfig
from torchsmith.data.order import BatchOrder

STEPS_PER_EPOCH = 6  # 90 samples, batch 16 (the last batch holds 10)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3), nn.Flatten(), nn.Linear(256, 3)
    )


class Record(Callback):
    def __init__(self, losses: list[float], stop_at: int | None = None) -> None:
        self.losses, self.stop_at = losses, stop_at

    def on_step_end(self, trainer: Trainer) -> None:
        self.losses.append(trainer.state.last_loss)
        if trainer.state.step == self.stop_at:
            trainer.state.request_stop("test stop")


def run(
    run_dir: Path, losses: list[float], stop_at: int | None = None, resume: bool = False, ema: bool = False
) -> Trainer:
    train, val = data()
    callbacks: list[Callback] = [Checkpointer(run_dir, {}, every_steps=None), Record(losses, stop_at)]
    if ema:
        from torchsmith.callbacks.ema import EMACallback

        callbacks.insert(0, EMACallback(decay=0.8))  # first, as make_callbacks puts it
    trainer = Trainer(
        model(),
        optimizer="adamw",
        optim=OptimConfig(lr=0.01, scheduler="cosine", warmup_steps=3),
        max_epochs=3,
        batch_size=16,
        log_every=1,
        progress="none",
        callbacks=callbacks,
    )
    trainer.fit(train, val, resume=resume)
    return trainer


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[float], dict[str, torch.Tensor], list]:
    losses: list[float] = []
    trainer = run(tmp_path_factory.mktemp("reference"), losses)
    assert len(losses) == 3 * STEPS_PER_EPOCH
    return losses, {k: v.clone() for k, v in trainer.model.state_dict().items()}, trainer.state.history


@pytest.mark.parametrize(
    "stop_at", [3, STEPS_PER_EPOCH, STEPS_PER_EPOCH + 1], ids=["mid-epoch", "epoch-end", "epoch-start"]
)
def test_resume_equals_uninterrupted(tmp_path: Path, reference, stop_at: int) -> None:
    expected_losses, expected_weights, expected_history = reference
    losses: list[float] = []
    first = run(tmp_path, losses, stop_at=stop_at)
    assert first.state.status == "stopped" and first.state.step == stop_at
    resumed = run(tmp_path, losses, resume=True)
    assert resumed.state.step == 3 * STEPS_PER_EPOCH
    assert losses == expected_losses  # every per-step loss, bitwise
    weights = resumed.model.state_dict()
    assert all(torch.equal(weights[k], expected_weights[k]) for k in expected_weights)
    assert resumed.state.history == [
        {**row, "epoch_time_s": resumed.state.history[i]["epoch_time_s"]} for i, row in enumerate(expected_history)
    ]


def test_negative_control_without_the_data_order(tmp_path: Path, reference, monkeypatch) -> None:
    """Resuming with a fresh shuffle (what epoch-level resume does) must break the equality."""
    expected_losses, _, _ = reference
    losses: list[float] = []
    run(tmp_path, losses, stop_at=3)
    original = BatchOrder.permutation
    monkeypatch.setattr(BatchOrder, "permutation", lambda self, epoch: original(self, epoch + 100))
    run(tmp_path, losses, resume=True)
    assert len(losses) == len(expected_losses) and losses != expected_losses


def test_resume_without_checkpoints_is_a_clear_error(tmp_path: Path) -> None:
    from torchsmith.errors import TrainingFailure

    with pytest.raises(TrainingFailure, match="checkpoint"):
        run(tmp_path, [], resume=True)


def _train(run_dir: Path, *extra: str) -> subprocess.Popen:
    # SimpleNet with batch 8: 1,800 short steps, so the signal lands mid-epoch.
    command = [
        sys.executable,
        "-m",
        "torchsmith",
        "train",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--checkpoint-every",
        "200",
        "--run-dir",
        str(run_dir),
        "--quiet",
        *extra,
    ]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )


def test_sigterm_saves_and_resume_reproduces_the_run(tmp_path: Path) -> None:
    reference = _train(tmp_path / "reference")
    assert reference.wait(timeout=600) == 0, reference.stderr.read() if reference.stderr else ""
    stopped_dir = tmp_path / "stopped"
    process = _train(stopped_dir)
    deadline = time.time() + 300
    while not (stopped_dir / "checkpoints" / "step-000200").exists():
        assert process.poll() is None and time.time() < deadline, "training ended before it could be stopped"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    summary = json.loads((stopped_dir / "summary.json").read_text())
    assert summary["status"] == "stopped" and 200 <= summary["steps"] < 1800
    resumed = subprocess.run(
        [sys.executable, "-m", "torchsmith", "train", "--run-dir", str(stopped_dir), "--resume", "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    expected = load_file(str(tmp_path / "reference" / "model.safetensors"))
    actual = load_file(str(stopped_dir / "model.safetensors"))
    assert all(torch.equal(actual[k], expected[k]) for k in expected)


def test_weight_average_is_evaluated_saved_and_resumed_exactly(tmp_path: Path) -> None:
    """EMA without lookahead: validation, checkpoints and the final model use the average,
    while training goes on from the training weights, also after a resume."""
    losses: list[float] = []
    whole = run(tmp_path / "whole", losses, ema=True)
    ema = whole.callbacks[0]
    final = whole.model.state_dict()
    assert all(torch.equal(final[k], ema.shadow[k]) for k in ema.shadow)  # the model ends as the average
    saved = load_file(str(tmp_path / "whole" / "checkpoints" / "last" / "model.safetensors"))
    assert all(torch.equal(saved[k], ema.shadow[k]) for k in ema.shadow)
    plain_losses: list[float] = []
    plain = run(tmp_path / "plain", plain_losses)
    assert plain_losses == losses  # averaging never touches the training weights
    assert plain.state.history[-1]["val_loss"] != whole.state.history[-1]["val_loss"]  # val sees the average
    resumed_losses: list[float] = []
    run(tmp_path / "resumed", resumed_losses, stop_at=STEPS_PER_EPOCH + 2, ema=True)
    resumed = run(tmp_path / "resumed", resumed_losses, resume=True, ema=True)
    assert resumed_losses == losses
    weights = resumed.model.state_dict()
    assert all(torch.equal(weights[k], final[k]) for k in final)
    assert [row["val_loss"] for row in resumed.state.history] == [row["val_loss"] for row in whole.state.history]
