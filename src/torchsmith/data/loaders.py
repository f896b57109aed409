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
from torchsmith.errors import UsageError

Batch = tuple[Any, Any, torch.Tensor | None]


class MemoryBatches:
    """Batches built by a MemorySource on the device, in the order of a BatchOrder."""

    on_device = True  # its batches need no move before the forward pass

    def __init__(self, source: MemorySource, order: BatchOrder, train: bool, seed: int) -> None:
        self.source, self.order, self.train, self.seed = source, order, train, seed
        self.device = _source_device(source)
        self.draws = train and _draws_randomness(source)  # no generator to build for plain tensors
        self.shared_draws = self.draws and order.world_size > 1

    def __len__(self) -> int:
        return len(self.order)

    @property
    def num_samples(self) -> int:
        return len(self.source)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        order = self.order
        for position, batch in enumerate(order.global_batches(epoch, start), start=start):
            if self.shared_draws:
                # The augmentation draws one value per sample of the batch it is given: building the
                # whole global batch and keeping this rank's rows gives every sample the draw it gets
                # in a single process, for any MemorySource, at the cost of building W times more rows.
                inputs, targets, _ = self.batch(epoch, position, batch)
                yield _rows(order, inputs), _rows(order, targets), order.rank_slice(batch)
            elif len(indices := order.rank_slice(batch)) > 0:  # evaluation: a rank may get no sample
                yield self.batch(epoch, position, indices)

    def batch(self, epoch: int, position: int, indices: torch.Tensor) -> Batch:
        """Rebuild one batch exactly: same indices, same augmentation draw."""
        generator = step_generator(self.seed, epoch, position, self.device) if self.draws else None
        inputs, targets = self.source.get_batch(indices, generator, self.train)
        return inputs, targets, indices


class DatasetBatches:
    """A map-style Dataset through DataLoader workers, in the order of a BatchOrder."""

    def __init__(
        self,
        dataset: Dataset,
        order: BatchOrder,
        train: bool,
        seed: int,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.dataset, self.order, self.train, self.seed = dataset, order, train, seed
        self.num_workers, self.pin_memory = num_workers, pin_memory

    def __len__(self) -> int:
        return len(self.order)

    @property
    def num_samples(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        batches = [b.tolist() for b in self.order.epoch_batches(epoch, start)]
        batches = [b for b in batches if b]  # evaluation under DDP: a rank may get no sample of a batch
        # Worker seeds follow (seed, epoch, start), so random transforms replay on resume; each rank
        # draws its own stream (per-sample transforms in workers cannot match a single process anyway).
        counters = (2, epoch, start) if self.order.world_size == 1 else (2, epoch, start, self.order.rank)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, *counters))
        loader = DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            generator=generator,
            persistent_workers=False,
        )
        for indices, (inputs, targets) in zip(batches, loader, strict=True):
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


def make_batches(
    data: Any,
    *,
    batch_size: int,
    train: bool,
    seed: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    group_by_length: bool = False,
) -> MemoryBatches | DatasetBatches | LoaderBatches:
    """Wrap `(inputs, targets)` tensors, a MemorySource, a Dataset or a DataLoader.

    `group_by_length` batches samples of similar length together (in-memory sources with a
    `lengths` tensor, such as tokenized text), to save padding."""
    lengths = getattr(data, "lengths", None) if group_by_length else None
    if group_by_length and not (isinstance(data, MemorySource) and isinstance(lengths, torch.Tensor)):
        raise UsageError(
            "group_by_length needs in-memory sequence data that knows its lengths (the built-in text "
            f"datasets), not {type(data).__name__}; leave group_by_length (train.group_by_length) off for this data"
        )
    if isinstance(data, DataLoader):
        if world_size > 1:
            raise UsageError(
                "under torchrun, pass a Dataset or (inputs, targets) tensors rather than a "
                "DataLoader: torchsmith gives each process its slice of every global batch"
            )
        return LoaderBatches(data)
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        data = TensorPairs(data[0], data[1])
    if isinstance(data, MemorySource):
        order = BatchOrder(
            len(data),
            batch_size,
            shuffle=train,
            seed=seed,
            rank=rank,
            world_size=world_size,
            drop_last=_drops_last(len(data), batch_size, train, world_size),
            lengths=lengths,
        )
        batches_class = getattr(data, "batches_class", MemoryBatches)  # a mapped store gathers ahead
        return batches_class(data.to(device), order, train, seed)
    if isinstance(data, Dataset):
        size = len(data)  # type: ignore[arg-type]  # map-style datasets define __len__
        order = BatchOrder(
            size,
            batch_size,
            shuffle=train,
            seed=seed,
            rank=rank,
            world_size=world_size,
            drop_last=_drops_last(size, batch_size, train, world_size),
        )
        return DatasetBatches(data, order, train, seed, num_workers, pin_memory=device.type == "cuda")
    raise TypeError(
        f"training data must be a DataLoader, a Dataset or an (inputs, targets) pair of tensors, "
        f"got {type(data).__name__}"
    )


def _drops_last(num_samples: int, batch_size: int, train: bool, world_size: int) -> bool:
    # Under DDP every rank needs a sample of each training batch (an empty slice has no mean loss to
    # join the gradient average), so a last batch smaller than the number of processes is left out.
    return train and world_size > 1 and 0 < num_samples % batch_size < world_size


def _draws_randomness(source: MemorySource) -> bool:
    # Sources known to build their batches without random draws need not build the global batch.
    if isinstance(source, TensorPairs):
        return False
    ops = getattr(source, "ops", None)  # images: the parsed ops (a larger store adds a random crop)
    return bool(ops) if ops is not None else getattr(source, "augment", None) != "none"


def _rows(order: BatchOrder, value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return order.rank_slice(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_rows(order, v) for v in value)
    if isinstance(value, dict):
        return {k: _rows(order, v) for k, v in value.items()}
    return value


def _source_device(source: MemorySource) -> torch.device:
    for value in vars(source).values():
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")
