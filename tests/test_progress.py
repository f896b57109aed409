"""Progress: which display is chosen where, and the notebook's widget bar over a whole fit."""

from __future__ import annotations

import io
from typing import Any

import pytest
from conftest import tiny_mlp

from torchsmith import Trainer
from torchsmith.callbacks.progress import ProgressPrinter, auto_mode, in_notebook_kernel


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_mode_follows_where_the_code_runs() -> None:
    assert auto_mode(io.StringIO(), in_kernel=True, has_widgets=True) == "notebook"
    assert auto_mode(io.StringIO(), in_kernel=True, has_widgets=False) == "lines"  # text fallback
    assert auto_mode(Terminal(), in_kernel=False, has_widgets=True) == "bar"
    assert auto_mode(io.StringIO(), in_kernel=False, has_widgets=True) == "lines"
    assert not in_notebook_kernel()  # pytest is no Jupyter kernel
    assert ProgressPrinter("auto", stream=io.StringIO()).mode == "lines"


class KeepBar(ProgressPrinter):
    """Keeps the closed bar to look at."""

    def _close(self) -> None:
        self.closed = self.bar
        super()._close()


def test_the_notebook_bar_spans_the_fit_and_ends_full(blobs: Any) -> None:
    pytest.importorskip("ipywidgets", reason="the notebook bar draws on ipywidgets (pip install ipywidgets)")
    stream = io.StringIO()
    printer = KeepBar("notebook", stream=stream)
    trainer = Trainer(tiny_mlp(), max_epochs=2, batch_size=32, log_every=4, callbacks=[printer])
    trainer.fit(blobs)
    bar = printer.closed
    assert (bar.n, bar.total) == (16, 16)  # one bar: 2 epochs of 8 steps
    assert bar.desc.startswith("Epoch 2/2")
    assert "loss" in bar.postfix and "samples/s" in bar.postfix
    assert stream.getvalue().count("Epoch ") == 2  # the epoch lines still print below the bar
