"""In-memory splits that build whole batches on the training device.

Small datasets live as uint8 (images) or int64 (tokens) tensors on the device; a batch is
one index gather plus normalisation and batched augmentation there, with no per-sample
Python and no worker processes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch

from torchsmith.data.augment import MIXING, apply_ops, check_policy_fits, ops_for_size, parse_policy
from torchsmith.data.mixing import mix_batch
from torchsmith.data.photo_ops import center_crop


class ImageTensors:
    """Images (N, C, H, W) uint8 and labels, normalised per channel per batch.

    Labels are (N,) int64 class indices, or (N, C) float multi-hot rows (multi-label).
    Images may be stored larger than `image_size` (the training resolution): training
    batches then take random-resized crops, evaluation the centre crop.

    Example:
        >>> source = ImageTensors(images, labels, mean=[0.1307], std=[0.3081])  # doctest: +SKIP
        >>> x, y = source.get_batch(torch.arange(64), generator, train=True)  # doctest: +SKIP
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        augment: str = "none",
        padding: int = 4,
        image_size: Sequence[int] | None = None,
        num_classes: int | None = None,
    ) -> None:
        assert images.dtype == torch.uint8 and images.dim() == 4, "images must be (N, C, H, W) uint8"
        self.images = images
        self.labels = labels.float() if labels.is_floating_point() else labels.long()
        self.image_size: tuple[int, int] = tuple(image_size or images.shape[-2:])  # type: ignore[assignment]
        self.num_classes = num_classes or _count_classes(self.labels)
        self.set_normalization(mean, std)
        self.padding = padding
        self.set_augment(augment)

    @property
    def stored_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])  # type: ignore[return-value]

    def set_augment(self, policy: str) -> None:
        """Use this augmentation policy for training batches; a bad one fails here, not mid-training."""
        ops = parse_policy(policy, self.padding)  # parsed once, not per batch
        self.ops = ops_for_size(ops, policy, self.stored_size, self.image_size)
        self.mixing = {name: self.ops.get(name, 0) / 100 for name in MIXING}
        check_policy_fits(self.ops, *self.image_size)
        self.augment = policy

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Normalise batches with these per-channel constants (in [0, 1] units) from now on."""
        device = self.labels.device
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * self.std), -self.mean / self.std
        # Cutout fills with the channel means, which normalise to 0 (as airbench cuts normalised images).
        self.fill = (self.mean * 255).round().clamp(0, 255).to(torch.uint8)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def gather(self, indices: torch.Tensor) -> torch.Tensor:
        """The stored uint8 rows of a batch (B, C, H, W), as stored."""
        return self.images.index_select(0, indices.to(self.images.device, non_blocking=True))

    def get_batch(
        self, indices: torch.Tensor, generator: torch.Generator | None, train: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.finish(self.gather(indices), indices, generator, train)

    def finish(
        self, x: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None, train: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gathered rows -> the model's batch: crop, augment, normalise, mix."""
        x = x.to(self.scale.device, non_blocking=True)
        if train and self.ops:
            x = apply_ops(x, self.ops, generator, self.fill, self.image_size)
        elif self.stored_size != self.image_size:
            x = center_crop(x, self.image_size)  # evaluation: the centre of the stored image
        # (x / 255 - mean) / std as x * scale + shift: one kernel reading uint8, writing float
        # (the four-op form cost several times as much per batch). float().mul_().add_() is 2.4x
        # faster still, but rounds differently from this fused form: runs would stop matching
        # earlier ones, and the two-process fine-tuning test drifted past its tolerance with it.
        x = torch.addcmul(self.shift, x, self.scale)
        y = self.labels.index_select(0, indices.to(self.labels.device, non_blocking=True))
        if train and (self.mixing["mixup"] or self.mixing["cutmix"]):
            x, y = mix_batch(x, y, self.mixing["mixup"], self.mixing["cutmix"], self.num_classes, generator)
        return x, y

    def to(self, device: torch.device) -> ImageTensors:
        self.images = self.images.to(device)
        self.labels = self.labels.to(device)
        self.mean = self.mean.to(device)
        self.std = self.std.to(device)
        self.scale, self.shift = self.scale.to(device), self.shift.to(device)
        self.fill = self.fill.to(device)
        return self

    def examples(self, indices: torch.Tensor) -> dict[str, object]:
        """What the report shows for some samples: the uint8 images (K, C, H, W) as evaluated."""
        return {"examples": center_crop(self.gather(indices), self.image_size).cpu()}

    def subset(self, indices: torch.Tensor, augment: str | None = None) -> ImageTensors:
        """A view of some samples (used to carve a validation split) sharing the constants."""
        out = copy.copy(self)
        out.images, out.labels = self.images[indices], self.labels[indices]
        out.set_augment(self.augment if augment is None else augment)
        return out


def _count_classes(labels: torch.Tensor) -> int:
    if labels.dim() == 2:
        return labels.shape[1]
    return int(labels.max()) + 1 if labels.numel() else 0


class TensorPairs:
    """A user's `(inputs, targets)` tensors as a MemorySource, used as given."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        if inputs.shape[0] != targets.shape[0]:
            raise ValueError(
                f"inputs and targets must have the same number of samples, got "
                f"{inputs.shape[0]} inputs and {targets.shape[0]} targets"
            )
        self.inputs = inputs
        self.targets = targets

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def get_batch(
        self, indices: torch.Tensor, generator: torch.Generator | None, train: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        indices = indices.to(self.inputs.device, non_blocking=True)
        return self.inputs.index_select(0, indices), self.targets.index_select(0, indices)

    def to(self, device: torch.device) -> TensorPairs:
        self.inputs = self.inputs.to(device)
        self.targets = self.targets.to(device)
        return self


def split_indices(num_samples: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (train, val) index split; val gets round(num_samples * val_fraction) samples."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(num_samples, generator=generator)
    num_val = round(num_samples * val_fraction)
    return order[num_val:].sort().values, order[:num_val].sort().values


def channel_stats(images: torch.Tensor, max_samples: int = 10000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (unbiased) in [0, 1] units of uint8 images (N, C, H, W).

    From a 256-bin histogram per channel: exact, and without a float copy of the images
    (a few times faster on 50,000 CIFAR images).
    """
    sample = images[:max_samples]
    if sample.dtype != torch.uint8:  # float images already in [0, 1]
        mean, std = sample.float().mean(dim=(0, 2, 3)), sample.float().std(dim=(0, 2, 3)).clamp_min(1e-6)
        return [round(v, 6) for v in mean.tolist()], [round(v, 6) for v in std.tolist()]
    return histogram_stats([sample])


def histogram_stats(chunks: Iterable[torch.Tensor]) -> tuple[list[float], list[float]]:
    """`channel_stats` over uint8 chunks (N_i, C, H, W) read one at a time (a mapped store):
    the histograms add up exactly, so the result equals one pass over all of them."""
    histograms: torch.Tensor | None = None
    for chunk in chunks:
        counts = torch.stack(
            [torch.bincount(chunk[:, c].reshape(-1).cpu(), minlength=256) for c in range(chunk.shape[1])]
        ).double()
        histograms = counts if histograms is None else histograms + counts
    assert histograms is not None, "no images to compute statistics from"
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for histogram in histograms:
        count = float(histogram.sum())
        mean = (histogram * values).sum() / count
        var = (histogram * (values - mean) ** 2).sum() / max(count - 1, 1)
        means.append(round(float(mean) / 255, 6))
        stds.append(round(max(float(var.sqrt()) / 255, 1e-6), 6))
    return means, stds
