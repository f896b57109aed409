"""Batched augmentation: every sample gets its own random draw, all in a few tensor ops.

Written by hand rather than with torchvision.transforms.v2 because v2 draws one set of
parameters per call: applied to a whole batch it would crop and flip every image the
same way. Here the draw is per sample, and all randomness comes from the generator the
caller passes, so a batch can be rebuilt exactly from `(seed, epoch, step)`.
"""

from __future__ import annotations

import torch


def random_flip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Flip each image (B, C, H, W) horizontally with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator, device=_gen_device(x, generator))
    flip = (flip < 0.5).to(x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None) -> torch.Tensor:
    """Pad (B, C, H, W) by `padding` with zeros, then crop back at a random offset per sample.

    Implemented as one gather over a padded batch: offsets (B,) index rows and columns.
    """
    if padding <= 0:
        return x
    batch, _, height, width = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    device = _gen_device(x, generator)
    dy = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=device).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=device).to(x.device)
    rows = (dy.view(-1, 1) + torch.arange(height, device=x.device)).view(batch, 1, height, 1)
    cols = (dx.view(-1, 1) + torch.arange(width, device=x.device)).view(batch, 1, 1, width)
    channels = x.shape[1]
    rows = rows.expand(batch, channels, height, padded.shape[-1])
    out = padded.gather(2, rows)  # (B, C, H, W + 2p)
    cols = cols.expand(batch, channels, height, width)
    return out.gather(3, cols)  # (B, C, H, W)


def _gen_device(x: torch.Tensor, generator: torch.Generator | None) -> torch.device:
    # Random numbers are drawn on the generator's device, then moved to the data.
    return generator.device if generator is not None else x.device


AUGMENTATIONS = ("none", "flip", "crop", "crop-flip", "translate", "flip-translate")


def augment_images(x: torch.Tensor, policy: str, generator: torch.Generator | None, padding: int = 4) -> torch.Tensor:
    """Apply a named policy to a batch (B, C, H, W): "crop" pads with zeros by `padding`,
    "translate" shifts by up to 2 pixels with reflection (airbench), "flip" mirrors."""
    if policy not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation '{policy}'; known: {', '.join(AUGMENTATIONS)}")
    if policy in ("crop", "crop-flip"):
        x = random_crop(x, padding, generator)
    if policy in ("translate", "flip-translate"):
        from torchsmith.speed_parts import translate_batch

        x = translate_batch(x, 2, generator)
    if policy in ("flip", "crop-flip", "flip-translate"):
        x = random_flip(x, generator)
    return x
