"""Interrupt and continue: SIGINT (Ctrl-C, a notebook kernel's interrupt) during `Trainer.fit`
stops at a step boundary, and `fit` again ends with exactly the weights of an unbroken fit."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import same_weights
from torch import nn

from torchsmith import Trainer
from torchsmith.callbacks import Callback, Checkpointer, StopOnSignal
from torchsmith.callbacks.defaults import default_callbacks
from torchsmith.callbacks.interrupt import PauseOnInterrupt
from torchsmith.io.checkpoint import load_checkpoint


class InterruptAt(Callback):
    """Sends SIGINT to this process after the given optimizer steps (as the kernel's interrupt does)."""

    def __init__(self, *steps: int) -> None:
        self.steps = set(steps)

    def on_step_end(self, trainer: Any) -> None:
        if trainer.state.step in self.steps:
            self.steps.discard(trainer.state.step)
            signal.raise_signal(signal.SIGINT)


def dropout_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 4))


def make_trainer(callbacks: list[Callback]) -> Trainer:
    model = dropout_mlp()
    return Trainer(
        model, optimizer="adamw", max_epochs=3, batch_size=32, log_every=3, progress="none",
        callbacks=[*callbacks, PauseOnInterrupt()],  # what a notebook kernel's Trainer adds itself
    )  # fmt: skip


@pytest.mark.parametrize("at_step", [5, 8, 13])  # mid-epoch, an epoch's last step, mid-epoch 2
def test_interrupt_then_fit_again_equals_an_unbroken_fit(blobs: Any, at_step: int, capsys: Any) -> None:
    expected_trainer = make_trainer([])
    expected_history = expected_trainer.fit(blobs, blobs)
    expected = expected_trainer.model.state_dict()

    trainer = make_trainer([InterruptAt(at_step)])
    trainer.fit(blobs, blobs)
    assert trainer.state.status == "stopped" and trainer.state.step == at_step
    assert "call fit again" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler given back
    history = trainer.fit(blobs, blobs)
    assert trainer.state.status == "completed" and trainer.state.step == 24
    assert same_weights(trainer.model.state_dict(), expected)
    timeless = [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in history]
    assert timeless == [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in expected_history]


def test_the_interrupted_step_is_saved_as_sigint_saves(blobs: Any, tmp_path: Path) -> None:
    trainer = make_trainer([Checkpointer(tmp_path, {}), InterruptAt(5)])
    trainer.fit(blobs)
    saved = load_checkpoint(tmp_path / "checkpoints" / "last")
    assert saved.training_state["trainer"]["step"] == 5
    assert same_weights(saved.model_state, trainer.model.state_dict())


def test_a_second_interrupt_stops_at_once(blobs: Any) -> None:
    trainer = make_trainer([])
    calls = []

    def interrupt_twice_in_the_fourth_forward(module: nn.Module, inputs: Any) -> None:
        calls.append(1)
        if len(calls) == 4:
            signal.raise_signal(signal.SIGINT)  # asks for a stop at the step's end
            signal.raise_signal(signal.SIGINT)  # stops now, in the middle of the step

    trainer.model.register_forward_pre_hook(interrupt_twice_in_the_fourth_forward)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(blobs)
    assert trainer.state.step == 3  # the fourth step never finished
    assert trainer.state.status == "stopped"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_added_in_a_notebook_kernel_alone_and_never_beside_stop_on_signal() -> None:
    assert not any(isinstance(c, PauseOnInterrupt) for c in default_callbacks("none", []))  # a script: Ctrl-C stops it
    assert not any(isinstance(c, PauseOnInterrupt) for c in default_callbacks("none", [StopOnSignal()]))
