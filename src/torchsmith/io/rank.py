"""Which process writes, and waiting for the others: the rank-aware helpers every writer uses.

Under torchrun only rank 0 writes the run's files (`is_writer`) and prepares the data first
(`writer_first`); `barrier`, `from_writer`, `writer_first`, `settle` and `shutdown` are no-ops in
a single process.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch.distributed as dist

T = TypeVar("T")
PREPARE_TIMEOUT = timedelta(hours=24)  # how long the other ranks wait for rank 0 to prepare the data


def environment() -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) when torchrun started several processes, else None."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or "RANK" not in os.environ:
        return None
    return int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0"))


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_writer() -> bool:
    """Whether this process writes the run's files: rank 0 under torchrun, or a single process.

    Every file of a run (metrics, TensorBoard, checkpoints, summary, report, weights) is written
    only where this is true.
    """
    if _active():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if _active():
        dist.barrier()


def settle() -> None:
    """Wait until every rank gets here, so that rank 0 has finished writing before any process exits
    (torchrun stops the others as soon as one exits with an error code). Errors are ignored: this
    runs on the way out and must not mask the error being reported."""
    with contextlib.suppress(Exception):
        barrier()


def shutdown() -> None:
    """Leave the process group (no-op in a single process); call it before the process ends.

    The group's objects also sit in reference cycles; collected only when the interpreter
    exits, their teardown can abort the process (seen with gloo), so they are collected here.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        gc.collect()


def from_writer(compute: Callable[[], T]) -> T:
    """Rank 0's result of `compute` on every rank; an error raised there is raised on every rank.

    For what only rank 0 need see: the run directory's files (the others may run on machines that
    do not share it), and a default run name that holds the time. The value travels pickled over
    the process group, between processes of the same run.
    """
    if not _active():
        return compute()
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = (True, compute())
        except Exception as error:  # raised below on every rank, rank 0 included
            box[0] = (False, error)
    dist.broadcast_object_list(box, src=0)
    done, value = box[0]
    if not done:
        raise value
    return value


def writer_first(compute: Callable[[], T]) -> T:
    """`compute` on rank 0 first while the other ranks wait, then on the others: data is downloaded
    and its caches built once, and the other ranks read what rank 0 wrote (on a file system they
    share; on another machine a rank builds its own copy, safely, under unique temporary names).
    An error raised on rank 0 is raised on every rank, without the others computing."""
    if not _active():
        return compute()
    # The wait may take hours (decoding a large folder): a group of its own, on the CPU, whose
    # timeout is PREPARE_TIMEOUT rather than the run's train.dist_timeout_s (a few minutes).
    group = dist.new_group(backend="gloo", timeout=PREPARE_TIMEOUT)
    assert isinstance(group, dist.ProcessGroup)  # every rank is a member
    box: list[Any] = [None]
    try:
        if dist.get_rank() == 0:
            try:
                result = compute()
            except Exception as error:  # raised below on every rank, rank 0 included
                box[0] = error
            dist.broadcast_object_list(box, src=0, group=group)
            if box[0] is not None:
                raise box[0]
            return result
        dist.broadcast_object_list(box, src=0, group=group)  # waits until rank 0 has finished
    finally:
        dist.destroy_process_group(group)
    if box[0] is not None:
        raise box[0]
    return compute()


def restart_count() -> int:
    """How many times torchrun restarted this group after a failure (0 outside torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
