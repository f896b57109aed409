"""Exceptions that carry an exit code, so the CLI can map them without tracebacks."""

from __future__ import annotations

import difflib
import reprlib
import signal
from collections.abc import Iterable


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


def short(value: object, limit: int = 80) -> str:
    """`repr(value)` cut to about `limit` characters, without building the whole text first: a
    YAML alias bomb (nested lists sharing themselves) has a repr of billions of characters.

    Example:
        >>> short(list(range(1000)))
        '[0, 1, 2, 3, 4, 5, ...]'
    """
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 6, 6, 60, 60


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """ " Did you mean 'x'?" for the closest of `choices`, or "" when none is close: the one
    suggestion every "unknown name" message in torchsmith gives.

    Example:
        >>> did_you_mean("adamm", ["sgd", "adam", "adamw"])
        " Did you mean 'adam'?"
        >>> did_you_mean("val_acc", ["val_accuracy", "val_auroc"])
        " Did you mean 'val_accuracy'?"
    """
    names = list(choices)
    # an abbreviation ("val_acc") means the one name it starts, however close another name's letters are
    started = [name for name in names if name.startswith(word) and len(word) >= 3]
    close = started if len(started) == 1 else difflib.get_close_matches(word, names, n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def signal_exit_code(name: str) -> int:
    """The shell's exit code for a run stopped by a signal: 128 + its number (SIGINT 130, SIGTERM 143)."""
    return 128 + signal.Signals[name].value
