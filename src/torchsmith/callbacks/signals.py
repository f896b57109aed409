"""`StopOnSignal`: SIGTERM/SIGINT stop training at the next step boundary, after a save."""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import TYPE_CHECKING, Any

from torchsmith.callbacks.base import Callback
from torchsmith.errors import signal_exit_code

if TYPE_CHECKING:
    from torchsmith.train.trainer import Trainer


class StopOnSignal(Callback):
    """SIGTERM/SIGINT only set a flag; the trainer stops at the next step boundary, and the
    Checkpointer saves there. A second SIGINT exits at once, touching no checkpoint."""

    handles_sigint = True  # the Trainer then adds no PauseOnInterrupt of its own

    def __init__(self) -> None:
        self.received: str | None = None
        self.previous: dict[int, Any] = {}

    def on_fit_start(self, trainer: Trainer) -> None:
        self.trainer = trainer
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received == "SIGINT" and signum == signal.SIGINT:
            sys.stderr.write("second interrupt: exiting now; the last complete checkpoint is kept\n")
            raise SystemExit(signal_exit_code("SIGINT"))
        self.received = signal.Signals(signum).name
        self.trainer.state.request_stop(f"received {self.received}", signal=self.received)

    def on_fit_end(self, trainer: Trainer) -> None:
        self._restore()

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}
