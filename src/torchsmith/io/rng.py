"""Capture and restore the global random generators (Python, NumPy, torch, every CUDA device).

Saved in checkpoints as tensors and plain values only, so they load with `weights_only=True`.
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import torch

_NUMPY_STATE_KEYS = (
    "bit_generator",
    "keys",
    "position",
    "has_gauss",
    "cached_gaussian",
)


class RngWarning(UserWarning):
    """The saved and the present CUDA device counts differ."""


def capture_rng_state() -> dict[str, Any]:
    """The state of Python's, NumPy's, torch's and every CUDA device's global generators.

    Holds only tensors and plain values, so it loads with `weights_only=True`.

    Example:
        >>> state = capture_rng_state(); a = torch.rand(1)
        >>> restore_rng_state(state); bool(torch.rand(1) == a)
        True
    """
    version, internal, gauss_next = random.getstate()
    legacy_state = np.random.get_state(legacy=True)
    assert isinstance(legacy_state, tuple)  # the global MT19937 gives the legacy tuple
    name, keys, position, has_gauss, cached_gaussian = legacy_state
    state: dict[str, Any] = {
        "python": {
            "version": version,
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        # NumPy's arrays and scalars would need unpickling code: store torch and plain types
        "numpy": {
            "bit_generator": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore generators captured by `capture_rng_state` (see there for an example)."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss_next"]))
    numpy = dict(state["numpy"])
    numpy["keys"] = numpy["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state(tuple(numpy[key] for key in _NUMPY_STATE_KEYS))
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available():
        count = min(len(cuda_states), torch.cuda.device_count())
        if count != len(cuda_states) or count != torch.cuda.device_count():
            warnings.warn(
                f"the checkpoint has RNG states for {len(cuda_states)} CUDA devices but "
                f"{torch.cuda.device_count()} are visible; restoring the first {count}.",
                RngWarning,
                stacklevel=2,
            )
        for device, device_state in enumerate(cuda_states[:count]):
            torch.cuda.set_rng_state(device_state.cpu(), device)
