"""A NaN loss on the first batch is localised by the pre-flight as during training: the layer,
its class, what went in and what came out."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_cli

NETS = """
import torch
from torch import nn


class Log(nn.Module):
    def forward(self, x):
        return torch.log(x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)
        self.boom = Log()

    def forward(self, x):
        return self.boom(self.fc(torch.flatten(x, 1)))  # log of negative logits: NaN
"""


def test_preflight_names_the_layer_that_made_the_first_nan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nets = tmp_path / "nets.py"
    nets.write_text(NETS)
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--model", f"{nets}:Net", "--max-steps", "1", "--run-dir", str(run)], capsys)
    assert code == 2, err
    assert "pre-flight" in err and "`boom` (Log)" in err, err
    assert "input" in err and "output" in err and "nan" in err.lower()
    assert not run.exists()  # stopped before the run directory was written
