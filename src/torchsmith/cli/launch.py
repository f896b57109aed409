"""`--nproc-per-node N` and the other launch flags: re-run the same command under torchrun."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from torchsmith.errors import UsageError

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
