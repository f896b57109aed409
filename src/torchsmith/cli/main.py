"""The `torchsmith` command line: parsing and wiring only; the work lives in the modules."""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence

from torchsmith._version import __version__
from torchsmith.cli import inspect, runs, sweep, train
from torchsmith.errors import TorchsmithError, signal_exit_code

GROUPS = (train, inspect, runs, sweep)  # the order of `torchsmith --help`


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchsmith", description="Train custom PyTorch networks fast and safely.")
    parser.add_argument("--version", action="version", version=f"torchsmith {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in GROUPS:
        group.add_parsers(sub)
    return parser


COMMANDS = {name: command for group in GROUPS for name, command in group.COMMANDS.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv or ["--help"])
    args.argv = argv  # the train launcher passes them on to torchrun
    debug = getattr(args, "debug", False)
    try:
        return COMMANDS[args.command](args)
    except TorchsmithError as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return signal_exit_code("SIGINT")
    except Exception as error:  # a bug of ours or of a library: say so plainly, keep the exit code
        if debug:
            raise
        print(
            f"internal error: {type(error).__name__}: {error}\n(run again with --debug for the traceback, "
            f"and please report it)",
            file=sys.stderr,
        )
        return 1


def run() -> int:
    """The process's entry point (the `torchsmith` script, `python -m torchsmith`): `main`, then
    the heap frozen. Everything alive now dies with the process; frozen objects are left out of
    the collections the interpreter runs while it shuts down, which took 0.3-0.8 s after
    importing torch (gc.freeze is documented for exactly this: objects that live to the end).
    """
    code = main()
    gc.freeze()
    return code
