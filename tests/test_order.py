from __future__ import annotations

import torch

from torchsmith.data.augment import random_crop, random_flip
from torchsmith.data.order import BatchOrder, derive_seed


def test_permutation_depends_only_on_seed_and_epoch() -> None:
    a, b = BatchOrder(100, 10, seed=1), BatchOrder(100, 10, seed=1)
    assert torch.equal(a.permutation(3), b.permutation(3))
    assert not torch.equal(a.permutation(3), a.permutation(4))
    assert not torch.equal(a.permutation(3), BatchOrder(100, 10, seed=2).permutation(3))
    assert sorted(a.permutation(0).tolist()) == list(range(100))


def test_resume_from_position_matches_the_rest_of_the_epoch() -> None:
    order = BatchOrder(95, 10, seed=0)
    full = list(order.epoch_batches(2))
    assert len(full) == len(order) == 10 and len(full[-1]) == 5
    resumed = list(order.epoch_batches(2, start=4))
    assert all(torch.equal(x, y) for x, y in zip(full[4:], resumed, strict=True))


def test_rank_slices_partition_the_global_batch() -> None:
    ranks = [BatchOrder(64, 16, seed=0, rank=r, world_size=2) for r in range(2)]
    single = BatchOrder(64, 16, seed=0)
    batches = zip(single.epoch_batches(0), ranks[0].epoch_batches(0), ranks[1].epoch_batches(0), strict=True)
    for glob, part0, part1 in batches:
        assert torch.equal(torch.cat([part0, part1]), glob)


def test_derive_seed_separates_counters() -> None:
    seeds = {derive_seed(0, 1, e, s) for e in range(5) for s in range(50)}
    assert len(seeds) == 250


def test_flip_draws_per_sample_and_is_seeded() -> None:
    x = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).view(2, 1, 2, 3).repeat(500, 1, 1, 1)
    flipped = random_flip(x, torch.Generator().manual_seed(0))
    is_flipped = (flipped != x).flatten(1).any(dim=1).float()
    assert 0.45 < is_flipped.mean().item() < 0.55
    assert torch.equal(flipped, random_flip(x, torch.Generator().manual_seed(0)))
    assert torch.equal(flipped[is_flipped.bool()], x[is_flipped.bool()].flip(-1))


def test_crop_shifts_each_sample_within_padding() -> None:
    x = torch.zeros(400, 1, 8, 8)
    x[:, :, 4, 4] = 1.0  # one marked pixel per image
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    positions = out.flatten(1).argmax(dim=1)
    rows, cols = positions // 8 - 4, positions % 8 - 4
    assert rows.abs().max() <= 2 and cols.abs().max() <= 2
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) == 25  # all 5x5 offsets occur
    assert (out.sum(dim=(1, 2, 3)) == 1).all()  # a shift never loses the pixel at |d| <= 2


def test_group_by_length_batches_similar_lengths_and_keeps_the_order_contract() -> None:
    lengths = torch.randint(1, 60, (1000,), generator=torch.Generator().manual_seed(0))
    grouped = BatchOrder(1000, 16, seed=3, lengths=lengths)
    plain = BatchOrder(1000, 16, seed=3)

    def fill(order: BatchOrder) -> float:  # real tokens / padded tokens over the epoch
        batches = list(order.epoch_batches(0))
        return sum(int(lengths[b].sum()) for b in batches) / sum(len(b) * int(lengths[b].max()) for b in batches)

    assert fill(grouped) > 0.9 > 0.6 > fill(plain)
    for epoch in range(3):
        batches = list(grouped.epoch_batches(epoch))
        assert sorted(torch.cat(batches).tolist()) == list(range(1000))  # every sample once
        assert [len(b) for b in batches] == [16] * 62 + [8]  # the smaller batch stays last
    # Still a function of (seed, epoch): resuming mid-epoch and ranks see the same batches.
    again = BatchOrder(1000, 16, seed=3, lengths=lengths)
    assert torch.equal(grouped.permutation(2), again.permutation(2))
    assert not torch.equal(grouped.permutation(2), grouped.permutation(1))
    resumed = list(grouped.epoch_batches(1, start=10))
    assert all(torch.equal(x, y) for x, y in zip(list(grouped.epoch_batches(1))[10:], resumed, strict=True))
    # Batches are shuffled, not served shortest first.
    maxima = [int(lengths[b].max()) for b in grouped.epoch_batches(0)][:-1]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)
