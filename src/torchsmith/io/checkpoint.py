"""Checkpoints you can trust: atomic, verified by SHA-256, loaded without unpickling code.

The files of a checkpoint folder are described in `torchsmith.io.checkpoint_format`.
The folder is written under a temporary name and renamed into place, then the
`checkpoints/latest` file is updated, so a crash at any moment leaves the previous
checkpoint complete. Loading verifies the manifest before reading anything.

Example:
    >>> import tempfile, torch
    >>> folder = Path(tempfile.mkdtemp())
    >>> path = save_checkpoint(folder, checkpoint_name(10), model_state={"w": torch.ones(2)},
    ...                        training_state={"position": 3}, config={}, meta={"step": 10})
    >>> find_resumable(folder).meta["step"]
    10
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import yaml
from safetensors import SafetensorError

from torchsmith._version import __version__
from torchsmith.errors import TrainingFailure, UsageError
from torchsmith.io.checkpoint_format import (
    CONFIG_FILE,
    DATA_FILES,
    LATEST_FILE,
    MANIFEST_FILE,
    META_FILE,
    MODEL_FILE,
    TEMP_PREFIX,
    TRAINING_FILE,
    Checkpoint,
    CheckpointCorrupt,
    CheckpointWarning,
    UnsafeCheckpoint,
    check_plain,
    checkpoint_name,
    manifest_bytes,
    plain_tensors,
)
from torchsmith.io.files import (
    atomic_write_text,
    fsync_dir,
    remove_tree,
    safe_load_yaml,
    sha256_file,
    write_and_fsync,
    write_failure,
)

# The checkpoint API: the format's names are re-exported so one import serves a user.
__all__ = [
    "DATA_FILES",
    "MANIFEST_FILE",
    "Checkpoint",
    "CheckpointCorrupt",
    "CheckpointWarning",
    "UnsafeCheckpoint",
    "checkpoint_name",
    "find_resumable",
    "load_checkpoint",
    "plain_tensors",
    "save_checkpoint",
    "verify_checkpoint",
]

_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
# only periodic checkpoints are subject to `keep_last`; "best", "last" and others never are
_STEP_PATTERN = re.compile(r"step-(\d+)")
# temp folders: ".tmp-<name>-<pid>" (being written), "...-old" (set aside), "...-del" (deleting)
_TEMP_PATTERN = re.compile(r"\.tmp-([A-Za-z0-9][A-Za-z0-9_-]*?)-\d+(-old)?")


def save_checkpoint(
    checkpoints_dir: Path,
    name: str,
    *,
    model_state: dict[str, torch.Tensor],
    training_state: dict[str, Any],
    config: dict[str, Any],
    meta: dict[str, Any],
    keep_last: int | None = None,
) -> Path:
    """Write checkpoint `checkpoints_dir/name/` atomically and point `latest` at it.

    `meta` must hold the optimizer `step`. With `keep_last`, only the newest
    `keep_last` periodic `step-*` checkpoints are kept once the new one is complete.
    A disk error removes the partial folder, keeps the previous checkpoint and
    `latest` as they were, and raises `TrainingFailure`.

    Example:
        >>> save_checkpoint(Path("runs/a/checkpoints"), "last", model_state=model.state_dict(),
        ...                 training_state={"optimizer": opt.state_dict()}, config={},
        ...                 meta={"step": 100, "epoch": 2})  # doctest: +SKIP
    """
    checkpoints_dir = Path(checkpoints_dir)
    _check_save_arguments(name, meta, keep_last)
    tensors = plain_tensors(model_state)
    check_plain("training_state", training_state)
    texts = _serialize_texts(name, config, meta)
    final = checkpoints_dir / name
    temp = checkpoints_dir / f"{TEMP_PREFIX}{name}-{os.getpid()}"
    try:
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
        remove_tree(temp)
        temp.mkdir()
        _write_files(temp, tensors, training_state, texts)
        _publish(temp, final)
        atomic_write_text(checkpoints_dir / LATEST_FILE, name + "\n")
    except (OSError, SafetensorError) as error:  # safetensors reports a failed write as its own error
        remove_tree(temp)
        failure = write_failure(final / MODEL_FILE, error, sum(t.numel() * t.element_size() for t in tensors.values()))
        raise TrainingFailure(
            f"could not save checkpoint {final}: {failure}. The previous checkpoint was left "
            f"as it was; free disk space or fix the permissions of {checkpoints_dir}."
        ) from error
    if keep_last is not None:
        _apply_retention(checkpoints_dir, keep_last, protect=name)
    return final


def _check_save_arguments(name: str, meta: dict[str, Any], keep_last: int | None) -> None:
    if not _NAME_PATTERN.fullmatch(name) or name == LATEST_FILE:
        raise UsageError(
            f"checkpoint name {name!r} is not allowed: use letters, digits, '-' and '_' "
            f"(not starting with '-' or '_'), and not {LATEST_FILE!r}."
        )
    if not isinstance(meta.get("step"), int) or isinstance(meta.get("step"), bool):
        raise UsageError(f"meta must hold the optimizer step as an int, got meta={meta!r}.")
    if keep_last is not None and keep_last < 1:
        raise UsageError(f"keep_last must be at least 1 (or None to keep all), got {keep_last}.")


def _serialize_texts(name: str, config: dict, meta: dict) -> dict[str, str]:
    versions = {"torch_version": torch.__version__, "torchsmith_version": __version__}
    meta = {**meta, "name": name, "saved_at": time.time(), **versions}
    try:
        return {
            CONFIG_FILE: yaml.safe_dump(config, sort_keys=False),
            META_FILE: json.dumps(meta, indent=2) + "\n",
        }
    except (yaml.YAMLError, TypeError, ValueError) as error:
        raise UsageError(f"config and meta must hold plain values (numbers, strings, lists, dicts): {error}") from error


def _write_files(
    folder: Path,
    tensors: dict[str, torch.Tensor],
    training_state: dict[str, Any],
    texts: dict[str, str],
) -> None:
    safetensors.torch.save_file(tensors, str(folder / MODEL_FILE), metadata={"format": "pt"})
    with open(folder / MODEL_FILE, "rb+") as file:  # save_file does not fsync
        os.fsync(file.fileno())
    with open(folder / TRAINING_FILE, "wb") as file:
        torch.save(training_state, file)
        file.flush()
        os.fsync(file.fileno())
    for file_name, text in texts.items():
        write_and_fsync(folder / file_name, text.encode("utf-8"))
    _write_manifest(folder)  # last: a folder with a manifest holds every file it lists
    fsync_dir(folder)


def _write_manifest(folder: Path) -> None:
    entries = {
        file_name: {
            "sha256": sha256_file(folder / file_name),
            "size": (folder / file_name).stat().st_size,
        }
        for file_name in DATA_FILES
    }
    write_and_fsync(folder / MANIFEST_FILE, manifest_bytes(entries))


def _publish(temp: Path, final: Path) -> None:
    """Rename the finished `temp` folder to `final`, replacing an older `final` safely."""
    aside = temp.with_name(temp.name + "-old")
    if final.exists():
        # a folder cannot be renamed over a non-empty one: move the old one aside first
        # and delete it only once the new one is in place
        os.rename(final, aside)
        try:
            os.rename(temp, final)
        except OSError:
            os.rename(aside, final)
            raise
    else:
        os.rename(temp, final)
    fsync_dir(final.parent)
    remove_tree(aside)


def _apply_retention(checkpoints_dir: Path, keep_last: int, protect: str) -> None:
    steps = sorted(
        (int(match.group(1)), entry.name)
        for entry in checkpoints_dir.iterdir()
        if entry.is_dir() and (match := _STEP_PATTERN.fullmatch(entry.name))
    )
    for _, name in steps[:-keep_last]:
        if name == protect:
            continue
        # rename first: a crash during deletion then leaves a temp folder, not a broken checkpoint
        doomed = checkpoints_dir / f"{TEMP_PREFIX}{name}-{os.getpid()}-del"
        try:
            os.rename(checkpoints_dir / name, doomed)
        except OSError as error:
            warnings.warn(
                f"could not delete old checkpoint {name}: {error}",
                CheckpointWarning,
                stacklevel=3,
            )
            continue
        remove_tree(doomed)


def verify_checkpoint(path: Path) -> None:
    """Check every file of checkpoint `path` against its manifest; raise `CheckpointCorrupt`."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    try:
        raw = manifest_path.read_bytes()
    except FileNotFoundError:
        raise CheckpointCorrupt(f"checkpoint {path} is incomplete: it has no {MANIFEST_FILE}.") from None
    try:
        entries = json.loads(raw)["files"]
        valid = (
            raw == manifest_bytes(entries)
            and sorted(entries) == sorted(DATA_FILES)
            and all(sorted(entry) == ["sha256", "size"] for entry in entries.values())
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        valid = False
    if not valid:
        raise CheckpointCorrupt(f"checkpoint {manifest_path} is damaged or was edited by hand.")
    for file_name in DATA_FILES:
        _verify_file(path / file_name, entries[file_name])


def _verify_file(file: Path, expected: dict[str, Any]) -> None:
    if not file.is_file():
        raise CheckpointCorrupt(f"checkpoint file {file} is missing.")
    size, digest = file.stat().st_size, sha256_file(file)
    if size != expected["size"] or digest != expected["sha256"]:
        raise CheckpointCorrupt(
            f"checkpoint file {file} is corrupt: expected {expected['size']} bytes with "
            f"sha256 {expected['sha256']}, found {size} bytes with sha256 {digest}."
        )


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Verify checkpoint folder `path` against its manifest, then load it without running code.

    Example:
        >>> ckpt = load_checkpoint(Path("runs/a/checkpoints/step-000100"))  # doctest: +SKIP
        >>> optimizer.load_state_dict(ckpt.training_state["optimizer"])  # doctest: +SKIP
    """
    path = Path(path)
    verify_checkpoint(path)
    model_state = safetensors.torch.load_file(str(path / MODEL_FILE), device=str(map_location))
    try:
        training_state = torch.load(path / TRAINING_FILE, map_location=map_location, weights_only=True)
    except Exception as error:
        # matched by name: importing pickle anywhere in the package is banned by a test
        if type(error).__name__ != "UnpicklingError":
            raise
        raise UnsafeCheckpoint(
            f"refused to load {path / TRAINING_FILE}: it holds objects other than tensors and "
            f"plain containers, and unpickling them could run code. ({str(error).splitlines()[0]})"
        ) from error
    try:
        config = safe_load_yaml(path / CONFIG_FILE) or {}
    except UsageError as error:
        raise UnsafeCheckpoint(f"refused to load {path / CONFIG_FILE}: {error}") from error
    meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    if not isinstance(meta.get("step"), int):
        raise CheckpointCorrupt(f"{path / META_FILE} has no integer 'step'.")
    return Checkpoint(path, model_state, training_state, config, meta)


def find_resumable(checkpoints_dir: Path) -> Checkpoint:
    """Load the newest complete, verified checkpoint in `checkpoints_dir`.

    Candidates are ordered by their `meta.json` step, the one named by `latest` first
    among equals. A candidate that fails verification is skipped with a
    `CheckpointWarning` naming what was wrong. Leftover `.tmp-*` entries from
    interrupted saves are removed, so call this while no other process saves here.

    Example:
        >>> ckpt = find_resumable(Path("runs/a/checkpoints"))  # doctest: +SKIP
    """
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        raise TrainingFailure(
            f"no checkpoint to resume from: {checkpoints_dir} does not exist. Check the run "
            "folder, or start without --resume."
        )
    _recover_interrupted(checkpoints_dir)
    problems: list[str] = []
    for path in _candidates(checkpoints_dir):
        try:
            return load_checkpoint(path)
        except CheckpointCorrupt as error:
            problems.append(str(error))
            warnings.warn(
                f"skipping checkpoint {path.name}: {error}",
                CheckpointWarning,
                stacklevel=2,
            )
    found = "; ".join(problems) if problems else "no checkpoint folders"
    raise TrainingFailure(
        f"no complete, verified checkpoint in {checkpoints_dir} ({found}). Start without "
        "--resume, or restore a checkpoint folder from a backup."
    )


def _recover_interrupted(checkpoints_dir: Path) -> None:
    """Finish or undo a save that was killed while replacing a folder, then drop temp entries.

    `_publish` moves the old folder aside before renaming the new one into place; a
    kill between the two renames leaves neither under the real name. A new folder
    that verifies is rolled forward, otherwise the old one is put back.
    """
    # sorted: ".tmp-last-7" (new) comes before ".tmp-last-7-old" (set aside)
    for entry in sorted(checkpoints_dir.glob(f"{TEMP_PREFIX}*")):
        match = _TEMP_PATTERN.fullmatch(entry.name)
        final = checkpoints_dir / match.group(1) if match else None
        is_new = match is not None and not match.group(2)
        if final is None or not entry.is_dir() or final.exists():
            remove_tree(entry)
        elif is_new and not _verifies(entry):
            remove_tree(entry)  # killed while writing: the old folder is still aside
        else:
            _rename_or_warn(entry, final)


def _rename_or_warn(source: Path, target: Path) -> None:
    try:
        os.rename(source, target)
    except OSError as error:  # e.g. a read-only copy of a run: report, keep looking
        message = f"could not move {source.name} back to {target}: {error}"
        warnings.warn(message, CheckpointWarning, stacklevel=4)


def _verifies(path: Path) -> bool:
    try:
        verify_checkpoint(path)
    except CheckpointCorrupt:
        return False
    return True


def _candidates(checkpoints_dir: Path) -> list[Path]:
    latest_file = checkpoints_dir / LATEST_FILE
    latest = latest_file.read_text(encoding="utf-8").strip() if latest_file.is_file() else ""
    folders = [p for p in checkpoints_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if latest and latest not in {p.name for p in folders}:
        warnings.warn(
            f"{latest_file} names {latest!r}, which does not exist; using the newest other checkpoint.",
            CheckpointWarning,
            stacklevel=3,
        )
    return sorted(folders, key=lambda p: (_meta_step(p), p.name == latest), reverse=True)


def _meta_step(path: Path) -> float:
    """The step in `meta.json`; infinite where unreadable, so the damage is reported first."""
    try:
        step = json.loads((path / META_FILE).read_text(encoding="utf-8"))["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return math.inf
    return step if isinstance(step, int) else math.inf
