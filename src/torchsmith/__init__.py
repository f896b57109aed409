"""torchsmith: define custom PyTorch networks and train them fast and safely."""

from __future__ import annotations

__version__ = "0.1.0"

from torchsmith.trainer import Trainer  # noqa: E402

__all__ = ["Trainer", "__version__"]
