"""train.capture: the decision whether a step may be captured as a CUDA graph, and why not.

The capture itself needs a GPU; what the CPU can check is every fallback decision, the
errors for `capture=on` where it cannot work, and that a run configured with it resumes exactly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_image_splits as data
from torch import nn

from torchsmith import Trainer
from torchsmith.callbacks.base import Callback
from torchsmith.callbacks.checkpointer import Checkpointer
from torchsmith.config import RunConfig, TrainConfig
from torchsmith.errors import UsageError
from torchsmith.train.capture import decide

CUDA = torch.device("cuda")  # a device object needs no GPU: the decision only reads its type


def test_qualifying_step_on_cuda() -> None:
    decision = decide(TrainConfig(), device=CUDA, optimizer="adamw", in_memory=True)
    assert decision.enabled and decision.reason == ""
    assert "qualifies" in decision.to_text()


@pytest.mark.parametrize(
    ("settings", "device", "optimizer", "in_memory", "expected"),
    [
        ({}, torch.device("cpu"), "adamw", True, "no CUDA device"),
        ({}, CUDA, "adamw", False, "DataLoader or Dataset"),
        ({"group_by_length": True}, CUDA, "adamw", True, "group_by_length"),
        ({}, CUDA, "adagrad", True, "optimizer adagrad has no capturable"),
        ({}, CUDA, torch.optim.LBFGS([nn.Parameter(torch.zeros(1))]), True, "optimizer LBFGS"),
        ({"compile": True}, CUDA, "sgd", True, "torch.compile"),
        ({"precision": "fp16"}, CUDA, "adam", True, "fp16"),
        ({"capture": False}, CUDA, "adamw", True, "train.capture is false"),
    ],
    ids=["cpu", "dataloader", "grouped", "adagrad", "user-optimizer", "compile", "fp16", "off"],
)
def test_why_capture_is_off(settings: dict, device, optimizer, in_memory: bool, expected: str) -> None:
    decision = decide(TrainConfig(**settings), device=device, optimizer=optimizer, in_memory=in_memory)
    assert not decision.enabled
    assert expected in decision.reason and decision.to_text().startswith("graph capture off: ")


def test_capture_true_where_it_cannot_work_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"train.capture=true.*no CUDA device.*train.capture=auto"):
        decide(TrainConfig(capture=True), device=torch.device("cpu"), optimizer="sgd", in_memory=True)


def test_capture_setting_is_validated() -> None:
    with pytest.raises(UsageError, match=r"train\.capture must be true, false or auto, got 'always'"):
        RunConfig.from_dict({"train": {"capture": "always"}})


def test_cli_records_the_decision_and_refuses_capture_without_cuda(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "torchsmith", "train", "--epochs", "1", "--max-steps", "2", "--quiet"]
    done = subprocess.run([*base, "--run-dir", str(tmp_path / "a")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["capture"] == "graph capture off: no CUDA device (CUDA graphs need one)"
    refused = subprocess.run(
        [*base, "--run-dir", str(tmp_path / "b"), "--set", "train.capture=on"],  # YAML: on is true
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 2 and "train.capture=true" in refused.stderr and "Traceback" not in refused.stderr


class Stop(Callback):
    def __init__(self, losses: list[float], stop_at: int | None) -> None:
        self.losses, self.stop_at = losses, stop_at

    def on_step_end(self, trainer: Trainer) -> None:
        self.losses.append(trainer.state.last_loss)
        if trainer.state.step == self.stop_at:
            trainer.state.request_stop("test stop")


def fit(run_dir: Path, losses: list[float], stop_at: int | None = None, resume: bool = False) -> Trainer:
    train, val = data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))
    trainer = Trainer(
        model,
        optimizer="adamw",
        max_epochs=2,
        batch_size=16,
        log_every=1,
        progress="none",
        capture="auto",
        callbacks=[Checkpointer(run_dir, {}, every_steps=None), Stop(losses, stop_at)],
    )
    trainer.fit(train, val, resume=resume)
    return trainer


def test_resume_with_capture_configured_is_exact(tmp_path: Path) -> None:
    expected: list[float] = []
    reference = fit(tmp_path / "reference", expected)
    losses: list[float] = []
    assert fit(tmp_path / "run", losses, stop_at=4).state.status == "stopped"
    resumed = fit(tmp_path / "run", losses, resume=True)
    assert resumed.config.capture == "auto" and len(losses) == len(expected) == 12
    assert losses == expected  # bitwise
    weights = resumed.model.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in reference.model.state_dict().items())
