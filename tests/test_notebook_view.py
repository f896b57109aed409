"""Results inline: a Trainer and a loaded run render as HTML in a notebook; LiveCurves redraws in
place, throttled. (The notebooks in examples/ run in a real kernel in test_notebooks.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import tiny_mlp

import torchsmith
from torchsmith import Trainer
from torchsmith.callbacks.live_curves import LiveCurves, results_html
from torchsmith.cli.main import main
from torchsmith.state import TrainState


def test_a_trainer_renders_its_headline_and_curves(blobs: Any) -> None:
    trainer = Trainer(tiny_mlp(), max_epochs=3, batch_size=32, progress="none")
    assert "running" in trainer._repr_html_()  # before fit too
    history = trainer.fit(blobs, blobs)
    html = trainer._repr_html_()
    assert "<th>status</th><td>completed</td>" in html
    best = min(history, key=lambda row: row["val_loss"])
    assert f"<th>best epoch</th><td>{int(best['epoch'])} (val_loss {best['val_loss']:.4f})</td>" in html
    assert f"<th>val_accuracy</th><td>{history[-1]['val_accuracy']:.4f}</td>" in html
    assert "<svg" in html and ">train_loss<" in html and ">val_loss<" in html and ">accuracy<" in html


def test_nan_events_are_marked_and_counted() -> None:
    state = TrainState(
        step=9, history=[{"epoch": 1, "step": 5, "train_loss": 1.0}, {"epoch": 2, "step": 9, "train_loss": 0.5}]
    )
    state.nan_events = [{"step": 7, "epoch": 2, "cause": "loss"}]
    html = results_html(state)
    assert "1 NaN/Inf step" in html and "NaN/Inf step 7: 1" in html  # the marker, at the nearest loss


@pytest.fixture
def ipython() -> Any:
    """An IPython shell in this process, so that `display` returns handles (a kernel has one)."""
    pytest.importorskip("IPython", reason="live curves draw in IPython (pip install ipykernel)")
    from IPython.core.interactiveshell import InteractiveShell

    yield InteractiveShell.instance()
    InteractiveShell.clear_instance()


@pytest.mark.parametrize(("every_s", "redraws"), [(0.0, 7), (3600.0, 1)])
def test_live_curves_redraw_in_place_throttled(blobs: Any, every_s: float, redraws: int, ipython: Any) -> None:
    curves = LiveCurves(every_s=every_s)
    trainer = Trainer(tiny_mlp(), max_epochs=2, batch_size=32, log_every=4, progress="none", callbacks=[curves])
    trainer.fit(blobs, blobs)
    # per epoch: log points at its steps 4 and 8, then the epoch's end; then the final redraw
    assert curves.redraws == redraws
    assert [row["step"] for row in curves.rows] == [4, 8, 8, 12, 16, 16]
    assert "val_loss" in curves.rows[2] and "val_loss" not in curves.rows[1]


def test_a_loaded_run_renders_inline(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", "--max-steps", "30", "--run-dir", str(run), "--quiet", "--set", "train.log_every=10"]) == 0
    html = torchsmith.load(run)._repr_html_()
    assert "<th>test accuracy</th>" in html and "<th>status</th><td>completed</td>" in html
    assert "<svg" in html and ">train_loss<" in html and "full report: report.html" in html
