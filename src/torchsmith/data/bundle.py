"""What every dataset reader returns: the splits plus what the model and the run need to know."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class DataInfo:
    """Facts about a dataset that size the model and travel with the run.

    `task` is "classification" (one label per sample), "multilabel" (several labels per
    sample, multi-hot targets) or "sequence" (one target per position, e.g.
    next-character prediction). For "sequence", `num_classes` is the
    vocabulary size. `preprocessing` is JSON-serialisable (normalisation constants,
    vocabulary, audio feature settings) and is saved beside the weights so evaluate,
    predict and export rebuild exactly what training saw.

    Example:
        >>> DataInfo(modality="image", num_classes=10, input_shape=(1, 28, 28))
        DataInfo(modality='image', num_classes=10, ...)
    """

    modality: str  # "image" | "text" | "audio"
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: list[str] = field(default_factory=list)
    task: str = "classification"
    preprocessing: dict[str, Any] = field(default_factory=dict)
    problems: list[dict[str, Any]] = field(default_factory=list)  # e.g. files skipped as unreadable

    def __post_init__(self) -> None:
        if not self.class_names and self.task == "classification":
            self.class_names = [str(i) for i in range(self.num_classes)]


@runtime_checkable
class MemorySource(Protocol):
    """A split held in memory that builds whole batches itself.

    `get_batch` receives the sample indices of one batch (a 1-D int64 tensor) and a
    generator seeded from `(seed, epoch, step)`; it returns `(inputs, targets)` on the
    source's device, already normalised, and augmented when `train` is true. All
    randomness must come from `generator`, so a batch can be rebuilt exactly (resume,
    NaN replay, distributed slicing).
    """

    def __len__(self) -> int: ...

    def get_batch(
        self, indices: torch.Tensor, generator: torch.Generator | None, train: bool
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def to(self, device: torch.device) -> MemorySource: ...


@dataclass
class DataBundle:
    """train/val/test splits (a MemorySource or a torch Dataset each) plus `info`."""

    train: Any
    val: Any | None
    test: Any | None
    info: DataInfo
