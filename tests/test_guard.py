"""The NaN guard and doctor inside training: each failure is caught before the weights
change, traced to the right module or sample, and the policies recover."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import shared_dataset, tiny_mlp
from torch import nn

from torchsmith import Trainer
from torchsmith.callbacks.base import Callback
from torchsmith.callbacks.checkpointer import Checkpointer
from torchsmith.cli.main import main
from torchsmith.config import OptimConfig
from torchsmith.errors import TrainingFailure


class LogLayer(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


class SqrtLayer(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x)


class LogAfter(nn.Module):
    """Finite until `step` calls, then its head takes the log of negative values."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.body = nn.Linear(8, 4)
        self.head = LogLayer()
        self.calls, self.step = 0, step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.body(x)
        return self.head(out - 100.0) if self.calls > self.step else out


class SqrtAtZero(nn.Module):
    """sqrt(0) is finite in forward; its gradient is Inf in backward."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 4)
        self.root = SqrtLayer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.root(self.body(x) * 0.0) + self.body(x)


class Snapshots(Callback):
    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_fit_start(self, trainer: Trainer) -> None:
        self.on_step_end(trainer)

    def on_step_end(self, trainer: Trainer) -> None:
        self.weights.append({k: v.clone() for k, v in trainer.model.state_dict().items()})


def fail(model: nn.Module, data, loss=None) -> tuple[Trainer, dict, Snapshots]:
    snapshots = Snapshots()
    trainer = Trainer(model, loss=loss, max_epochs=2, batch_size=32, progress="none", callbacks=[snapshots])
    with pytest.raises(TrainingFailure) as info:
        trainer.fit(data)
    event = trainer.state.nan_events[-1]
    assert len(snapshots.weights) == event["step"] + 1  # stopped within the failing step
    after = trainer.model.state_dict()
    assert all(torch.equal(after[k], snapshots.weights[-1][k]) for k in after)  # bitwise unchanged
    assert "Cause:" in str(info.value)
    return trainer, event, snapshots


def test_a_nan_in_one_input_sample(blobs) -> None:
    x, y = blobs
    x = x.clone()
    x[123, 2] = float("nan")
    _, event, _ = fail(tiny_mlp(), (x, y))
    assert event["cause"] == "non-finite input data" and event["samples"] == [123]


def test_b_forward_nan_in_a_named_submodule(blobs) -> None:
    _, event, _ = fail(LogAfter(step=5), blobs)
    assert event["step"] == 5 and event["module"] == "head" and event["stage"] == "forward"
    assert event["cause"] == "forward NaN in head"


def test_c_non_finite_only_in_backward(blobs) -> None:
    _, event, _ = fail(SqrtAtZero(), blobs)
    assert event["stage"] == "backward" and event["module"] == "root"
    assert event["cause"].startswith("backward-only non-finite")


def test_d_inf_loss(blobs) -> None:
    def inf_after_three(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        inf_after_three.calls += 1
        loss = nn.functional.cross_entropy(outputs, targets)
        return loss * float("inf") if inf_after_three.calls > 3 else loss

    inf_after_three.calls = 0
    _, event, _ = fail(tiny_mlp(), blobs, loss=inf_after_three)
    assert event["stage"] == "loss" and event["cause"] == "non-finite loss"


def test_e_exploding_gradient_on_real_mnist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = shared_dataset("mnist")
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--data",
            "mnist",
            "--data-dir",
            str(data_dir),
            "--optimizer",
            "sgd",
            "--lr",
            "10000",
            "--run-dir",
            str(run),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    event = json.loads((run / "doctor.json").read_text())["events"][0]
    assert event["cause"] == "exploding gradient", event
    assert any("--lr" in advice for advice in event["advice"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["steps"] == event["step"]


def poisoned(blobs, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = blobs
    x = x.clone()
    x[rows] = float("nan")
    return x, y


def accuracy_after(policy: str, data, tmp_path: Path, **extra) -> Trainer:
    callbacks = [Checkpointer(tmp_path, {}, every_steps=4)] if policy == "rollback" else []
    trainer = Trainer(
        tiny_mlp(),
        optimizer="adamw",
        optim=OptimConfig(lr=0.02, scheduler="none"),
        max_epochs=4,
        batch_size=32,
        progress="none",
        on_nan=policy,
        callbacks=callbacks,
        **extra,
    )
    trainer.fit(data)
    return trainer


def test_skip_finishes_with_the_right_count(blobs, tmp_path: Path) -> None:
    clean = accuracy_after("stop", blobs, tmp_path / "clean")
    rows = [5, 200]
    trainer = accuracy_after("skip", poisoned(blobs, rows), tmp_path / "skip")
    x, y = blobs
    expected = sum(
        len({int((trainer.train_batches.order.permutation(e) == r).nonzero()) // 32 for r in rows}) for e in range(4)
    )
    assert trainer.state.skipped_steps == expected == len(trainer.state.nan_events)
    assert trainer.state.status == "completed"
    assert trainer.evaluate((x, y))["accuracy"] >= clean.evaluate((x, y))["accuracy"] - 0.03


def test_rollback_finishes_and_skips_the_poisoned_batches(blobs, tmp_path: Path) -> None:
    clean = accuracy_after("stop", blobs, tmp_path / "clean")
    trainer = accuracy_after("rollback", poisoned(blobs, [9]), tmp_path / "rollback")
    x, y = blobs
    assert trainer.state.status == "completed"
    assert trainer.state.rollbacks == len(trainer.state.nan_events) == len(trainer.state.poisoned) == 1
    assert trainer.state.excluded_samples == [9]
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.02 * 0.5**trainer.state.rollbacks)
    assert trainer.evaluate((x, y))["accuracy"] >= clean.evaluate((x, y))["accuracy"] - 0.03


FUSED = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, fused=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, fused=True),  # 0-dim step counters: a 0-dim flag
    "adam": lambda p: torch.optim.Adam(p, lr=0.01, fused=True),
}


@pytest.mark.parametrize("optimizer", list(FUSED))
def test_sync_free_guard_skips_the_step_on_the_device(blobs, optimizer: str) -> None:
    """With a fused optimizer and nan_check_every > 1 the flagged step never reaches the weights
    and the run stops at the next check, naming the step."""
    x, y = poisoned(blobs, [40])
    snapshots = Snapshots()
    trainer = Trainer(
        tiny_mlp(),
        optimizer=FUSED[optimizer],
        max_epochs=2,
        batch_size=32,
        progress="none",
        nan_check_every=4,
        callbacks=[snapshots],
    )
    with pytest.raises(TrainingFailure, match="skipped that step on the device"):
        trainer.fit((x, y))
    bad = trainer.state.nan_events[0]["step"]
    order = trainer.train_batches.order.permutation(0)
    assert bad == int((order == 40).nonzero()) // 32  # the batch holding sample 40
    assert trainer.state.step % 4 == 0 and trainer.state.step > bad
    # the flagged step changed nothing: the weights after it equal those before it
    assert all(torch.equal(snapshots.weights[bad + 1][k], snapshots.weights[bad][k]) for k in snapshots.weights[bad])
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_finite_check_flags_a_loss_whose_gradients_are_finite(bad: float) -> None:
    """The loss goes through the same pass as the gradients: a non-finite constant added to
    it leaves every gradient finite, and the check must still refuse the step."""
    from torchsmith.train.guard import FiniteCheck

    model = nn.Linear(4, 2)
    check = FiniteCheck(list(model.parameters()), torch.device("cpu"))
    loss = model(torch.ones(3, 4)).sum()
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    assert check.passes(loss.detach())
    assert not check.passes(loss.detach() + bad)
    assert not check.passes(loss + bad)  # not detached: the check detaches, autograd stays intact
    assert not check.passes((loss.detach() + bad).to(torch.bfloat16))
    assert not check.passes((loss.detach() + bad).double())
    assert check.passes(torch.tensor(1e300, dtype=torch.float64))  # finite, though not in float32's range
    assert check.passes(loss.detach())  # the flag was reset after each hit
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    model.weight.grad[0, 0] = float("nan")
    assert not check.passes(loss.detach())
