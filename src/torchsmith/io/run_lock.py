"""One training process per run directory: an advisory lock on `RUN_DIR/.lock`.

The lock is `fcntl.flock` on an open file: the kernel drops it when the process ends,
however it ends (a kill -9 leaves no stale lock to clean up). The file holds the pid of
the process that holds it, for the message a second process gets. Where `fcntl` does
not exist (Windows) the lock is not taken.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from torchsmith.errors import UsageError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"


class RunInUse(UsageError):
    """Another process is training in this run directory (exit 2)."""


class RunLock:
    """Held while a process trains in a run directory.

    Example:
        >>> import tempfile
        >>> lock = RunLock()
        >>> lock.acquire(Path(tempfile.mkdtemp()))
        >>> lock.release()
    """

    def __init__(self) -> None:
        self.handle: IO[str] | None = None
        self.path: Path | None = None

    def acquire(self, run_dir: Path) -> None:
        """Take the lock (creating the folder); RunInUse naming the holder's pid if it is taken."""
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / LOCK_FILE
        if fcntl is None:
            return
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held open while training)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunInUse(
                f"run directory {run_dir} is in use: another torchsmith process (pid {holder}) is training "
                f"in it. Wait for it to finish (or stop it), or choose another --run-dir."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        """Drop the lock; a folder left holding only the lock file (training never began) is removed."""
        if self.handle is not None:
            self.handle.close()  # closing the file drops the flock
            self.handle = None
        if self.path is not None:
            folder, self.path = self.path.parent, None
            if [p.name for p in folder.iterdir()] == [LOCK_FILE]:
                try:
                    (folder / LOCK_FILE).unlink()
                    folder.rmdir()
                except OSError:  # another process took it meanwhile: leave it
                    pass


def held_by_other(run_dir: Path) -> bool:
    """Whether a training process holds the lock of `run_dir` now."""
    path = run_dir / LOCK_FILE
    if fcntl is None or not path.is_file():
        return False
    with open(path, encoding="utf-8") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return False


def occupied(run_dir: Path) -> list[str]:
    """The entries of `run_dir` other than the lock file (empty when the folder is new)."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)
