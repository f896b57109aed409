"""The callbacks a Trainer adds to the user's own: progress, and pause-on-interrupt in a notebook."""

from __future__ import annotations

from collections.abc import Sequence

from torchsmith.callbacks.base import Callback
from torchsmith.callbacks.interrupt import PauseOnInterrupt
from torchsmith.callbacks.progress import ProgressPrinter, in_notebook_kernel
from torchsmith.io import rank


def default_callbacks(progress: str, given: Sequence[Callback]) -> list[Callback]:
    """A `ProgressPrinter` unless `progress` is "none" (or one is given; rank 0 alone prints), and
    in a Jupyter kernel a `PauseOnInterrupt` unless a given callback handles SIGINT already.

    Pausing is for notebooks, where the kernel lives on after an interrupt and `fit` again
    continues; in a script the first Ctrl-C keeps Python's meaning (stop the script).
    """
    added: list[Callback] = []
    if progress != "none" and rank.is_writer() and not any(isinstance(c, ProgressPrinter) for c in given):
        added.append(ProgressPrinter(progress))
    if in_notebook_kernel() and not any(getattr(c, "handles_sigint", False) for c in given):
        added.append(PauseOnInterrupt())
    return added
