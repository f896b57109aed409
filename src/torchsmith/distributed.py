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

import argparse
import contextlib
import gc
import os
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

import torch
import torch.distributed as dist
from torch import nn

from torchsmith.config import TrainConfig
from torchsmith.errors import UsageError
from torchsmith.tasks import MetricAccumulator

if TYPE_CHECKING:
    from torchsmith.state import TrainState

T = TypeVar("T")
# What a rank sends when it wants to stop; the reduction keeps the largest, so a signal wins.
STOP_CODES = {"": 1, "SIGINT": 2, "SIGTERM": 3}


def environment() -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) when torchrun started several processes, else None."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or "RANK" not in os.environ:
        return None
    return int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0"))


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
        keys = sorted(meter.totals)
        if agree_keys:
            gathered: list[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, keys)
            keys = sorted(set().union(*gathered))
        values = [meter.loss_sum, meter.count, *(meter.totals.get(key, 0) for key in keys)]
        # float64: exact for counts up to 2**53, and no rounding added to the float32 loss sums
        packed = torch.stack([torch.as_tensor(v, device=self.device).to(torch.float64).reshape(()) for v in values])
        dist.all_reduce(packed)
        loss_sum, count, *totals = packed.unbind()
        meter.loss_sum, meter.count = loss_sum, int(count.item())
        meter.totals = dict(zip(keys, totals, strict=True))

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


def restart_count() -> int:
    """How many times torchrun restarted this group after a failure (0 outside torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


# ---------------------------------------------------------------------- the launcher
LAUNCH_FLAGS = (
    "--nproc-per-node",
    "--nnodes",
    "--node-rank",
    "--rdzv-endpoint",
    "--master-addr",
    "--master-port",
    "--max-restarts",
)


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("several processes, GPUs or machines (through torchrun)")
    group.add_argument(
        "--nproc-per-node",
        type=int,
        default=None,
        metavar="N",
        help="start N processes on this machine (one per GPU); --batch-size stays the global batch",
    )
    group.add_argument("--nnodes", default=None, help="number of machines (or MIN:MAX with --rdzv-endpoint)")
    group.add_argument("--node-rank", type=int, default=None, help="this machine's index, with --master-addr")
    group.add_argument(
        "--rdzv-endpoint",
        default=None,
        metavar="HOST:PORT",
        help="where the machines meet (c10d rendezvous; node ranks are assigned)",
    )
    group.add_argument("--master-addr", default=None, help="address of the machine with --node-rank 0")
    group.add_argument("--master-port", type=int, default=None, help="a free port on that machine")
    group.add_argument(
        "--max-restarts",
        type=int,
        default=None,
        metavar="K",
        help="restart all processes up to K times after a failure; they resume from the newest checkpoint",
    )


def launched() -> bool:
    """Whether this process was started by torchrun (or by hand with RANK set)."""
    return "RANK" in os.environ


def launch_command(argv: Sequence[str], args: argparse.Namespace, run_dir: str) -> list[str]:
    """The torchrun command that runs `torchsmith <argv>` without the launcher flags, in `run_dir`.

    Example:
        >>> args = argparse.Namespace(nproc_per_node=2, nnodes=None, node_rank=None, rdzv_endpoint=None,
        ...                           master_addr=None, master_port=None, max_restarts=None)
        >>> launch_command(["train", "--nproc-per-node", "2"], args, "runs/a")[1:]  # doctest: +NORMALIZE_WHITESPACE
        ['-m', 'torch.distributed.run', '--nproc-per-node', '2', '--max-restarts', '0', '--standalone',
         '-m', 'torchsmith', 'train', '--run-dir', 'runs/a']
    """
    _check_launch(args)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(args.nproc_per_node),
        "--max-restarts",
        str(args.max_restarts or 0),
    ]
    nnodes = args.nnodes or "1"
    if args.rdzv_endpoint:
        command += ["--nnodes", nnodes, "--rdzv-backend", "c10d", "--rdzv-endpoint", args.rdzv_endpoint]
    elif args.master_addr or args.master_port:
        command += [
            "--nnodes",
            nnodes,
            "--node-rank",
            str(args.node_rank or 0),
            "--master-addr",
            args.master_addr or "127.0.0.1",
            "--master-port",
            str(args.master_port or 29500),
        ]
    else:
        command += ["--standalone"]  # one machine: a free port is picked
    rest = _without_launch_flags(argv)
    if "--run-dir" not in rest and not any(item.startswith("--run-dir=") for item in rest):
        rest += ["--run-dir", run_dir]  # fixed now, so that every process and every restart uses it
    return [*command, "-m", "torchsmith", *rest]


def _check_launch(args: argparse.Namespace) -> None:
    errors = []
    if args.nproc_per_node < 1:
        errors.append(f"--nproc-per-node must be a positive integer, got {args.nproc_per_node}")
    if args.max_restarts is not None and args.max_restarts < 0:
        errors.append(f"--max-restarts must be >= 0, got {args.max_restarts}")
    nnodes = str(args.nnodes or "1")
    if not all(part.isdigit() and int(part) > 0 for part in nnodes.split(":", 1)):
        errors.append(f"--nnodes must be a positive integer or MIN:MAX, got '{nnodes}'")
    elif nnodes != "1" and not args.rdzv_endpoint:
        if ":" in nnodes:
            errors.append("--nnodes MIN:MAX needs --rdzv-endpoint HOST:PORT")
        elif not args.master_addr or args.node_rank is None:
            errors.append(
                f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT, or --master-addr with --node-rank on every machine"
            )
    if errors:
        raise UsageError("; ".join(errors))


def _without_launch_flags(argv: Sequence[str]) -> list[str]:
    kept: list[str] = []
    skip_value = False
    for item in argv:
        if skip_value:
            skip_value = False
        elif item.split("=", 1)[0] in LAUNCH_FLAGS:
            skip_value = "=" not in item
        else:
            kept.append(item)
    return kept


def launch(argv: Sequence[str], args: argparse.Namespace, run_dir: str, quiet: bool = False) -> NoReturn:
    """Replace this process by torchrun running the same command in every process.

    torchrun takes this process's place, so a signal sent to it reaches torchrun, which passes
    it on to every process (each saves and stops at the same step).
    """
    command = launch_command(argv, args, run_dir)
    if not quiet:
        print("launching: " + " ".join(command[1:]), file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execv(sys.executable, command)
