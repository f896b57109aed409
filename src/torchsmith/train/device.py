"""Where training runs: the device by name, and moving nested batches onto it."""

from __future__ import annotations

from typing import Any

import torch

from torchsmith.errors import UsageError


def resolve_device(name: str) -> torch.device:
    """ "auto" picks cuda, then mps, then cpu; anything else must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device must be auto, cpu, cuda, cuda:N or mps, got '{name}'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return device


def to_device(value: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Tensors (also inside tuples, lists and dicts) on `device`; 4-D ones channels-last if asked."""
    if isinstance(value, torch.Tensor):
        if value.device != device:
            value = value.to(device, non_blocking=True)
        if channels_last and value.dim() == 4:
            value = value.contiguous(memory_format=torch.channels_last)
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device, channels_last) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device, channels_last) for k, v in value.items()}
    return value


def default_generator(device: torch.device) -> torch.Generator:
    """The device's default random generator (what dropout on that device draws from)."""
    return torch.cuda.default_generators[device.index or 0] if device.type == "cuda" else torch.default_generator
