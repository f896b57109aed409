"""Consent before a replayed config imports user code.

A model named `file.py:Class` or `package.module:Class` is Python code: importing it runs
that code. Named on the command line (`--model`) it is the user's own choice. Named only
inside a config file or a run directory (`train --config`, `--resume`, `evaluate`,
`predict`, `export`, `generate`, `torchsmith.load`), it is whatever the person who wrote
that file chose, so it is refused unless the user passes `--trust-model-code`
(`trust_model_code=True` in Python).

Why a flag and not only a hash: a hash recorded in the run is written by whoever made the
run, so a run made to harm carries a matching hash of its own file. A hash proves that the
file is the one trained with, not that it is safe; only the person running the command can
say that. The SHA-256 recorded at training time (`model_source.json`) is still checked
once the code is trusted, so a model file edited since training is reported.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from torchsmith.errors import UsageError
from torchsmith.io.files import read_json, sha256_file
from torchsmith.models.zoo import is_zoo

SOURCE_FILE = "model_source.json"  # in the run directory: which code built the model, and its hash


def is_user_code(name: str) -> bool:
    """`file.py:Class` or `package.module:Class`: a name that imports code. Built-in names have no
    ':', and zoo names (`timm:NAME`, `torchvision:NAME`) build from an installed library."""
    return ":" in name and not is_zoo(name)


def code_file(spec: str) -> Path | None:
    """The file importing `spec` would run: the .py file, or the module's file found without importing it."""
    target = spec.rpartition(":")[0]
    if target.endswith(".py"):
        return Path(target).resolve()
    try:
        found = importlib.util.find_spec(target)
    except (ImportError, ValueError, TypeError):  # a parent package is missing, or the name is malformed
        return None
    return Path(found.origin).resolve() if found is not None and found.origin else None


def describe(spec: str) -> str:
    file = code_file(spec)
    return f"'{spec}' (it would run {file})" if file is not None else f"'{spec}'"


def require_trust(spec: str, trusted: bool, where: str) -> None:
    """UsageError unless a user-code model named by `where` (a config file or run) is trusted."""
    if trusted or not is_user_code(spec):
        return
    raise UsageError(
        f"{where} names user code as its model: {describe(spec)}. Importing it runs that file, and a "
        f"config or run directory may come from someone else, so torchsmith does not import it on its "
        f"own. If you trust the code, pass --trust-model-code (in Python: trust_model_code=True); or "
        f"name the model yourself with --model."
    )


def source_record(spec: str) -> dict[str, Any] | None:
    """What `model_source.json` holds for a user-code model: the spec, its file and SHA-256."""
    if not is_user_code(spec):
        return None
    file = code_file(spec)
    if file is None or not file.is_file():
        return {"model": spec, "file": None, "sha256": None}
    return {"model": spec, "file": str(file), "sha256": sha256_file(file)}


def check_recorded_hash(spec: str, run_dir: Path) -> None:
    """After consent: warn when the model file differs from the one the run was trained with."""
    record_path = run_dir / SOURCE_FILE
    if not is_user_code(spec) or not record_path.is_file():
        return
    try:
        recorded = read_json(record_path).get("sha256")
    except UsageError:
        return
    file = code_file(spec)
    if not recorded or file is None or not file.is_file():
        return
    now = sha256_file(file)
    if now != recorded:
        print(
            f"warning: {file} changed since run {run_dir} was trained (SHA-256 {recorded[:12]}... then, "
            f"{now[:12]}... now); the model it builds may not be the one the weights were trained for",
            file=sys.stderr,
        )
