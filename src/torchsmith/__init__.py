"""torchsmith: define custom PyTorch networks and train them fast and safely.

`Trainer` and `load` are imported on first use (PEP 562), so commands that never train,
such as `torchsmith --help`, start without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchsmith._version import __version__

if TYPE_CHECKING:
    from torchsmith.after.predictor import load
    from torchsmith.train.trainer import Trainer

__all__ = ["Trainer", "__version__", "load"]


def __getattr__(name: str) -> Any:
    if name == "Trainer":
        from torchsmith.train.trainer import Trainer

        return Trainer
    if name == "load":
        from torchsmith.after.predictor import load

        return load
    raise AttributeError(f"module 'torchsmith' has no attribute {name!r}")
