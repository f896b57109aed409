"""Batches for the loop: one interface over in-memory sources, Datasets and DataLoaders.

Each yields `(inputs, targets, indices)` for the batches of an epoch from a position, so a
resumed run continues mid-epoch; `indices` are the dataset indices of the batch (None
when the user's own DataLoader decides the order).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from torchsmith.data.bundle import MemorySource
from torchsmith.data.memory import TensorPairs
from torchsmith.data.order import BatchOrder, derive_seed, step_generator

Batch = tuple[Any, Any, torch.Tensor | None]


class MemoryBatches:
    """Batches built by a MemorySource on the device, in the order of a BatchOrder."""

    def __init__(self, source: MemorySource, order: BatchOrder, train: bool, seed: int) -> None:
        self.source, self.order, self.train, self.seed = source, order, train, seed
        self.device = _source_device(source)

    def __len__(self) -> int:
        return len(self.order)

    @property
    def num_samples(self) -> int:
        return len(self.source)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        for position, indices in enumerate(self.order.epoch_batches(epoch, start), start=start):
            yield self.batch(epoch, position, indices)

    def batch(self, epoch: int, position: int, indices: torch.Tensor) -> Batch:
        """Rebuild one batch exactly: same indices, same augmentation draw."""
        generator = step_generator(self.seed, epoch, position, self.device) if self.train else None
        inputs, targets = self.source.get_batch(indices, generator, self.train)
        return inputs, targets, indices


class DatasetBatches:
    """A map-style Dataset through DataLoader workers, in the order of a BatchOrder."""

    def __init__(self, dataset: Dataset, order: BatchOrder, train: bool, seed: int,
                 num_workers: int = 0, pin_memory: bool = False) -> None:
        self.dataset, self.order, self.train, self.seed = dataset, order, train, seed
        self.num_workers, self.pin_memory = num_workers, pin_memory

    def __len__(self) -> int:
        return len(self.order)

    @property
    def num_samples(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        batches = [b.tolist() for b in self.order.epoch_batches(epoch, start)]
        # Worker seeds follow (seed, epoch, start), so random transforms replay on resume.
        generator = torch.Generator().manual_seed(derive_seed(self.seed, 2, epoch, start))
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                            pin_memory=self.pin_memory, generator=generator,
                            persistent_workers=False)
        for indices, (inputs, targets) in zip(batches, loader):
            yield inputs, targets, torch.tensor(indices)


class LoaderBatches:
    """The user's own DataLoader, used as given; a resume skips the consumed batches."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_samples(self) -> int:
        return len(self.loader.dataset)  # type: ignore[arg-type]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        for position, batch in enumerate(self.loader):
            if position >= start:
                inputs, targets = batch[0], batch[1]
                yield inputs, targets, None


def make_batches(data: Any, *, batch_size: int, train: bool, seed: int, device: torch.device,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0):  # noqa: ANN201
    """Wrap `(inputs, targets)` tensors, a MemorySource, a Dataset or a DataLoader."""
    if isinstance(data, DataLoader):
        return LoaderBatches(data)
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        data = TensorPairs(data[0], data[1])
    if isinstance(data, MemorySource):
        order = BatchOrder(len(data), batch_size, shuffle=train, seed=seed, rank=rank, world_size=world_size)
        return MemoryBatches(data.to(device), order, train, seed)
    if isinstance(data, Dataset):
        order = BatchOrder(len(data), batch_size, shuffle=train, seed=seed,  # type: ignore[arg-type]
                           rank=rank, world_size=world_size)
        return DatasetBatches(data, order, train, seed, num_workers, pin_memory=device.type == "cuda")
    raise TypeError(
        f"training data must be a DataLoader, a Dataset or an (inputs, targets) pair of tensors, "
        f"got {type(data).__name__}"
    )


def _source_device(source: MemorySource) -> torch.device:
    for value in vars(source).values():
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")
