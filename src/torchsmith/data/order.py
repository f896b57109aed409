"""Data order as explicit state: given (seed, epoch), the sample indices of every batch.

Randomness is derived from counters, not from a global stream: the permutation of an
epoch depends only on `(seed, epoch)`, and the augmentation of a step only on
`(seed, epoch, step)`. Resuming, replaying a failing batch and splitting a batch across
ranks therefore just compute the same thing again.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

_MASK = (1 << 63) - 1
# Batches per pool sorted by length when grouping by length (as the Hugging Face Trainer's
# group_by_length): larger pools waste less padding, smaller ones keep batches more random.
GROUP_BATCHES = 50


def derive_seed(seed: int, *counters: int) -> int:
    """Mix a base seed with counters into a new 63-bit seed (splitmix64 finaliser)."""
    value = seed & _MASK
    for counter in counters:
        value = (value ^ (counter + 0x9E3779B97F4A7C15 + (value << 6) + (value >> 2))) & _MASK
        value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK
        value ^= value >> 31
    return value


def step_generator(seed: int, epoch: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator for one step's randomness (augmentation, window draws)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(seed, 1, epoch, step))
    return generator


class BatchOrder:
    """Yields the sample indices of each global batch of an epoch, then this rank's slice.

    Example:
        >>> order = BatchOrder(10, batch_size=4, seed=0)
        >>> [b.tolist() for b in order.epoch_batches(0)]  # doctest: +SKIP
        [[3, 7, 0, 9], [1, 4, 2, 8], [6, 5]]

    With `lengths` (one per sample, e.g. tokens per sentence), shuffled batches are made
    of samples of similar length, which saves the padding of variable-length data.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        lengths: torch.Tensor | None = None,
    ) -> None:
        if num_samples <= 0:
            raise ValueError("the dataset is empty: there is nothing to iterate over")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        if lengths is not None and len(lengths) != num_samples:
            raise ValueError(f"got {len(lengths)} lengths for {num_samples} samples")
        self.lengths = None if lengths is None else lengths.cpu()

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def permutation(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_samples)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, 0, epoch))
        order = torch.randperm(self.num_samples, generator=generator)
        if self.lengths is None:
            return order
        return self._grouped_by_length(order, generator)

    def _grouped_by_length(self, order: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        # Pools of GROUP_BATCHES shuffled batches are sorted by length and cut into batches, whose
        # order is shuffled again: batches of similar lengths carry little padding, while every
        # batch still draws from a random pool. The last, smaller batch stays last.
        pool = self.batch_size * GROUP_BATCHES
        pool_of = torch.arange(self.num_samples) // pool
        lengths = self.lengths[order]  # type: ignore[index]  # only called with lengths
        order = order[torch.argsort(pool_of * (int(lengths.max()) + 1) + lengths, stable=True)]
        full = self.num_samples // self.batch_size * self.batch_size
        batches = order[:full].view(-1, self.batch_size)
        shuffled = batches[torch.randperm(len(batches), generator=generator)].flatten()
        return torch.cat([shuffled, order[full:]])

    def batch_size_at(self, position: int) -> int:
        """Samples in global batch `position` of an epoch (the last one may hold fewer)."""
        return min(self.batch_size, self.num_samples - position * self.batch_size)

    def global_batches(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """Indices of the whole batches `start, start+1, ...` of `epoch`, before the rank slice."""
        order = self.permutation(epoch)
        for position in range(start, len(self)):
            yield order[position * self.batch_size : (position + 1) * self.batch_size]

    def epoch_batches(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """Indices of this rank's part of batches `start, start+1, ...` of `epoch`."""
        for batch in self.global_batches(epoch, start):
            yield self.rank_slice(batch)

    def rank_slice(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous part of a batch's rows (its indices, or tensors built from them)."""
        # Contiguous equal chunks, so the mean of per-rank mean losses is the global mean.
        if self.world_size == 1:
            return batch
        chunks = batch.tensor_split(self.world_size)
        return chunks[self.rank]
