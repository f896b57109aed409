"""Several processes through torch.distributed: the process group, DDP, and what the ranks agree on.

`torchrun` (or `torchsmith train --nproc-per-node N`, which re-launches itself under it) starts
one process per device and sets RANK, WORLD_SIZE and LOCAL_RANK. The Trainer then

- joins the process group (NCCL on cuda:LOCAL_RANK, gloo on the CPU) with a collective timeout of
  `train.dist_timeout_s`, so a dead process makes the others fail within it;
- takes its contiguous slice of every global batch (`--batch-size` is the global batch) and trains
  through DistributedDataParallel, which averages the gradients over the ranks;
- agrees with the other ranks, in one reduction per step, on the NaN guard's verdict and on stop
  requests (signals, early stopping), so that every rank stops at the same step;
- sums metric sums and counts over the ranks at log points and after an evaluation, in which every
  sample is counted exactly once;
- leaves every file to rank 0 (`is_writer`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.distributed as dist
from torch import nn

from torchsmith.config import TrainConfig
from torchsmith.errors import UsageError
from torchsmith.io.rank import environment, restart_count
from torchsmith.train.metrics import MetricAccumulator

if TYPE_CHECKING:
    from torchsmith.state import TrainState

# What a rank sends when it wants to stop; the reduction keeps the largest, so a signal wins.
STOP_CODES = {"": 1, "SIGINT": 2, "SIGTERM": 3}


def setup(config: TrainConfig) -> Distributed | None:
    """Join the process group torchrun prepared (once per process); None in a single process.

    Example:
        >>> setup(TrainConfig()) is None  # not started by torchrun
        True
    """
    found = environment()
    if found is None:
        return None
    rank, world_size, local_rank = found
    device = _device(config.device, local_rank)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL and the object collectives use the current device
        timeout = timedelta(seconds=config.dist_timeout_s)
        store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
        store.set_timeout(timeout)
        # A group that torchrun restarted meets in the store of the group that failed; with keys of its
        # own it cannot read the dead processes' addresses and fail to connect (pytorch/pytorch#135712).
        store = dist.PrefixStore(f"default_pg/attempt-{restart_count()}", store)
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            store=store,
            rank=rank,
            world_size=world_size,
            timeout=timeout,
            device_id=device if device.type == "cuda" else None,
        )
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, device)


def _device(name: str, local_rank: int) -> torch.device:
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if name not in ("auto", "cuda"):
        raise UsageError(
            f"under torchrun every process uses its own GPU (cuda:LOCAL_RANK) or the CPU: "
            f"--device must be auto, cuda or cpu, got '{name}'"
        )
    if not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    if local_rank >= torch.cuda.device_count():
        raise UsageError(
            f"process with LOCAL_RANK {local_rank} has no GPU of its own: "
            f"{torch.cuda.device_count()} are visible; start at most that many per machine"
        )
    return torch.device("cuda", local_rank)


class Distributed:
    """This process's place among the ranks, and the collectives the Trainer runs.

    Example:
        >>> context = Distributed(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
        >>> context.loss_weight(local_samples=17, global_samples=33)  # this rank's share of an uneven batch
        1.0303030303030303
    """

    def __init__(self, rank: int, world_size: int, local_rank: int, device: torch.device) -> None:
        self.rank, self.world_size, self.local_rank, self.device = rank, world_size, local_rank, device
        self.stop_agreed = False  # the stop decision of the last agreement, the same on every rank

    def wrap(self, model: nn.Module, compile: bool = False) -> nn.Module:
        """The model in DDP (and then torch.compile): gradients are averaged over the ranks in backward."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        wrapped = DistributedDataParallel(model, device_ids=ids)
        return cast(nn.Module, torch.compile(wrapped)) if compile else wrapped

    def loss_weight(self, local_samples: int, global_samples: int) -> float:
        """Factor on this rank's mean loss so that DDP's average of the ranks' gradients is the gradient
        of the global batch's mean loss: 1 for equal slices; for the uneven last batch of an epoch, the
        rank's share of the batch times the number of ranks."""
        return self.world_size * local_samples / global_samples

    def batch_share(self, targets: Any, batches: Any, position: int) -> tuple[float, int]:
        """(weight of this rank's mean loss, samples in the global batch) for the batch at `position`."""
        total = batches.order.batch_size_at(position)
        return self.loss_weight(len(targets), total), total

    def agree_step(self, state: TrainState, found_inf: torch.Tensor | None) -> bool:
        """Whether every rank found its loss and gradients finite; the ranks' stop requests ride along
        in the same reduction (one small all_reduce and one host read per step)."""
        flags = torch.zeros(2, device=self.device)
        if found_inf is not None:
            flags[0] = found_inf.reshape(())
        flags[1] = stop_code(state)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        found, code = flags.tolist()
        self._adopt(state, int(code))
        return found == 0

    def agree_stop(self, state: TrainState) -> bool:
        """Whether any rank asked to stop (at an epoch's end and when the loop ends)."""
        code = torch.tensor([float(stop_code(state))], device=self.device)
        dist.all_reduce(code, op=dist.ReduceOp.MAX)
        self._adopt(state, int(code.item()))
        return self.stop_agreed

    def _adopt(self, state: TrainState, code: int) -> None:
        self.stop_agreed = code > 0
        signal = next((name for name, value in STOP_CODES.items() if value == code and name), "")
        if code and not state.stop_requested:
            state.request_stop(
                f"received {signal} on another process" if signal else "stop requested on another process", signal
            )
        elif signal and not state.stop_signal:
            state.stop_signal = signal  # so that every process ends with the signal's exit code

    def reduce_meter(self, meter: MetricAccumulator, agree_keys: bool = False) -> None:
        """Replace this rank's metric sums and count by those of all ranks together.

        `agree_keys` for evaluation: a rank that got no sample has no statistics to name.
        """
        meter.flush()
        shapes = {key: tuple(torch.as_tensor(value).shape) for key, value in meter.totals.items()}
        if agree_keys:
            gathered: list[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, shapes)
            shapes = {key: shape for rank_shapes in gathered for key, shape in rank_shapes.items()}
        keys = sorted(shapes)
        values = [meter.loss_sum, meter.count, *(meter.totals.get(key, torch.zeros(shapes[key])) for key in keys)]
        # float64: exact for counts up to 2**53, and no rounding added to the float32 loss sums;
        # vectors (confusion counts, histograms) travel flattened in the same single reduction
        flat = [torch.as_tensor(v, device=self.device).to(torch.float64).reshape(-1) for v in values]
        packed = torch.cat(flat)
        dist.all_reduce(packed)
        loss_sum, count, *totals = packed.split([t.numel() for t in flat])
        meter.loss_sum, meter.count = loss_sum.reshape(()), int(count.item())
        meter.totals = {key: total.reshape(shapes[key]) for key, total in zip(keys, totals, strict=True)}

    def global_meter_state(self, meter: MetricAccumulator) -> dict[str, Any]:
        """The state of the unfinished log interval summed over the ranks, for a checkpoint (the
        meter itself keeps this rank's sums)."""
        copy = MetricAccumulator(meter.task)
        copy.load_state_dict(meter.state_dict(), self.device)
        self.reduce_meter(copy)
        return copy.state_dict()

    def gather_in_order(
        self, parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every rank's evaluated (outputs, targets, indices) on every rank, merged into sample order,
        which is the single-process order (evaluation does not shuffle)."""
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, parts)
        rows = [part for rank_parts in gathered for part in rank_parts]
        if not rows:
            return []
        order = torch.cat([indices.cpu() for _, _, indices in rows]).argsort()
        return [(torch.cat([o for o, _, _ in rows])[order], torch.cat([t for _, t, _ in rows])[order])]


def stop_code(state: TrainState) -> int:
    return STOP_CODES.get(state.stop_signal, 1) if state.stop_requested else 0
