"""Promises the README makes about stopping, NaN policies and flags, each held by a test that fails
when the behaviour breaks: Ctrl-C and SIGTERM save `last` at the step they stopped, a rollback
restores the checkpoint's weights, the NaN policies' counts reach summary.json and doctor.json,
a model error exits 1, and configuration layers override in the documented order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers import run_cli, same_weights
from safetensors.torch import load_file
from torch import nn

import torchsmith
from torchsmith import Trainer
from torchsmith.callbacks.base import Callback
from torchsmith.callbacks.checkpointer import Checkpointer
from torchsmith.config import OptimConfig

# A user model that turns its output non-finite on chosen forward calls in training mode.
FLAKY_NET = """
import time

import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, num_classes=10, bad_calls=(), fail_at=0, mark_at=0, marker="", then_sleep=0.0):
        super().__init__()
        self.fc = nn.Linear(784, num_classes)
        self.calls, self.bad_calls, self.fail_at = 0, set(bad_calls), fail_at
        self.mark_at, self.marker, self.then_sleep = mark_at, marker, then_sleep
    def forward(self, x):
        out = self.fc(x.flatten(1))
        if not self.training:
            return out
        self.calls += 1
        if self.calls == self.mark_at:  # tells the test that training is under way
            open(self.marker, "w").close()
            time.sleep(self.then_sleep)  # a long step, for a signal to arrive inside it
        if self.calls == self.fail_at:
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (the model broke at this call)")
        return out * float("nan") if self.calls in self.bad_calls else out
"""


def long_run(tmp_path: Path, then_sleep: float = 0.0) -> tuple[subprocess.Popen[str], Path]:
    """A real `torchsmith train` process that runs long, with no periodic or best checkpoint, so a
    checkpoint at the stopping step can only come from the stop itself; it returns once the model
    has seen its 20th training batch."""
    (tmp_path / "flaky.py").write_text(FLAKY_NET)
    run_dir, marker = tmp_path / "run", tmp_path / "training"
    model_args = json.dumps({"mark_at": 20, "marker": str(marker), "then_sleep": then_sleep})
    command = [
        sys.executable, "-m", "torchsmith", "train", "--model", f"{tmp_path / 'flaky.py'}:Net", "--model-args",
        model_args, "--batch-size", "16", "--epochs", "50", "--val-fraction", "0", "--checkpoint-every", "1000000",
        "--run-dir", str(run_dir), "--quiet",
    ]  # fmt: skip
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(Path(torchsmith.__file__).parents[1])}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    deadline = time.time() + 300
    while not marker.exists():
        assert process.poll() is None and time.time() < deadline, process.communicate()[1]
        time.sleep(0.02)
    return process, run_dir


def saved_step(run_dir: Path, name: str = "last") -> int:
    return int(json.loads((run_dir / "checkpoints" / name / "meta.json").read_text())["step"])


@pytest.mark.parametrize(("sent", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_last_at_the_step_it_stopped(tmp_path: Path, sent: signal.Signals, code: int) -> None:
    process, run_dir = long_run(tmp_path)
    process.send_signal(sent)
    _, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    assert "Traceback" not in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped" and 10 < summary["steps"] < 50 * 1000
    assert saved_step(run_dir) == summary["steps"]  # `last` holds the step it stopped at
    assert not list((run_dir / "checkpoints").glob("step-*"))  # no periodic one to mistake for it
    weights = load_file(str(run_dir / "checkpoints" / "last" / "model.safetensors"))
    assert same_weights(weights, load_file(str(run_dir / "model.safetensors")))


def test_a_second_ctrl_c_exits_at_once(tmp_path: Path) -> None:
    process, run_dir = long_run(tmp_path, then_sleep=60.0)  # the 20th batch's step takes a minute
    process.send_signal(signal.SIGINT)  # asks for a stop at the end of this step
    time.sleep(1.0)
    started = time.monotonic()
    process.send_signal(signal.SIGINT)  # does not wait for it
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert time.monotonic() - started < 30  # well before the step could have ended
    assert "second interrupt" in err and "Traceback" not in err
    assert not (run_dir / "checkpoints" / "last").exists()  # no checkpoint of a half-done step


class EpochStartWeights(Callback):
    """The weights at every epoch start: after a rollback the loop starts its epoch again."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_epoch_start(self, trainer: Any) -> None:
        self.weights.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})


class FailsOnce(nn.Module):
    """A small network whose output is NaN on its 7th training forward, once."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += self.training
        out = self.body(x)
        return out * float("nan") if self.training and self.calls == 7 else out


def test_rollback_restores_the_weights_of_the_newest_checkpoint(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    inputs, targets = torch.randn(96, 6, generator=generator), torch.randint(0, 3, (96,), generator=generator)
    torch.manual_seed(0)
    seen = EpochStartWeights()
    checkpointer = Checkpointer(tmp_path, {}, every_steps=4, keep_last=10)
    trainer = Trainer(
        FailsOnce(), optimizer="sgd", max_epochs=1, batch_size=8, on_nan="rollback",
        callbacks=[checkpointer, seen], progress="none",
    )  # fmt: skip
    trainer.fit((inputs, targets))
    assert trainer.state.rollbacks == 1 and trainer.state.status == "completed"
    assert len(seen.weights) == 2  # the epoch's start, and its restart from the checkpoint
    checkpoint = load_file(str(tmp_path / "checkpoints" / "step-000004" / "model.safetensors"))
    assert same_weights(seen.weights[1], checkpoint)  # what step 6 had moved is gone
    assert not same_weights(checkpoint, seen.weights[0])  # and the checkpoint is not the start


@pytest.mark.parametrize(("policy", "count"), [("skip", "skipped_steps"), ("rollback", "rollbacks")])
def test_nan_policies_from_the_cli_count_in_summary_and_doctor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], policy: str, count: str
) -> None:
    (tmp_path / "flaky.py").write_text(FLAKY_NET)
    run_dir = tmp_path / "run"
    args = [
        "train", "--model", f"{tmp_path / 'flaky.py'}:Net", "--model-args", '{"bad_calls": [30, 90]}',
        "--on-nan", policy, "--checkpoint-every", "20", "--epochs", "1", "--max-steps", "120",
        "--run-dir", str(run_dir), "--quiet",
    ]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    doctor = json.loads((run_dir / "doctor.json").read_text())
    assert summary["status"] == "completed" and summary[count] == 2 and len(summary["nan_events"]) == 2
    assert len(doctor["events"]) == 2 and all(event["policy"] == policy for event in doctor["events"])


def test_a_model_error_during_training_exits_1_and_keeps_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "flaky.py").write_text(FLAKY_NET)
    run_dir = tmp_path / "run"
    args = ["train", "--model", f"{tmp_path / 'flaky.py'}:Net", "--model-args", '{"fail_at": 40}']
    code, _, err = run_cli([*args, "--run-dir", str(run_dir), "--quiet"], capsys)
    assert code == 1, err
    assert "mat1 and mat2" in err and "Traceback" not in err
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


def test_flags_given_with_resume_override_the_saved_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    base = ["train", "--model", "simplenet", "--max-steps", "30", "--run-dir", str(run_dir), "--quiet"]
    assert run_cli([*base, "--epochs", "1"], capsys)[0] == 0
    # a run that reached max_steps has ended its epoch: a longer one needs another epoch too
    longer = ["--epochs", "2", "--max-steps", "60"]
    code, _, err = run_cli(["train", "--run-dir", str(run_dir), "--resume", *longer, "--quiet"], capsys)
    assert code == 0, err
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 60  # the flags, not the saved 1 and 30
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]
    assert (saved["max_epochs"], saved["max_steps"]) == (2, 60)


def test_configuration_layers_override_in_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """defaults < recipe < config file < flags < --set, one setting decided at each layer."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"optim": {"lr": 0.5, "weight_decay": 0.25}, "train": {"batch_size": 32}}))
    run_dir = tmp_path / "run"
    args = [
        "train", "--recipe", "mnist-fast", "--config", str(config), "--batch-size", "16", "--set", "train.batch_size=8",
        "--set", "optim.weight_decay=0.125", "--data", "mnist-sample", "--max-steps", "2", "--run-dir", str(run_dir),
        "--quiet",
    ]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["name"] == "convbn"  # the recipe over the default (simplenet)
    assert saved["optim"]["scheduler"] == "onecycle"  # the recipe, which the config leaves alone
    assert saved["optim"]["lr"] == 0.5  # the config file over the recipe's 0.03
    assert saved["optim"]["weight_decay"] == 0.125  # --set over the config file
    assert saved["train"]["batch_size"] == 8  # --set over the flag over the config file
    assert saved["train"]["max_steps"] == 2 and saved["data"]["name"] == "mnist-sample"  # flags over the recipe


def blobs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 3, (192,), generator=generator)
    inputs = torch.randn(192, 6, generator=generator) + 4.0 * nn.functional.one_hot(targets, 6).float()
    return inputs, targets


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))


def test_the_trainer_under_compile_learns_and_saves_unprefixed_keys(tmp_path: Path) -> None:
    checkpointer = Checkpointer(tmp_path, {})
    net = small_net()
    trainer = Trainer(
        net,
        max_epochs=5,
        batch_size=32,
        optim=OptimConfig(lr=0.01),
        compile=True,
        callbacks=[checkpointer],
        progress="none",
    )
    assert trainer.evaluate(blobs())["accuracy"] < 0.7
    trainer.fit(blobs())
    assert trainer.forward_model is not net  # it trained through the compiled module
    assert trainer.evaluate(blobs())["accuracy"] > 0.9
    saved = load_file(str(tmp_path / "checkpoints" / "last" / "model.safetensors"))
    assert set(saved) == set(small_net().state_dict())  # "0.weight", not "_orig_mod.0.weight"


def test_the_trainer_in_bf16_learns_and_keeps_fp32_weights() -> None:
    trainer = Trainer(
        small_net(), max_epochs=5, batch_size=32, optim=OptimConfig(lr=0.01), precision="bf16", progress="none"
    )
    seen: list[torch.dtype] = []
    handle = trainer.model[0].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    trainer.fit(blobs())
    handle.remove()
    assert torch.bfloat16 in seen  # the forward ran under autocast
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert trainer.evaluate(blobs())["accuracy"] > 0.9


@pytest.mark.parametrize("clip", [None, 0.01])
def test_clip_grad_norm_bounds_every_update(clip: float | None) -> None:
    """Plain SGD at lr 1: an update is the gradient itself, so its norm is the clipped norm."""
    steps: list[float] = []

    class Updates(Callback):  # the distance between the weights after consecutive steps
        def on_fit_start(self, trainer: Any) -> None:
            self.before = [p.detach().clone() for p in trainer.model.parameters()]

        def on_step_end(self, trainer: Any) -> None:
            after = [p.detach().clone() for p in trainer.model.parameters()]
            moved = [(a - b).flatten() for a, b in zip(after, self.before, strict=True)]
            steps.append(float(torch.cat(moved).norm()))
            self.before = after

    optim = OptimConfig(name="sgd", lr=1.0, momentum=0.0, scheduler="none")
    trainer = Trainer(
        small_net(), optim=optim, max_epochs=1, batch_size=32, clip_grad_norm=clip, callbacks=[Updates()],
        progress="none",
    )  # fmt: skip
    trainer.fit(blobs())
    assert len(steps) == 6
    if clip is None:
        assert max(steps) > 0.05  # the negative control: these gradients are larger than the clip
    else:
        assert max(steps) <= clip * (1 + 1e-4)
