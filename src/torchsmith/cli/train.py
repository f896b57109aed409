"""`torchsmith train`, `list` and `lr-find`: the commands that take the training flags."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from torchsmith.cli.flags import LR_FIND_SKIPS, add_config_flags, config_from_args
from torchsmith.cli.launch import add_launch_arguments


def add_parsers(sub: Any) -> None:
    """Register train, list and lr-find on the CLI's subparsers."""
    train = sub.add_parser("train", help="train a model (default: SimpleNet on the embedded MNIST sample)")
    add_config_flags(train)
    train.add_argument("--compile", action="store_true", default=None, help="train through torch.compile")
    train.add_argument(
        "--resume", action="store_true", help="continue the run in --run-dir from its newest complete checkpoint"
    )
    train.add_argument(
        "--overwrite", action="store_true", help="delete the run already in --run-dir and train a new one there"
    )
    train.add_argument("--quiet", action="store_true", help="no progress output, only the result line")
    train.add_argument("--debug", action="store_true", help="show tracebacks")
    train.add_argument(
        "--profile-startup",
        action="store_true",
        default=None,
        help="print each phase's seconds (imports, data load, pre-flight, training, report, ...) to stderr",
    )
    add_launch_arguments(train)
    listing = sub.add_parser("list", help="list built-in models, datasets or recipes")
    listing.add_argument("what", choices=["models", "data", "recipes"])
    listing.add_argument(
        "--zoo", choices=["timm", "torchvision"], default=None, help="with models: the names a model zoo builds"
    )
    listing.add_argument("--filter", default=None, metavar="PATTERN", help="with --zoo: names matching, e.g. 'resnet*'")
    add_lr_find_parser(sub)


def add_lr_find_parser(sub: Any) -> None:
    lr_find = sub.add_parser("lr-find", help="learning-rate range test: loss against an increasing LR")
    add_config_flags(lr_find, skip=LR_FIND_SKIPS)
    lr_find.add_argument("--min-lr", type=float, default=1e-6, help="first learning rate")
    lr_find.add_argument("--max-lr", type=float, default=1.0, help="last learning rate")
    lr_find.add_argument("--steps", type=int, default=100, help="optimizer steps of the sweep")
    lr_find.add_argument("--plot", default=None, metavar="FILE.png", help="write the loss-vs-LR plot")
    lr_find.add_argument("--debug", action="store_true", help="show tracebacks")
    lr_find.set_defaults(compile=None)


def command_train(args: argparse.Namespace) -> int:
    from torchsmith.phases import PhaseClock

    clock = PhaseClock(from_process_start=True)
    config = config_from_args(args)
    clock.lap("parse and config")
    from torchsmith.app import default_run_dir, train_run
    from torchsmith.cli import launch
    from torchsmith.io import rank
    from torchsmith.run_summary import result_line

    clock.lap("imports")
    if args.nproc_per_node is not None and not launch.launched():
        run_dir = config.run_dir or str(default_run_dir(config))
        launch.launch(args.argv, args, run_dir, quiet=args.quiet)  # does not return
    result = train_run(config, quiet=args.quiet, resume=args.resume, overwrite=args.overwrite, clock=clock)
    if rank.is_writer():
        print(f"run directory: {result.run_dir}", file=sys.stderr)
        print(result_line(result.summary))
        if config.train.profile_startup:
            clock.lap("exit")
            print(clock.to_text(train_time_s=result.summary.get("train_time_s", 0.0)), file=sys.stderr, flush=True)
    return 0


def command_list(args: argparse.Namespace) -> int:
    if args.zoo is not None:
        from torchsmith.errors import UsageError
        from torchsmith.models.zoo import list_names

        if args.what != "models":
            raise UsageError(f"--zoo lists models: torchsmith list models --zoo {args.zoo}")
        names = list_names(args.zoo, args.filter)
        for name in names:
            print(f"{args.zoo}:{name}")
        print(f"{len(names)} models; train one with --model {args.zoo}:NAME [--pretrained]", file=sys.stderr)
        return 0
    if args.what == "models":
        from torchsmith.models.registry import ALIASES, MODELS

        rows = [(e.name, e.description) for e in MODELS.values()]
        rows += [(alias, f"the earlier name of {name}") for alias, name in ALIASES.items()]
    elif args.what == "data":
        from torchsmith.data.registry import DATASETS

        rows = [(e.name + (":PATH" if e.takes_path else ""), e.description) for e in DATASETS.values()]
    else:
        from torchsmith.recipes import RECIPES

        rows = [(r.name, r.description) for r in RECIPES.values()]
    width = max(len(name) for name, _ in rows)
    for name, text in rows:
        print(f"{name:<{width}}  {text}")
    return 0


def command_lr_find(args: argparse.Namespace) -> int:
    from torchsmith.after.lr_find import lr_find_run

    config = config_from_args(args)
    result = lr_find_run(config, min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps)
    print(result.to_text())
    if args.plot:
        print(f"plot: {result.plot(args.plot)}", file=sys.stderr)
    print(f"train with: --optimizer {config.optim.name} --lr {result.suggestion:.3g}")
    return 0


COMMANDS = {"train": command_train, "list": command_list, "lr-find": command_lr_find}
