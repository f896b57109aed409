"""Where the data caches live and how they are written: one root, private files, unique temporaries.

The image store and the audio features share one root (`TORCHSMITH_CACHE`, else
`$XDG_CACHE_HOME/torchsmith`, else `~/.cache/torchsmith`), read when a cache is opened so a
change of the variable takes effect without a restart. Cache folders are created for the user
only (0o700) and files written 0o600: decoded pixels and features are the user's data. A
temporary name holds the process id and random bits, so two processes (or two runs on a shared
file system) never write the same temporary; the finished entry is renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

FOLDER_MODE = 0o700
FILE_MODE = 0o600


def cache_root() -> Path:
    """The folder every data cache lives under, resolved (an absolute path)."""
    chosen = os.environ.get("TORCHSMITH_CACHE")
    if chosen:
        return Path(chosen).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return (Path(base).expanduser() / "torchsmith").resolve()


def private_folder(path: Path) -> Path:
    """Create `path` and any missing parents for the user only (0o700); existing folders are left
    as they are (the user's own ~/.cache is theirs to set)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it in between
            folder.mkdir(mode=FOLDER_MODE)
    return path


def temporary_name(path: Path) -> Path:
    """A unique hidden sibling of `path` to write before renaming over it: pid plus random bits."""
    return path.with_name(f".tmp-{path.name}-{os.getpid()}-{secrets.token_hex(4)}")


def open_private(path: Path) -> int:
    """A new file (appended to if it exists) readable and writable by the user only: a descriptor."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
