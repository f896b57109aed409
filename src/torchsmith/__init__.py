"""torchsmith: define custom PyTorch networks and train them fast and safely."""

from __future__ import annotations

__version__ = "0.1.0"

from torchsmith.predictor import load
from torchsmith.trainer import Trainer

__all__ = ["Trainer", "__version__", "load"]
