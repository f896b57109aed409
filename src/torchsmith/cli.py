"""The `torchsmith` command line: parsing and wiring only; the work lives in the modules."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchsmith import __version__, commands, views
from torchsmith.config import RunConfig, load_yaml, merge, parse_model_args, parse_set
from torchsmith.distributed import add_launch_arguments
from torchsmith.errors import TorchsmithError

# flag -> (config path, type); flags default to None so only explicit ones override.
TRAIN_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--model": ("model.name", str, "built-in model name, or path/to/file.py:ClassName / pkg.module:Class"),
    "--data": ("data.name", str, "dataset name, or kind:PATH (e.g. imagefolder:photos/)"),
    "--data-dir": ("data.dir", str, "folder holding a local copy of the dataset"),
    "--val-fraction": ("data.val_fraction", float, "fraction of training data held out for validation"),
    "--augment": (
        "data.augment",
        str,
        "batched augmentation for images: none, or ops joined by '-': flip, cropN, translateN, cutoutN "
        "(e.g. crop-flip, flip-translate4-cutout12); for speech any value but none turns it on",
    ),
    "--split": ("data.split", str, "how to split the data, e.g. speaker:NAME to hold one speaker out"),
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
    add_config_flags(train)
    train.add_argument("--compile", action="store_true", default=None, help="train through torch.compile")
    train.add_argument(
        "--resume", action="store_true", help="continue the run in --run-dir from its newest complete checkpoint"
    )
    train.add_argument("--quiet", action="store_true", help="no progress output, only the result line")
    train.add_argument("--debug", action="store_true", help="show tracebacks")
    add_launch_arguments(train)
    listing = sub.add_parser("list", help="list built-in models, datasets or recipes")
    listing.add_argument("what", choices=["models", "data", "recipes"])
    views.add_parsers(sub)
    add_after_training_parsers(sub)
    return parser


def add_config_flags(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """The train flags (TRAIN_FLAGS, --model-args, --config, --set); skipped ones default to None."""
    for flag, (_, kind, text) in TRAIN_FLAGS.items():
        if flag in skip:
            parser.set_defaults(**{flag[2:].replace("-", "_"): None})
        else:
            parser.add_argument(flag, type=kind, default=None, help=text)
    parser.add_argument(
        "--model-args", default=None, help="constructor arguments as JSON, e.g. '{\"num_classes\": 10}'"
    )
    parser.add_argument("--config", default=None, help="YAML config file (e.g. a run's config.yaml)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set optim.lr=0.05 (repeatable)",
    )


CHECKPOINT_FLAG: dict[str, Any] = {
    "choices": ["best", "last", "final"],
    "default": None,
    "help": "which weights: best or last (checkpoints/), final (model.safetensors); default best, else final",
}


def add_after_training_parsers(sub: Any) -> None:
    """evaluate, predict, generate, export and lr-find (implemented in torchsmith.commands)."""
    generate = sub.add_parser("generate", help="sample text from a character-level language model run")
    generate.add_argument("run_dir", metavar="RUN", help="a run directory written by train")
    generate.add_argument("--prompt", default="\n", help="text to continue (default: a new line)")
    generate.add_argument("--length", type=int, default=300, help="number of characters to sample")
    generate.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (0: greedy)")
    generate.add_argument("--top-k", type=int, default=None, help="sample only among the k likeliest characters")
    generate.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same text")
    generate.add_argument("--checkpoint", **CHECKPOINT_FLAG)
    evaluate = sub.add_parser("evaluate", help="loss, accuracy and per-class metrics of a run on a data split")
    evaluate.add_argument("run_dir", metavar="RUN", help="a run directory written by train")
    evaluate.add_argument("--data", default=None, help="another dataset (default: the run's)")
    evaluate.add_argument("--data-dir", default=None, help="folder holding the dataset (default: the run's)")
    evaluate.add_argument("--split", default="test", choices=["test", "val", "train"])
    evaluate.add_argument("--checkpoint", **CHECKPOINT_FLAG)
    evaluate.add_argument("--device", default=None, help="auto, cpu, cuda, ... (default: the run's)")
    evaluate.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    predict = sub.add_parser("predict", help="class labels and probabilities for input files")
    predict.add_argument("run_dir", metavar="RUN", help="a run directory written by train")
    predict.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files (PNG, JPEG), texts or a .txt file with one per line, or WAV files",
    )
    predict.add_argument("--top-k", type=int, default=1, help="label/probability pairs per input")
    predict.add_argument("--checkpoint", **CHECKPOINT_FLAG)
    predict.add_argument("--output", default=None, metavar="FILE.csv", help="write a CSV file instead of printing")
    add_export_parser(sub)
    add_lr_find_parser(sub)
    for command in (evaluate, predict):
        command.add_argument("--debug", action="store_true", help="show tracebacks")


def add_export_parser(sub: Any) -> None:
    export = sub.add_parser("export", help="export a run's model and check it against the eager model")
    export.add_argument("run_dir", metavar="RUN", help="a run directory written by train")
    export.add_argument("--format", default="onnx", choices=["onnx", "exported-program", "torchscript", "safetensors"])
    export.add_argument("--output", default=None, metavar="FILE", help="default RUN/export/model.<suffix>")
    export.add_argument("--checkpoint", **CHECKPOINT_FLAG)
    export.add_argument("--tolerance", type=float, default=1e-4, help="largest max-abs difference accepted")
    export.add_argument("--data", default=None, help="dataset for the parity inputs (default: the run's)")
    export.add_argument("--data-dir", default=None, help="folder holding that dataset (default: the run's)")
    export.add_argument("--debug", action="store_true", help="show tracebacks")


def add_lr_find_parser(sub: Any) -> None:
    lr_find = sub.add_parser("lr-find", help="learning-rate range test: loss against an increasing LR")
    add_config_flags(lr_find, skip=LR_FIND_SKIPS)
    lr_find.add_argument("--min-lr", type=float, default=1e-6, help="first learning rate")
    lr_find.add_argument("--max-lr", type=float, default=1.0, help="last learning rate")
    lr_find.add_argument("--steps", type=int, default=100, help="optimizer steps of the sweep")
    lr_find.add_argument("--plot", default=None, metavar="FILE.png", help="write the loss-vs-LR plot")
    lr_find.add_argument("--debug", action="store_true", help="show tracebacks")
    lr_find.set_defaults(compile=None)


# train flags without meaning in a range test (it sets the LR and the number of steps itself)
LR_FIND_SKIPS = (
    "--epochs",
    "--max-steps",
    "--lr",
    "--scheduler",
    "--on-nan",
    "--checkpoint-every",
    "--keep-last",
    "--run-dir",
)


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
        _put(flags, "model.args", parse_model_args(args.model_args))
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


COMMANDS = {
    "train": command_train,
    "list": command_list,
    "summary": views.command_summary,
    "report": views.command_report,
    "compare": views.command_compare,
    "doctor": views.command_doctor,
    "evaluate": commands.command_evaluate,
    "predict": commands.command_predict,
    "export": commands.command_export,
    "lr-find": commands.command_lr_find,
    "generate": commands.command_generate,
}


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
    except Exception as error:  # a bug of ours or of a library: say so plainly, keep the exit code
        if debug:
            raise
        print(
            f"internal error: {type(error).__name__}: {error}\n(run again with --debug for the traceback, "
            f"and please report it)",
            file=sys.stderr,
        )
        return 1
