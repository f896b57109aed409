"""Callbacks: plain objects with no-op hooks that each take the trainer.

Shared data lives on `trainer.state` (see `torchsmith.state.TrainState`). Every built-in
callback is importable from here.
"""

from torchsmith.callbacks.base import Callback
from torchsmith.callbacks.checkpointer import Checkpointer
from torchsmith.callbacks.early_stopping import EarlyStopping
from torchsmith.callbacks.ema import EMACallback
from torchsmith.callbacks.metrics_logger import MetricsLogger
from torchsmith.callbacks.progress import ProgressPrinter
from torchsmith.callbacks.signals import StopOnSignal

__all__ = [
    "Callback",
    "Checkpointer",
    "EMACallback",
    "EarlyStopping",
    "MetricsLogger",
    "ProgressPrinter",
    "StopOnSignal",
]
