"""Batched photo augmentations: random-resized crop, centre crop, colour jitter.

Each sample of a batch gets its own draw, all from the generator the caller passes, so a
batch is rebuilt exactly from `(seed, epoch, step)`. torchvision's transforms draw one
set of parameters per call (the whole batch would be cropped alike), hence these.
"""

from __future__ import annotations

import math

import torch

SCALE = (0.25, 1.0)  # fraction of the stored image a random-resized crop keeps
RATIO = (3 / 4, 4 / 3)  # its aspect ratio range (torchvision's default)
TRIES = 10  # candidate boxes per sample, as torchvision's RandomResizedCrop


def _draw(count: int, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.rand(count, generator=generator, device=device).to(like.device)


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The central `size` (height, width) of every image (B, C, H, W); exact, any dtype."""
    height, width = x.shape[-2:]
    top, left = (height - size[0]) // 2, (width - size[1]) // 2
    return x[..., top : top + size[0], left : left + size[1]]


def crop_boxes(
    batch: int, height: int, width: int, generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    """Per sample (x1, y1, x2, y2) of a random box with area in SCALE and aspect ratio in RATIO
    (log-uniform), placed uniformly; the first of TRIES candidates that fits, else the whole image."""
    area = height * width
    draws = _draw(batch * TRIES * 4, generator, like).view(batch, TRIES, 4).double()
    target_area = area * (SCALE[0] + (SCALE[1] - SCALE[0]) * draws[..., 0])
    log_lo, log_hi = math.log(RATIO[0]), math.log(RATIO[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * draws[..., 1])
    box_w = torch.sqrt(target_area * ratio).round()
    box_h = torch.sqrt(target_area / ratio).round()
    fits = (box_w >= 1) & (box_w <= width) & (box_h >= 1) & (box_h <= height)
    first = torch.where(fits.any(dim=1), fits.int().argmax(dim=1), -1)  # (B,) index of the first fit
    pick = first.clamp_min(0).view(-1, 1)
    box_w = torch.where(first >= 0, box_w.gather(1, pick).squeeze(1), float(width))
    box_h = torch.where(first >= 0, box_h.gather(1, pick).squeeze(1), float(height))
    left = ((width - box_w + 1) * draws[:, 0, 2]).floor().clamp(max=width - box_w)
    top = ((height - box_h + 1) * draws[:, 0, 3]).floor().clamp(max=height - box_h)
    return torch.stack([left, top, left + box_w, top + box_h], dim=1).float()  # (B, 4)


def random_resized_crop(x: torch.Tensor, size: tuple[int, int], generator: torch.Generator | None) -> torch.Tensor:
    """Crop a random box per image (B, C, H, W) and resize it to `size`: float (B, C, *size) in
    the input's units. One `roi_align` call (bilinear, 2x2 samples per output pixel, which
    averages like antialiasing when the box is larger than the output)."""
    from torchvision.ops import roi_align

    batch, _, height, width = x.shape
    boxes = crop_boxes(batch, height, width, generator, x)
    index = torch.arange(batch, dtype=boxes.dtype, device=x.device).view(-1, 1)
    return roi_align(x.float(), torch.cat([index, boxes], dim=1), size, 1.0, sampling_ratio=2, aligned=True)


def colour_jitter(x: torch.Tensor, strength: float, generator: torch.Generator | None) -> torch.Tensor:
    """Brightness, contrast and saturation each scaled by a factor in [1 - s, 1 + s] per image,
    on pixels in [0, 255] (B, C, H, W); float out, clamped to [0, 255]."""
    batch, channels = x.shape[:2]
    factors = 1 - strength + 2 * strength * _draw(batch * 3, generator, x).view(3, batch, 1, 1, 1)
    x = x.float() * factors[0]
    grey = _grey(x)  # (B, 1, H, W)
    x = (x - grey.mean(dim=(2, 3), keepdim=True)) * factors[1] + grey.mean(dim=(2, 3), keepdim=True)
    if channels == 3:
        grey = _grey(x)
        x = (x - grey) * factors[2] + grey
    return x.clamp_(0, 255)


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)
