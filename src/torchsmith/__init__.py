"""torchsmith: define custom PyTorch networks and train them fast and safely."""

from __future__ import annotations

__version__ = "0.1.0"
