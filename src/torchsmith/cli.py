"""The `torchsmith` command line: parsing and wiring only; the work lives in the modules."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from torchsmith import __version__
from torchsmith.config import RunConfig, load_yaml, merge, parse_set
from torchsmith.distributed import add_launch_arguments
from torchsmith.errors import TorchsmithError, UsageError

# flag -> (config path, type); flags default to None so only explicit ones override.
TRAIN_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--model": ("model.name", str, "built-in model name, or path/to/file.py:ClassName / pkg.module:Class"),
    "--data": ("data.name", str, "dataset name, or kind:PATH (e.g. imagefolder:photos/)"),
    "--data-dir": ("data.dir", str, "folder holding a local copy of the dataset"),
    "--val-fraction": ("data.val_fraction", float, "fraction of training data held out for validation"),
    "--augment": ("data.augment", str, "batched augmentation: none, flip, crop, crop-flip"),
    "--epochs": ("train.max_epochs", int, "number of epochs"),
    "--max-steps": ("train.max_steps", int, "stop after this many optimizer steps"),
    "--batch-size": ("train.batch_size", int, "samples per optimizer step (global batch)"),
    "--optimizer": ("optim.name", str, "sgd, adamw, adam, adadelta, rmsprop, adagrad"),
    "--lr": ("optim.lr", float, "learning rate"),
    "--weight-decay": ("optim.weight_decay", float, "weight decay"),
    "--scheduler": ("optim.scheduler", str, "none, cosine, onecycle, linear, step"),
    "--loss": ("loss", str, "cross_entropy, nll, mse, l1, smooth_l1, bce_with_logits"),
    "--seed": ("train.seed", int, "random seed (data order, augmentation, init)"),
    "--device": ("train.device", str, "auto, cpu, cuda, cuda:N, mps"),
    "--precision": ("train.precision", str, "fp32, bf16 (autocast) or fp16"),
    "--clip-grad-norm": ("train.clip_grad_norm", float, "clip the global gradient norm to this value"),
    "--on-nan": ("train.on_nan", str, "what to do on a non-finite loss/gradient: stop, skip, rollback"),
    "--checkpoint-every": ("train.checkpoint_every", int, "save a checkpoint every N steps"),
    "--keep-last": ("train.keep_last", int, "how many periodic checkpoints to keep"),
    "--run-dir": ("run_dir", str, "where the run's files go (default runs/<model>-<data>-<time>)"),
    "--recipe": ("recipe", str, "a tuned preset (see `torchsmith list recipes`); flags override it"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchsmith", description="Train custom PyTorch networks fast and safely.")
    parser.add_argument("--version", action="version", version=f"torchsmith {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = sub.add_parser("train", help="train a model (default: SimpleNet on the embedded MNIST sample)")
    for flag, (_, kind, text) in TRAIN_FLAGS.items():
        train.add_argument(flag, type=kind, default=None, help=text)
    train.add_argument("--model-args", default=None, help="constructor arguments as JSON, e.g. '{\"num_classes\": 10}'")
    train.add_argument("--config", default=None, help="YAML config file (e.g. a run's config.yaml)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config key, e.g. --set optim.lr=0.05 (repeatable)")
    train.add_argument("--compile", action="store_true", default=None, help="train through torch.compile")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --run-dir from its newest complete checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress output, only the result line")
    train.add_argument("--debug", action="store_true", help="show tracebacks")
    add_launch_arguments(train)
    listing = sub.add_parser("list", help="list built-in models, datasets or recipes")
    listing.add_argument("what", choices=["models", "data", "recipes"])
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """defaults < recipe < --config file < explicit flags < --set."""
    from torchsmith.recipes import recipe_config

    values: dict[str, Any] = {}
    flags: dict[str, Any] = {}
    for flag, (path, _, _) in TRAIN_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            _put(flags, path, value)
    if args.model_args is not None:
        try:
            model_args = json.loads(args.model_args)
        except json.JSONDecodeError as error:
            raise UsageError(f"--model-args must be a JSON object, e.g. '{{\"num_classes\": 10}}': {error}") from None
        _put(flags, "model.args", model_args)
    if args.compile:
        _put(flags, "train.compile", True)
    config_file = args.config
    if config_file is None and getattr(args, "resume", False) and args.run_dir:
        saved = Path(args.run_dir) / "config.yaml"
        config_file = str(saved) if saved.is_file() else None  # resume with the run's own config
    file_values = load_yaml(config_file) if config_file else {}
    recipe = flags.get("recipe") or file_values.get("recipe")
    if recipe:
        values = merge(values, recipe_config(recipe))
    values = merge(merge(merge(values, file_values), flags), parse_set(args.set))
    return RunConfig.from_dict(values)


def _put(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def command_train(args: argparse.Namespace) -> int:
    from torchsmith import distributed
    from torchsmith.run import default_run_dir, result_line, train_run

    config = config_from_args(args)
    if args.nproc_per_node is not None and not distributed.launched():
        run_dir = config.run_dir or str(default_run_dir(config))
        distributed.launch(args.argv, args, run_dir, quiet=args.quiet)  # does not return
    result = train_run(config, quiet=args.quiet, resume=args.resume)
    if distributed.is_writer():
        print(f"run directory: {result.run_dir}", file=sys.stderr)
        print(result_line(result.summary))
    return 0


def command_list(args: argparse.Namespace) -> int:
    if args.what == "models":
        from torchsmith.models.registry import MODELS

        rows = [(e.name, e.description) for e in MODELS.values()]
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


COMMANDS = {"train": command_train, "list": command_list}


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
        return 130
