"""Mixup and cutmix on whole batches: inputs and targets mixed, per sample, from the step's generator.

Targets become soft (B, C) probabilities; cross entropy takes them as they are and the
classification task scores the argmax. A sample's partner is drawn by one permutation of
the batch; its mixing weight from Beta(alpha, alpha), drawn with a NumPy generator seeded
from the step's torch generator (torch's Beta sampler takes no generator).
"""

from __future__ import annotations

import numpy as np
import torch


def _uniform(count: int, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.rand(count, generator=generator, device=device).to(like.device)


def _beta(count: int, alpha: float, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    device = generator.device if generator is not None else "cpu"
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device).item())
    draws = np.random.default_rng(seed).beta(alpha, alpha, size=count)
    return torch.from_numpy(draws).float().to(like.device)


def soft_targets(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B,) class indices -> (B, C) one-hot floats; soft or multi-hot (B, C) targets pass through."""
    if targets.dim() == 2:
        return targets.float()
    return torch.nn.functional.one_hot(targets, num_classes).float()


def mix_batch(
    x: torch.Tensor,
    targets: torch.Tensor,
    mixup: float,
    cutmix: float,
    num_classes: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (alpha `mixup`) and/or cutmix (alpha `cutmix`; 0 turns one off) of a normalised batch
    (B, C, H, W). With both on, each sample takes one of the two with probability 1/2."""
    batch, _, height, width = x.shape
    device = generator.device if generator is not None else x.device
    partner = torch.randperm(batch, generator=generator, device=device).to(x.device)
    y = soft_targets(targets, num_classes)
    weight = torch.ones(batch, device=x.device)
    out = x
    use_cut = torch.zeros(batch, dtype=torch.bool, device=x.device)
    if mixup > 0 and cutmix > 0:
        use_cut = _uniform(batch, generator, x) < 0.5
    elif cutmix > 0:
        use_cut = torch.ones(batch, dtype=torch.bool, device=x.device)
    if mixup > 0:
        lam = _beta(batch, mixup, generator, x)
        mixed = x * lam.view(-1, 1, 1, 1) + x[partner] * (1 - lam).view(-1, 1, 1, 1)
        out = torch.where(use_cut.view(-1, 1, 1, 1), out, mixed)
        weight = torch.where(use_cut, weight, lam)
    if cutmix > 0:
        mask, kept = _cut_boxes(batch, height, width, _beta(batch, cutmix, generator, x), generator, x)
        cut = torch.where(mask, x[partner], x)
        out = torch.where(use_cut.view(-1, 1, 1, 1), cut, out)
        weight = torch.where(use_cut, kept, weight)
    y = y * weight.view(-1, 1) + y[partner] * (1 - weight).view(-1, 1)
    return out, y


def _cut_boxes(
    batch: int, height: int, width: int, lam: torch.Tensor, generator: torch.Generator | None, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A box of area about (1 - lam) per image: the mask (B, 1, H, W) and the kept fraction (B,)."""
    side = torch.sqrt(1 - lam)
    centre = _uniform(2 * batch, generator, like).view(2, batch)
    cy, cx = centre[0] * height, centre[1] * width
    top = (cy - side * height / 2).round().clamp(0, height).long()
    bottom = (cy + side * height / 2).round().clamp(0, height).long()
    left = (cx - side * width / 2).round().clamp(0, width).long()
    right = (cx + side * width / 2).round().clamp(0, width).long()
    rows = torch.arange(height, device=like.device)
    cols = torch.arange(width, device=like.device)
    in_rows = (rows >= top.view(-1, 1)) & (rows < bottom.view(-1, 1))  # (B, H)
    in_cols = (cols >= left.view(-1, 1)) & (cols < right.view(-1, 1))  # (B, W)
    mask = in_rows.view(batch, 1, height, 1) & in_cols.view(batch, 1, 1, width)
    kept = 1 - ((bottom - top) * (right - left)).float() / (height * width)
    return mask, kept
