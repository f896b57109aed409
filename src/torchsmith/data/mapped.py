"""Image stores larger than memory: shards on disk, each batch read ahead by a thread.

`MappedImages` is an `ImageTensors` whose rows stay on disk: a batch's rows are read from
the shard files straight into the batch's buffer (`os.preadv`, runs of consecutive rows in
one call), then cropped, augmented and normalised exactly as in memory, so a run trains to
the same weights and resumes at the same step. Nothing is mapped into the process: the
rows read live in the OS file cache (reclaimable, not this process's resident memory), so
the resident memory stays bounded by the few batches in flight however large the store
is. (A memory map would leave every page it touched resident, RssFile, until the kernel
reclaims it, and maps neighbouring cached pages on each fault as well.)
`PrefetchBatches` gathers the next batches in a background thread while the step runs.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Iterator
from typing import Any

import torch

from torchsmith.data.image_store import ImageStore
from torchsmith.data.loaders import Batch, MemoryBatches
from torchsmith.data.memory import ImageTensors
from torchsmith.data.order import step_generator

AHEAD = 2  # batches gathered ahead of the step


class PrefetchBatches(MemoryBatches):
    """MemoryBatches over a MappedImages: a background thread gathers the rows of the next
    AHEAD batches from disk while the step runs; the crop, augmentation (from the same
    `(seed, epoch, step)` generator) and normalisation happen here, as in memory."""

    on_device = True

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        if self.shared_draws:  # several processes: the plain path, which builds the global batch
            yield from super().epoch(epoch, start)
            return
        source = self.source
        assert isinstance(source, MappedImages)
        ahead: queue.Queue[Any] = queue.Queue(maxsize=AHEAD)
        stop = threading.Event()
        plan = [(p, self.order.rank_slice(b)) for p, b in enumerate(self.order.global_batches(epoch, start), start)]
        worker = threading.Thread(target=_gather_ahead, args=(source, plan, ahead, stop), daemon=True)
        worker.start()
        try:
            for position, indices in plan:
                rows = ahead.get()
                if isinstance(rows, BaseException):
                    raise rows
                if len(indices) == 0:
                    continue
                generator = step_generator(self.seed, epoch, position, self.device) if self.draws else None
                inputs, targets = source.finish(rows, indices, generator, self.train)
                yield inputs, targets, indices
        finally:
            stop.set()
            while worker.is_alive():
                try:
                    ahead.get_nowait()
                except queue.Empty:
                    worker.join(0.01)


class MappedImages(ImageTensors):
    """Rows `rows` of an on-disk ImageStore, with labels; batches as ImageTensors builds them.

    Example:
        >>> source = MappedImages(store, rows, labels, mean, std, image_size=(64, 64))  # doctest: +SKIP
    """

    batches_class = PrefetchBatches  # how make_batches serves it

    def __init__(
        self,
        store: ImageStore,
        rows: torch.Tensor,
        labels: torch.Tensor,
        mean: list[float],
        std: list[float],
        *,
        augment: str = "none",
        image_size: tuple[int, int] | None = None,
        num_classes: int | None = None,
    ) -> None:
        self.store, self.rows = store, rows.long()
        self.shards = store.open_shards()  # kept open: read batch after batch
        self._lock = threading.Lock()  # one gather at a time: subsets share the shard files
        # A (1, C, H, W) stand-in keeps the stored size and dtype for the parent's checks.
        stand_in = torch.zeros((1, *store.row_shape), dtype=torch.uint8)
        super().__init__(stand_in, labels, mean, std, augment, image_size=image_size, num_classes=num_classes)

    @property
    def stored_size(self) -> tuple[int, int]:
        return self.store.storage

    def __len__(self) -> int:
        return len(self.rows)

    def gather(self, indices: torch.Tensor) -> torch.Tensor:
        """The batch's stored rows read from the shards into memory (B, C, H, W) uint8 on the CPU."""
        with self._lock:
            return self.store.read_rows(self.rows[indices.cpu()], self.shards)

    def to(self, device: torch.device) -> MappedImages:
        self.labels = self.labels.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        self.scale, self.shift = self.scale.to(device), self.shift.to(device)
        self.fill = self.fill.to(device)
        return self  # the rows stay on disk

    def iter_rows(self, limit: int, chunk: int = 1024) -> Iterator[torch.Tensor]:
        """The first `limit` rows, a chunk at a time (for statistics without loading all)."""
        for start in range(0, min(limit, len(self)), chunk):
            yield self.gather(torch.arange(start, min(limit, len(self), start + chunk)))

    def subset(self, indices: torch.Tensor, augment: str | None = None) -> MappedImages:
        out = copy.copy(self)
        out.rows, out.labels = self.rows[indices], self.labels[indices]
        out.set_augment(self.augment if augment is None else augment)
        return out


def _gather_ahead(source: MappedImages, plan: list[Any], ahead: queue.Queue[Any], stop: threading.Event) -> None:
    try:
        for _, indices in plan:
            rows = source.gather(indices) if len(indices) else None
            while not stop.is_set():
                try:
                    ahead.put(rows, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
    except BaseException as error:  # handed to the consumer, which raises it in the loop
        ahead.put(error)
