"""Helpers the tests share: running the CLI (in-process or as a real process), comparing weights,
and callbacks that record what the Trainer did."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

import torchsmith
from torchsmith.callbacks.base import Callback
from torchsmith.cli.main import main
from torchsmith.data.memory import ImageTensors

REPO = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`torchsmith ARGS` in this process: (exit code, stdout, stderr)."""
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def run_process(
    args: list[str],
    cwd: Path | None = None,
    timeout: float = 120,
    preexec_fn: Callable[[], None] | None = None,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """`python -m torchsmith ARGS` as a real process (text output captured); `preexec_fn` runs in the
    child before it starts (a resource limit, say)."""
    environment = {**os.environ, "PYTHONPATH": str(Path(torchsmith.__file__).parents[1]), **env}  # this code
    return subprocess.run(
        [sys.executable, "-m", "torchsmith", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        timeout=timeout,
        preexec_fn=preexec_fn,
    )


def same_weights(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    """Bitwise equality of two state dicts (same keys, same dtypes, same values)."""
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def all_finite(state: Mapping[str, torch.Tensor]) -> bool:
    """Every floating tensor of a state dict is finite (buffers included)."""
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


class StepRecorder(Callback):
    """Records the step counter and a copy of the weights after every optimizer step."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_step_end(self, trainer: Any) -> None:
        self.steps.append(trainer.state.step)
        self.weights.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})


def tiny_image_splits() -> tuple[ImageTensors, ImageTensors]:
    """90 training and 30 validation 8x8 grey images of 3 classes (seeded), with crop-flip."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (120, 1, 8, 8), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 3, (120,), generator=generator)
    train = ImageTensors(images[:90], labels[:90], [0.5], [0.25], augment="crop-flip", padding=2)
    return train, ImageTensors(images[90:], labels[90:], [0.5], [0.25])
