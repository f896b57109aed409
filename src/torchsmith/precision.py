"""Numeric precision by name: the autocast context for `fp32`, `bf16` or `fp16`, in one place
for the Trainer and the doctor's replay (which must compute exactly as training did)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device) -> AbstractContextManager[Any]:
    """`torch.autocast` to bf16 or fp16 on the device's type; no context for fp32.

    Example:
        >>> with autocast("bf16", torch.device("cpu")):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.bfloat16
    """
    if precision not in DTYPES:
        return nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])
