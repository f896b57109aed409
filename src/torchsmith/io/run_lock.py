"""One run per run directory: a used directory is refused (or emptied with --overwrite), and one
training process at a time holds an advisory lock on `RUN_DIR/.lock`.

The lock is `fcntl.flock` on an open file: the kernel drops it when the process ends,
however it ends (a kill -9 leaves no stale lock to clean up). The file holds the pid of
the process that holds it, for the message a second process gets. Where `fcntl` does
not exist (Windows) the lock is not taken.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO

from torchsmith.errors import UsageError
from torchsmith.io import rank
from torchsmith.io.files import remove_tree

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


def claim_run_dir(run_dir: Path, resume: bool, overwrite: bool, lock: RunLock) -> tuple[Path, bool]:
    """Lock the run directory and say whether to resume: asked for, or after torchrun restarted the
    processes of a run that has checkpoints. A directory holding another run is refused unless
    `resume`, or emptied with `overwrite`."""
    checkpoints = run_dir / "checkpoints"
    restarts = rank.restart_count()
    if resume and overwrite:
        raise UsageError("--resume continues the run in --run-dir and --overwrite deletes it: choose one")
    if not resume and restarts and checkpoints.is_dir() and any(p.is_dir() for p in checkpoints.iterdir()):
        print(f"restart {restarts}: resuming from the newest complete checkpoint in {run_dir}", file=sys.stderr)
        resume = True
    if resume and not checkpoints.is_dir():
        raise UsageError(f"--resume: {run_dir} has no checkpoints/ folder; name the run with --run-dir")
    overwrite = overwrite or (restarts > 0 and not resume)  # torchrun restarted this run before its first checkpoint
    lock.acquire(run_dir)
    try:
        if not resume:
            empty_run_dir(run_dir, overwrite)
    except BaseException:
        lock.release()
        raise
    return run_dir, resume


def claim_new_run_dir(base: Path, lock: RunLock, tries: int = 1000) -> Path:
    """Lock the first free folder of `base`, `base-2`, `base-3`, ...: a default run directory is
    named by the second it starts, and two runs started in the same second must not collide."""
    for n in range(1, tries + 1):
        run_dir = base if n == 1 else base.with_name(f"{base.name}-{n}")
        if occupied(run_dir):
            continue
        try:
            lock.acquire(run_dir)
        except RunInUse:
            continue
        if not occupied(run_dir):  # nobody wrote into it between the look and the lock
            return run_dir
        lock.release()
    raise UsageError(f"no free run directory among {base} and {tries - 1} numbered after it: name one with --run-dir")


def empty_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse a run directory that holds anything, or with `overwrite` delete the run it holds."""
    entries = occupied(run_dir)
    if not entries:
        return
    is_run = any(name in entries for name in ("config.yaml", "checkpoints", "summary.json"))
    if not overwrite or not is_run:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        fix = (
            "Continue that run with --resume, delete it first with --overwrite, or choose a new --run-dir."
            if is_run
            else "It is not a torchsmith run directory, so --overwrite does not delete it: choose a new --run-dir."
        )
        raise UsageError(f"run directory {run_dir} is not empty (it holds {shown}). {fix}")
    for name in entries:
        remove_tree(run_dir / name)
