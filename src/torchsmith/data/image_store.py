"""The decoded-once image store: uint8 shards on disk, read whole into memory or mapped.

A folder (or table) of image files is decoded once, in parallel, at one storage size
(shorter side resized with antialiasing to cover it, then centre-cropped), and written as
raw uint8 shards of (rows, C, H, W) plus `meta.json`. The shards are the cache (keyed by
the files' paths, sizes and mtimes and the requested sizes) and also the store itself:
small sets are read whole into (device) memory, sets larger than the memory limit are
read batch by batch from the shard files (`torchsmith.data.mapped`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchsmith.data.disk_cache import cache_root, open_private, private_folder, temporary_name
from torchsmith.data.image_files import (
    GREY_MODES,
    MAX_PIXELS,
    BrokenImage,
    Header,
    decode_file,
    file_stamps,
    fit_to,
    oriented_size,
    parallel,
    parse_size,
    read_header,
)
from torchsmith.errors import UsageError, short
from torchsmith.io.files import write_failure

FORMAT = 1  # bump when the shard layout changes: old caches are then ignored
SHARD_BYTES = 256 << 20
CHUNK_BYTES = 64 << 20  # decoded images held at once while writing the shards
MARGIN = 8 / 7  # storage side over training side (224 -> 256): room for random-resized crops
DEFAULT_SIDE = 224  # a mixed folder's training side when its images are at least this large


@dataclass
class ImageOptions:
    """How image files become a store: `data.options.image_size`, `storage_size`,
    `memory_limit` (bytes, or "512MB"/"2GB") and `max_broken` (fraction of files)."""

    image_size: tuple[int, int] | None = None
    storage_size: tuple[int, int] | None = None
    memory_limit: int | None = None
    max_broken: float = 0.1
    cache_dir: Path | None = None
    max_pixels: int = MAX_PIXELS  # `data.options.max_pixels`: larger headers are refused unread

    @classmethod
    def from_options(cls, options: dict[str, Any], cache_dir: Path | None = None) -> ImageOptions:
        limit = options.get("memory_limit")
        max_broken = float(options.get("max_broken", 0.1))
        if not 0 <= max_broken <= 1:
            raise UsageError(f"data.options.max_broken is a fraction in [0, 1], got {max_broken}")
        return cls(
            image_size=parse_size(options.get("image_size")),
            storage_size=parse_size(options.get("storage_size"), "data.options.storage_size"),
            memory_limit=None if limit is None else parse_bytes(limit),
            max_broken=max_broken,
            cache_dir=cache_dir,
            max_pixels=_positive_int(options.get("max_pixels", MAX_PIXELS), "data.options.max_pixels"),
        )


def _positive_int(value: object, name: str) -> int:
    try:
        number = int(str(value).replace("_", ""))
    except ValueError:
        number = 0
    if number <= 0:
        raise UsageError(f"{name} must be a positive integer (a pixel count such as 100000000), got {short(value)}")
    return number


def parse_bytes(value: object) -> int:
    """`1048576`, `"512MB"`, `"2GB"`, `"1.5G"` -> bytes."""
    text = str(value).strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    factor = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    try:
        result = int(float(number) * factor)
    except ValueError:
        result = -1
    if result < 0:
        raise UsageError(f"data.options.memory_limit must be a size such as 2GB or 512MB, got {value!r}")
    return result


def default_memory_limit() -> int:
    """Half the machine's physical memory: the store may take that much before it is mapped."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def storage_for(size: tuple[int, int]) -> tuple[int, int]:
    return math.ceil(size[0] * MARGIN), math.ceil(size[1] * MARGIN)


@dataclass
class ImageStore:
    """The shards of one decoded file list. Row i holds file i (zeros where it failed)."""

    folder: Path
    count: int
    channels: int
    storage: tuple[int, int]
    image_size: tuple[int, int]
    rows_per_shard: int
    files: list[str]
    failures: list[tuple[int, str]] = field(default_factory=list)  # (row, reason)
    size_note: str = ""

    @property
    def row_shape(self) -> tuple[int, int, int]:
        return self.channels, *self.storage

    @property
    def row_bytes(self) -> int:
        return math.prod(self.row_shape)

    def shard_paths(self) -> list[Path]:
        return [self.folder / f"shard-{i:05d}.u8" for i in range(-(-self.count // self.rows_per_shard))]

    def valid_rows(self) -> torch.Tensor:
        bad = {row for row, _ in self.failures}
        return torch.tensor([r for r in range(self.count) if r not in bad], dtype=torch.int64)

    def open_shards(self) -> list[ShardFile]:
        return [ShardFile(path, self.row_bytes) for path in self.shard_paths()]

    def read_rows(self, rows: torch.Tensor, shards: list[ShardFile] | None = None) -> torch.Tensor:
        """These rows (len(rows), C, H, W) uint8, read from the shard files straight into the
        result in ascending order, one call per run of rows consecutive both in the file and in
        the result (a shard's rows in order: one call per shard); `shards`: files already open
        (`open_shards`), else opened for this read."""
        out = torch.empty((len(rows), *self.row_shape), dtype=torch.uint8)
        if len(rows) == 0:
            return out
        flat = out.numpy().reshape(len(rows), self.row_bytes)
        files = shards if shards is not None else self.open_shards()
        position = torch.argsort(rows, stable=True)
        ordered = rows[position]
        shard = ordered // self.rows_per_shard
        starts = torch.ones(len(rows), dtype=torch.bool)
        starts[1:] = (ordered[1:] != ordered[:-1] + 1) | (position[1:] != position[:-1] + 1) | (shard[1:] != shard[:-1])
        bounds = [*starts.nonzero().flatten().tolist(), len(rows)]
        first_rows, first_positions = ordered.tolist(), position.tolist()
        for begin, end in itertools.pairwise(bounds):
            row, at = first_rows[begin], first_positions[begin]
            buffer = memoryview(flat[at : at + end - begin].data).cast("B")
            files[row // self.rows_per_shard].read_into(row % self.rows_per_shard, buffer)
        if shards is None:
            for file in files:
                file.close()
        return out

    def to_meta(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "count": self.count,
            "channels": self.channels,
            "storage": list(self.storage),
            "image_size": list(self.image_size),
            "rows_per_shard": self.rows_per_shard,
            "files": self.files,
            "failures": [list(f) for f in self.failures],
            "size_note": self.size_note,
        }

    @classmethod
    def from_meta(cls, folder: Path, meta: dict[str, Any]) -> ImageStore:
        assert meta["format"] == FORMAT
        return cls(
            folder,
            int(meta["count"]),
            int(meta["channels"]),
            (int(meta["storage"][0]), int(meta["storage"][1])),
            (int(meta["image_size"][0]), int(meta["image_size"][1])),
            int(meta["rows_per_shard"]),
            list(meta["files"]),
            [(int(r), str(why)) for r, why in meta["failures"]],
            str(meta.get("size_note", "")),
        )


class ShardFile:
    """One shard file, read with `os.pread(v)` into buffers the caller owns. Hand-written because
    neither torch nor NumPy reads rows of a file into an existing tensor without mapping the
    file (whose touched pages then stay resident) or reading it whole."""

    def __init__(self, path: Any, row_bytes: int) -> None:
        self.path, self.row_bytes = str(path), row_bytes
        self.fd = -1

    def read_into(self, row: int, buffer: memoryview) -> None:
        """Rows from `row` on into `buffer` (bytes, a whole number of rows), in one call."""
        if self.fd < 0:  # opened at the first read, in the process that reads (not pickled open)
            self.fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        offset, wanted = row * self.row_bytes, len(buffer)
        if hasattr(os, "preadv"):
            done = os.preadv(self.fd, [buffer], offset)
        else:  # Windows
            os.lseek(self.fd, offset, os.SEEK_SET)
            data = os.read(self.fd, wanted)
            done = len(data)
            buffer[:done] = data
        if done != wanted:
            raise UsageError(
                f"the image cache file {self.path} is shorter than its index says ({done} of {wanted} bytes "
                f"at {offset}); delete its folder to rebuild the cache"
            )

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()


def open_store(files: list[str], options: ImageOptions, where: str) -> ImageStore:
    """The store of these files: from the cache, or decoded now (and cached)."""
    # the key and the store name files wherever run from; abspath skipped where it would change
    # nothing (an absolute path without "." or ".." parts or doubled slashes): 0.2 s on 60,000 files
    files = [f if f[:1] == "/" and "/." not in f and "//" not in f else os.path.abspath(f) for f in files]
    requested = json.dumps([FORMAT, options.image_size, options.storage_size, options.max_pixels])
    key = hashlib.sha256((file_stamps(files) + requested).encode()).hexdigest()[:24]
    folder = Path(options.cache_dir or cache_root() / "images").resolve() / key
    cached = _read_cached(folder, files)
    if cached is not None:
        _check_broken(cached, options, where)
        return cached
    headers = parallel(partial(read_header, max_pixels=options.max_pixels), files)
    store = _plan(folder, files, headers, options, where)
    _check_broken(store, options, where)
    _write_shards(store, headers)
    _check_broken(store, options, where)
    return store


def _read_cached(folder: Path, files: list[str]) -> ImageStore | None:
    try:
        store = ImageStore.from_meta(folder, json.loads((folder / "meta.json").read_text(encoding="utf-8")))
        sizes = [p.stat().st_size for p in store.shard_paths()]
    except Exception:  # missing or damaged: rebuilt, never trusted
        return None
    if store.files != files:  # another file list under this key (a damaged or foreign entry)
        return None
    expected = [
        min(store.rows_per_shard, store.count - i * store.rows_per_shard) * store.row_bytes for i in range(len(sizes))
    ]
    return store if sizes == expected else None


def _plan(folder: Path, files: list[str], headers: list[Any], options: ImageOptions, where: str) -> ImageStore:
    """Channels and sizes from the headers: the store's shape before any pixel is decoded."""
    good = [h for h in headers if isinstance(h, Header)]
    failures = [(i, str(h)) for i, h in enumerate(headers) if isinstance(h, BrokenImage)]
    channels = 1 if good and all(h.mode in GREY_MODES for h in good) else 3
    note = ""
    if options.image_size is not None:
        size = options.image_size
        storage = options.storage_size or storage_for(size)
    else:
        sizes = sorted({oriented_size(h) for h in good})
        if len(sizes) <= 1:
            size = sizes[0] if sizes else (1, 1)
            storage = options.storage_size or size
        else:
            median = statistics.median(min(s) for s in map(oriented_size, good))
            side = DEFAULT_SIDE if median >= DEFAULT_SIDE else max(16, int(median) // 16 * 16)
            size = (side, side)
            storage = options.storage_size or storage_for(size)
            note = (
                f"images under {where} differ in size (from {sizes[0][0]}x{sizes[0][1]} to "
                f"{sizes[-1][0]}x{sizes[-1][1]}): training at {side}x{side}; choose with --image-size"
            )
    if size[0] > storage[0] or size[1] > storage[1]:
        raise UsageError(
            f"--image-size {size[0]}x{size[1]} is larger than the storage size {storage[0]}x{storage[1]}; "
            f"use a smaller --image-size or a larger data.options.storage_size"
        )
    rows_per_shard = max(1, SHARD_BYTES // (channels * storage[0] * storage[1]))
    return ImageStore(folder, len(files), channels, storage, size, rows_per_shard, list(files), failures, note)


def _check_broken(store: ImageStore, options: ImageOptions, where: str) -> None:
    failed = len(store.failures)
    if failed == 0:
        return
    listed = "; ".join(f"{store.files[r]}: {why}" for r, why in store.failures[:5])
    if failed == store.count:
        raise UsageError(f"none of the {failed} image files under {where} could be read ({listed})")
    if failed > options.max_broken * store.count:
        raise UsageError(
            f"{failed} of {store.count} image files under {where} could not be read, more than "
            f"data.options.max_broken={options.max_broken:g} of them ({listed}...). Check the folder, or "
            f"raise the fraction with --set data.options.max_broken=0.5 to skip them"
        )


def _write_shards(store: ImageStore, headers: list[Any]) -> None:
    """Decode the files a chunk at a time (threads) and append their rows to the shards."""
    tmp = temporary_name(store.folder)
    private_folder(tmp)
    bad = dict(store.failures)
    chunk = max(16, CHUNK_BYTES // store.row_bytes)

    def load(row: int) -> torch.Tensor:
        return fit_to(decode_file(store.files[row], headers[row], store.channels), store.storage)

    try:
        for start, rows in _shard_chunks(store, chunk):
            targets = [r for r in rows if r not in bad]
            decoded = parallel(load, targets)
            block = np.zeros((len(rows), *store.row_shape), dtype=np.uint8)
            for row, image in zip(targets, decoded, strict=True):
                if isinstance(image, BrokenImage):
                    bad[row] = str(image)
                else:
                    block[row - rows[0]] = image.numpy()
            _append(tmp / f"shard-{start // store.rows_per_shard:05d}.u8", block.tobytes(), store)
        store.failures = sorted(bad.items())
        _append(tmp / "meta.json", json.dumps(store.to_meta(), ensure_ascii=False).encode("utf-8"), store)
        shutil.rmtree(store.folder, ignore_errors=True)
        try:
            os.replace(tmp, store.folder)
        except OSError:  # another process finished the same entry first: theirs holds the same rows
            if _read_cached(store.folder, store.files) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _append(path: Path, data: bytes, store: ImageStore) -> None:
    """Append to a cache file (user-only permissions); a full disk is a DiskFull naming the
    bytes the whole store needs (the caller removes the temporary folder)."""
    try:
        with open(open_private(path), "ab") as handle:
            handle.write(data)
    except OSError as error:
        raise write_failure(store.folder, error, store.count * store.row_bytes) from None


def _shard_chunks(store: ImageStore, chunk: int) -> Iterator[tuple[int, list[int]]]:
    """(first row of the shard, rows) for chunks that never cross a shard boundary."""
    for shard_start in range(0, store.count, store.rows_per_shard):
        shard_end = min(store.count, shard_start + store.rows_per_shard)
        for start in range(shard_start, shard_end, chunk):
            yield shard_start, list(range(start, min(shard_end, start + chunk)))
