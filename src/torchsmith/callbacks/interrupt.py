"""`PauseOnInterrupt`: Ctrl-C, or a notebook's interrupt button, pauses `Trainer.fit` at a step
boundary instead of tearing it down mid-step; calling `fit` again continues exactly.

A Jupyter kernel's interrupt is SIGINT sent to the kernel process, which Python turns into a
`KeyboardInterrupt` raised wherever the code happens to be: between `optimizer.step()` and the
step counter, the weights would be one step ahead of the counters and a second `fit` could not
go on exactly. Here the first SIGINT only asks the trainer to stop after the current step (as
`StopOnSignal` does for the command line); the Checkpointer, when there is one, saves `last`
there, `fit` returns with `trainer.state.status == "stopped"`, and the next `fit` call takes
the remaining steps. A second SIGINT raises `KeyboardInterrupt` at once.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

from torchsmith.callbacks.base import Callback

if TYPE_CHECKING:
    from torchsmith.train.trainer import Trainer

REASON = "interrupted"


class PauseOnInterrupt(Callback):
    """The first SIGINT during `fit` stops at the next step boundary; `fit` again continues.

    The Trainer adds one unless its callbacks already handle signals (`StopOnSignal`, as the
    command line uses). Only the main thread can install signal handlers: a `fit` run in
    another thread keeps Python's default behaviour.

    Example:
        >>> trainer = Trainer(model, max_epochs=5)  # doctest: +SKIP
        >>> trainer.fit(train_data)  # interrupt the kernel: stops after the current step  # doctest: +SKIP
        >>> trainer.fit(train_data)  # takes the remaining steps, as if never stopped  # doctest: +SKIP
    """

    handles_sigint = True

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream
        self.received = False
        self.paused = False  # the last fit ended because of an interrupt: the next one continues it
        self.previous: Any = None
        self.installed = False
        self.trainer: Trainer | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        state = trainer.state
        if self.paused and state.stop_reason == REASON:
            state.stop_requested, state.stop_reason, state.stop_signal = False, "", ""
        self.paused = self.received = False
        self.trainer = trainer
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
            self.installed = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received:
            self._restore()
            raise KeyboardInterrupt  # the second interrupt: stop at once, wherever the code is
        self.received = True
        assert self.trainer is not None
        self.trainer.state.request_stop(REASON, signal="SIGINT")
        self._write("interrupted: stopping after the current step (interrupt again to stop at once)")

    def on_fit_end(self, trainer: Trainer) -> None:
        self._restore()
        if self.received and trainer.state.stop_reason == REASON:
            self.paused = True
            state = trainer.state
            where = f"step {state.step} (epoch {state.epoch + 1}, batch {state.position})"
            self._write(f"stopped at {where}; call fit again with the same data to continue")

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        if self.installed:
            signal.signal(signal.SIGINT, self.previous)
            self.installed, self.previous = False, None

    def _write(self, text: str) -> None:
        print(text, file=self.stream or sys.stderr, flush=True)
