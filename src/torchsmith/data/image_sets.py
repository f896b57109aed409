"""Labelled image files -> a DataBundle: the store, the splits, in memory or mapped.

Shared by `imagefolder:` (labels from folder names) and `imagecsv:` (labels from a table).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from torchsmith.data.bundle import DataBundle, DataInfo
from torchsmith.data.image_store import ImageOptions, ImageStore, default_memory_limit, open_store
from torchsmith.data.memory import ImageTensors, histogram_stats, split_indices
from torchsmith.errors import UsageError

STATS_SAMPLES = 10000  # images the normalisation constants are computed from (as channel_stats)


@dataclass
class LabelledRows:
    """The usable rows of a store and their labels: (R,) int64, or (R, C) float multi-hot."""

    store: ImageStore
    rows: torch.Tensor
    labels: torch.Tensor

    def take(self, positions: torch.Tensor) -> LabelledRows:
        return LabelledRows(self.store, self.rows[positions], self.labels[positions])


def open_labelled(files: list[str], labels: torch.Tensor, options: ImageOptions, where: str) -> LabelledRows:
    """Decode (or find cached) these files; broken ones are left out with their labels."""
    store = open_store(files, options, where)
    rows = store.valid_rows()
    return LabelledRows(store, rows, labels[rows])


def fixed_size(options: ImageOptions, like: LabelledRows) -> ImageOptions:
    """Options for another split of the same data: the sizes the training split chose."""
    return replace(options, image_size=like.store.image_size, storage_size=like.store.storage)


def check_classes(class_names: list[str], where: str) -> None:
    if len(class_names) < 2:
        found = f"only '{class_names[0]}'" if class_names else "none"
        raise UsageError(
            f"{where} holds {found}: a classifier needs at least two classes (one folder, or one "
            f"label value, per class)"
        )


def image_bundle(
    parts: dict[str, LabelledRows | None],
    class_names: list[str],
    options: ImageOptions,
    *,
    val_fraction: float,
    seed: int,
    augment: str,
) -> DataBundle:
    """train/val/test sources from labelled rows; the store goes to memory unless it is larger
    than the memory limit (`data.options.memory_limit`, default half the machine's memory)."""
    train = parts["train"]
    assert train is not None
    stores = {id(p.store): p.store for p in parts.values() if p is not None}
    total = sum(len(p.rows) for p in parts.values() if p is not None) * train.store.row_bytes
    limit = options.memory_limit if options.memory_limit is not None else default_memory_limit()
    mapped = total > limit
    multi = train.labels.dim() == 2
    full = _source(train, augment, mapped, len(class_names))
    mean, std = histogram_stats(full.gather(chunk) for chunk in torch.arange(min(len(full), STATS_SAMPLES)).split(1024))
    full.set_normalization(mean, std)
    sources: dict[str, Any] = {}
    for name in ("val", "test"):
        part = parts.get(name)
        if part is not None:
            sources[name] = _source(part, "none", mapped, len(class_names))
            sources[name].set_normalization(mean, std)
    if "val" in sources or val_fraction <= 0:
        sources["train"] = full
    else:
        train_idx, val_idx = split_indices(len(full), val_fraction, seed)
        sources["train"], sources["val"] = full.subset(train_idx), full.subset(val_idx, augment="none")
    store = train.store
    failures = [f for s in stores.values() for f in s.failures]
    info = DataInfo(
        modality="image",
        num_classes=len(class_names),
        input_shape=(store.channels, *store.image_size),
        class_names=class_names,
        task="multilabel" if multi else "classification",
        preprocessing={
            "kind": "image",
            "mean": mean,
            "std": std,
            "size": list(store.image_size),
            "storage": list(store.storage),
            "resize": "shorter side to cover the storage size (antialiased), then centre crop",
            "channels": store.channels,
            "in_memory": not mapped,
            **({"size_note": store.size_note} if store.size_note else {}),
            **({"skipped_files": len(failures)} if failures else {}),
        },
        problems=[{"file": s.files[r], "reason": why} for s in stores.values() for r, why in s.failures],
    )
    return DataBundle(sources["train"], sources.get("val"), sources.get("test"), info)


def _source(part: LabelledRows, augment: str, mapped: bool, num_classes: int) -> ImageTensors:
    channels = part.store.channels
    placeholder = ([0.0] * channels, [1.0] * channels)  # set from the training rows right after
    if mapped:
        from torchsmith.data.mapped import MappedImages

        return MappedImages(
            part.store,
            part.rows,
            part.labels,
            *placeholder,
            augment=augment,
            image_size=part.store.image_size,
            num_classes=num_classes,
        )
    images = part.store.read_rows(part.rows)
    return ImageTensors(
        images, part.labels, *placeholder, augment, image_size=part.store.image_size, num_classes=num_classes
    )
