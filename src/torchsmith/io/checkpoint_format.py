"""The checkpoint format: its files, the manifest that seals them, and what a loaded one holds.

A checkpoint is one folder, `checkpoints/<name>/`:

| file | content |
|---|---|
| `model.safetensors` | the model's `state_dict` tensors |
| `training.pt` | optimizer, scheduler, scaler, RNG and data position (`torch.load(weights_only=True)`) |
| `config.yaml` | the resolved run config |
| `meta.json` | `step`, `epoch`, save time, versions |
| `manifest.json` | size and SHA-256 of the four files above, written last |

Writing and reading it are in `torchsmith.io.checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from torchsmith.errors import TrainingFailure, UsageError

MODEL_FILE = "model.safetensors"
TRAINING_FILE = "training.pt"
CONFIG_FILE = "config.yaml"
META_FILE = "meta.json"
MANIFEST_FILE = "manifest.json"
LATEST_FILE = "latest"
DATA_FILES = (MODEL_FILE, TRAINING_FILE, CONFIG_FILE, META_FILE)
MANIFEST_FORMAT = 1
TEMP_PREFIX = ".tmp-"
# the weights a finished run offers: its best and last checkpoints, and the final model.safetensors
WEIGHTS_CHOICES = ("best", "last", "final")


class CheckpointCorrupt(TrainingFailure):
    """A checkpoint is incomplete or does not match its manifest (exit 1)."""


class UnsafeCheckpoint(CheckpointCorrupt):
    """A checkpoint matches its manifest but holds objects that could run code on load."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped while looking for one to resume from."""


@dataclass
class Checkpoint:
    """A loaded, verified checkpoint.

    Example:
        >>> ckpt = load_checkpoint(Path("runs/a/checkpoints/last"))  # doctest: +SKIP
        >>> model.load_state_dict(ckpt.model_state)  # doctest: +SKIP
    """

    path: Path
    model_state: dict[str, torch.Tensor]
    training_state: dict[str, Any]
    config: dict[str, Any]
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def checkpoint_name(step: int) -> str:
    """Name of the periodic checkpoint saved at optimizer step `step`, e.g. `step-000123`."""
    return f"step-{step:06d}"


def manifest_bytes(entries: dict[str, Any]) -> bytes:
    # one canonical form holding its own digest: any edit of the manifest is reported
    # as such, rather than as a mismatch of the file whose entry was edited
    body = {"format": MANIFEST_FORMAT, "files": entries}
    own = hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()
    manifest = {**body, "manifest_sha256": own}
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")


PLAIN_SCALARS = (bool, int, float, str, type(None), torch.dtype, torch.device)


def plain_tensors(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors, none sharing memory (safetensors refuses aliases)."""
    tensors: dict[str, torch.Tensor] = {}
    seen_storages: set[int] = set()
    for key, value in model_state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise UsageError(
                f"model_state[{key!r}] is a {type(value).__name__}; model_state must map "
                "str keys to tensors, as `model.state_dict()` does."
            )
        tensor = value.detach().cpu().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen_storages and tensor.numel() > 0:
            # tied weights: stored twice, tied again by the module's load_state_dict
            tensor = tensor.clone()
        seen_storages.add(tensor.untyped_storage().data_ptr())
        tensors[key] = tensor
    return tensors


def check_plain(where: str, value: Any) -> None:
    """Refuse values that `torch.load(weights_only=True)` could not load back."""
    if isinstance(value, (torch.Tensor, *PLAIN_SCALARS)):
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_plain(f"{where}[{index}]", item)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            check_plain(f"{where} key {key!r}", key)
            check_plain(f"{where}[{key!r}]", item)
        return
    raise UsageError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}; checkpoints hold "
        "only tensors, numbers, strings, bools, None, lists, tuples and dicts. Convert it "
        "(e.g. `.item()` for a NumPy scalar, `torch.from_numpy` for an array)."
    )
