"""The training flags and how they become one RunConfig: defaults < recipe < --config < flags < --set."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchsmith.config import RunConfig, load_yaml, merge, parse_model_args, parse_set
from torchsmith.errors import UsageError

# flag -> (config path, type); flags default to None so only explicit ones override.
TRAIN_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--model": (
        "model.name",
        str,
        "built-in model name, timm:NAME / torchvision:NAME, or path/to/file.py:ClassName / pkg.module:Class",
    ),
    "--init-from": ("model.init_from", str, "start from the weights of another torchsmith run (its directory)"),
    "--data": ("data.name", str, "dataset name, or kind:PATH (e.g. imagefolder:photos/)"),
    "--data-dir": ("data.dir", str, "folder holding a local copy of the dataset"),
    "--val-fraction": ("data.val_fraction", float, "fraction of training data held out for validation"),
    "--augment": (
        "data.augment",
        str,
        "batched augmentation for images: none, or ops joined by '-': flip, cropN, translateN, cutoutN "
        "(e.g. crop-flip, flip-translate4-cutout12); for speech any value but none turns it on",
    ),
    "--image-size": (
        "data.options.image_size",
        str,
        "training resolution for image folders and tables, N or HxW (images of any size are resized once)",
    ),
    "--split": ("data.split", str, "how to split the data, e.g. speaker:NAME to hold one speaker out"),
    "--epochs": ("train.max_epochs", int, "number of epochs"),
    "--max-steps": ("train.max_steps", int, "stop after this many optimizer steps"),
    "--batch-size": ("train.batch_size", int, "samples per optimizer step (global batch)"),
    "--optimizer": ("optim.name", str, "sgd, adamw, adam, adadelta, rmsprop, adagrad"),
    "--lr": ("optim.lr", float, "learning rate"),
    "--weight-decay": ("optim.weight_decay", float, "weight decay"),
    "--scheduler": ("optim.scheduler", str, "none, cosine, onecycle, linear, step, plateau (on train.monitor)"),
    "--loss": ("loss", str, "cross_entropy, nll, mse, l1, smooth_l1, bce_with_logits"),
    "--seed": ("train.seed", int, "random seed (data order, augmentation, init)"),
    "--device": ("train.device", str, "auto, cpu, cuda, cuda:N, mps"),
    "--precision": ("train.precision", str, "fp32, bf16 (autocast) or fp16"),
    "--clip-grad-norm": ("train.clip_grad_norm", float, "clip the global gradient norm to this value"),
    "--on-nan": ("train.on_nan", str, "what to do on a non-finite loss/gradient: stop, skip, rollback"),
    "--checkpoint-every": ("train.checkpoint_every", int, "save a checkpoint every N steps"),
    "--keep-last": ("train.keep_last", int, "how many periodic checkpoints to keep"),
    "--keep-best": ("train.keep_best", int, "how many checkpoints to keep by train.monitor (best-step-N; best = top)"),
    "--metrics": (
        "train.metrics",
        str,
        "metrics to compute, comma-separated (accuracy, top5, f1_macro, auroc, mae, rmse, r2, f1_micro, map, ...)",
    ),
    "--monitor": ("train.monitor", str, "metric for best checkpoints, early stopping and plateau LR (e.g. val_r2)"),
    "--accumulate": ("train.accumulate", int, "micro-batches per optimizer step (--batch-size stays the global batch)"),
    "--eval-every": ("train.eval_every", int, "also evaluate every N steps (mid-epoch rows in metrics.csv)"),
    "--run-dir": ("run_dir", str, "where the run's files go (default runs/<model>-<data>-<time>)"),
    "--track": ("track.backend", str, "also log the run to an experiment tracker: mlflow or wandb (or none)"),
    "--recipe": ("recipe", str, "a tuned preset (see `torchsmith list recipes`); flags override it"),
}


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
    parser.add_argument(
        "--pretrained",
        nargs="?",
        const=True,
        default=None,
        metavar="PATH",
        help="start from pretrained weights: a zoo model's own (timm:NAME, torchvision:NAME), or a "
        ".safetensors/.pth file",
    )
    parser.add_argument(
        "--finetune",
        action="store_true",
        default=None,
        help="train the new head alone for finetune.frozen_epochs, then all layers at finetune.lr_decay per group",
    )
    parser.add_argument("--config", default=None, help="YAML config file (e.g. a run's config.yaml)")
    parser.add_argument("--trust-model-code", action="store_true", help=TRUST_HELP)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set optim.lr=0.05 (repeatable)",
    )


TRUST_HELP = (
    "allow a config file or run directory to import the user code (file.py:Class) it names as its model; "
    "importing runs that code"
)

CHECKPOINT_FLAG: dict[str, Any] = {
    "choices": ["best", "last", "final"],  # io.checkpoint_format.WEIGHTS_CHOICES (not imported: --help stays light)
    "default": None,
    "help": "which weights: best or last (checkpoints/), final (model.safetensors); default best, else final",
}


# train flags without meaning in a range test (it sets the LR and the number of steps itself)
LR_FIND_SKIPS = (
    "--epochs",
    "--max-steps",
    "--lr",
    "--scheduler",
    "--on-nan",
    "--checkpoint-every",
    "--keep-last",
    "--keep-best",
    "--eval-every",
    "--monitor",
    "--run-dir",
    "--track",
)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """defaults < recipe < --config file < explicit flags < --set."""
    from torchsmith.recipes import recipe_config

    values: dict[str, Any] = {}
    flags: dict[str, Any] = {}
    for flag, (path, _, _) in TRAIN_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            put(flags, path, value)
    if args.model_args is not None:
        put(flags, "model.args", parse_model_args(args.model_args))
    if args.compile:
        put(flags, "train.compile", True)
    if getattr(args, "profile_startup", None):
        put(flags, "train.profile_startup", True)
    if args.pretrained is not None:
        put(flags, "model.pretrained", args.pretrained)
    if args.finetune:
        put(flags, "finetune.enabled", True)
    config_file = args.config
    resume = getattr(args, "resume", False)
    if config_file is None and resume and args.run_dir:
        saved = Path(args.run_dir) / "config.yaml"
        config_file = str(saved) if saved.is_file() else None  # resume with the run's own config
    file_values = load_yaml(config_file) if config_file else {}
    # A run directory is never taken from a file: replaying runs/a/config.yaml must not write into runs/a.
    file_values.pop("run_dir", None)
    if resume and args.run_dir is None:
        put(flags, "run_dir", resume_dir(config_file))
    recipe = flags.get("recipe") or file_values.get("recipe")
    if recipe:
        values = merge(values, recipe_config(recipe))
        if flags.get("model", {}).get("name", values["model"]["name"]) != values["model"]["name"]:
            values["model"] = {k: v for k, v in values["model"].items() if k != "args"}  # args of another model
    overrides = parse_set(args.set)
    values = merge(merge(merge(values, file_values), flags), overrides)
    config = RunConfig.from_dict(values)
    if config_file and config.model.name == (file_values.get("model") or {}).get("name"):
        from torchsmith.models.trust import require_trust

        named_here = "name" in flags.get("model", {}) or "name" in (overrides.get("model") or {})
        require_trust(config.model.name, named_here or args.trust_model_code, f"config file {config_file}")
    return config


def resume_dir(config_file: str | None) -> str:
    """`--resume --config runs/a/config.yaml` continues runs/a: the folder holding a run's config."""
    path = Path(config_file) if config_file else None
    if path is None or path.name != "config.yaml" or not (path.parent / "checkpoints").is_dir():
        raise UsageError(
            "--resume needs the run to continue: name its folder with --run-dir RUN "
            "(or pass --config RUN/config.yaml of that run)"
        )
    return str(path.parent)


def put(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value
