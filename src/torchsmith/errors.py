"""Exceptions that carry an exit code, so the CLI can map them without tracebacks."""

from __future__ import annotations


class TorchsmithError(Exception):
    """Base class for errors torchsmith reports to the user with a clear message."""

    exit_code = 1


class UsageError(TorchsmithError, ValueError):
    """A mistake in flags, config, model or data that the user can fix (exit code 2)."""

    exit_code = 2


class TrainingFailure(TorchsmithError):
    """Training started but had to stop: NaN guard, a failing step, a broken checkpoint (exit 1)."""

    exit_code = 1


class Interrupted(TorchsmithError):
    """Training stopped by SIGINT/SIGTERM after the state was saved (exit 130 or 143)."""

    def __init__(self, signal_name: str, exit_code: int, step: int | None = None) -> None:
        at = f" at step {step}" if step is not None else ""
        super().__init__(f"interrupted by {signal_name}{at}; the state was saved")
        self.exit_code = exit_code
