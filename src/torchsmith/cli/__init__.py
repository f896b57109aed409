"""The `torchsmith` command line: the parser and one module per group of commands (wiring only)."""

from torchsmith.cli.main import main

__all__ = ["main"]
