"""The run's configuration: typed dataclasses are the source of truth.

Values come from defaults, then a recipe, then a YAML file, then explicit flags, then
`--set section.key=value` overrides. Every problem is reported at once, with a
close-match suggestion for unknown keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from torchsmith.errors import UsageError, did_you_mean, short
from torchsmith.yaml_text import load_yaml_text

TTA_MODES = ("none", "flip", "flip-translate")  # test-time augmentation (train.tta)
TASK_NAMES = (
    "classification",
    "sequence",
    "regression",
    "multilabel",
)  # what a DataInfo.task may name (train.tasks implements them)


@dataclass
class ModelConfig:
    name: str = "simplenet"
    args: dict[str, Any] = field(default_factory=dict)
    init: str = "default"  # default | whitening (first conv from the training patches, SpeedNet)
    # which part of a dict / ModelOutput / tuple the model returns is the prediction (default:
    # "logits", else the first element); a returned "loss" is used as the loss
    output: str | None = None
    # Starting weights: true = the zoo library's own (timm:NAME, torchvision:NAME), or a file
    # (.safetensors; .pth/.pt load with weights_only=True). False: the model's own initialisation.
    pretrained: bool | str = False
    init_from: str | None = None  # another torchsmith run directory whose weights to start from


@dataclass
class DataConfig:
    name: str = "mnist-sample"
    dir: str | None = None
    val_fraction: float = 0.1
    split: str | None = None  # e.g. "speaker:theo" to hold one speaker out (speech data)
    augment: str = "none"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class FinetuneConfig:
    """`--finetune`: the new head trains alone first, then everything with per-group learning rates."""

    enabled: bool = False
    frozen_epochs: int = 1  # epochs with the body frozen (BatchNorm statistics too)
    lr_decay: float = 0.5  # each layer group below the head trains at this fraction of the one above


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    beta2: float = 0.999  # Adam/AdamW's second-moment decay (0.99 suits small, noisy batches)
    scheduler: str = "cosine"  # none | cosine | onecycle | linear | step
    warmup_steps: int = 0
    warmup_fraction: float = 0.0  # warm-up as a fraction of all steps (used when warmup_steps is 0)
    warmup_start_ratio: float = 0.0  # the LR factor at the first warm-up step
    min_lr_ratio: float = 0.0
    label_smoothing: float = 0.0
    plateau_factor: float = 0.1  # scheduler=plateau: LR factor when train.monitor stops improving
    plateau_patience: int = 2  # scheduler=plateau: evaluations without improvement before lowering


@dataclass
class TrainConfig:
    max_epochs: int = 5
    max_steps: int | None = None
    batch_size: int = 64
    group_by_length: bool = False  # batch text of similar length together (less padding, faster)
    eval_batch_size: int = 1000
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    precision: str = "fp32"  # fp32 | bf16 | fp16
    compile: bool = False
    channels_last: bool = False
    clip_grad_norm: float | None = None
    on_nan: str = "stop"  # stop | skip | rollback
    nan_guard: bool = True
    # Read the guard's verdict every N steps. 1 (default): stop within the failing step, and
    # replay it for the doctor. N > 1 with a fused optimizer on CUDA: the failing step is
    # skipped on the device (weights untouched) and reported at the next check, with no
    # host sync per step.
    nan_check_every: int = 1
    nan_max_skips: int = 10  # on_nan=skip gives up after this many skipped steps
    nan_max_rollbacks: int = 3  # on_nan=rollback gives up after this many rollbacks
    log_every: int = 50
    checkpoint_every: int | None = None  # steps; None = at the end of every epoch
    keep_last: int = 2
    ema_decay: float | None = None  # weight averaging: decay of the running average
    ema_every: int = 1  # update the average every N steps
    ema_lookahead: bool = False  # copy the average back into the model at each update (airbench)
    ema_warmup_power: float = 0.0  # decay ramps up as (step / total) ** power (airbench: 3)
    tta: str = "none"  # test-time augmentation in evaluation: none | flip | flip-translate
    freeze_whitening_bias_after: int | None = None  # epochs (SpeedNet's whitening bias)
    early_stopping_patience: int | None = None
    monitor: str = "val_loss"  # any reported metric: best checkpoints, early stopping, plateau LR
    metrics: str = ""  # comma-separated metrics to compute (e.g. "accuracy,f1_macro"); "" = the task's defaults
    accumulate: int = 1  # micro-batches per optimizer step (batch_size stays the global batch)
    eval_every: int | None = None  # also evaluate every N steps (mid-epoch rows in metrics.csv)
    keep_best: int = 1  # checkpoints kept by train.monitor (best-1 ... best-K; `best` is the top one)
    progress: str = "auto"  # auto | bar | lines | none
    dist_timeout_s: float = 120.0  # how long a collective waits for the other processes before failing
    # The step as a CUDA graph (train/capture.py): "auto" where it qualifies, true (an error where it
    # cannot), false. Booleans, not on/off: YAML reads on/off as booleans anyway.
    capture: bool | str = "auto"
    profile_startup: bool = False  # `torchsmith train` prints each phase's seconds (imports, data, ...) at the end


def with_options(config: TrainConfig, options: dict[str, Any]) -> TrainConfig:
    """`config` with keyword options replaced, as `Trainer(..., max_epochs=3)` passes them."""
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = [f"'{key}'{did_you_mean(key, names)}" for key in options if key not in names]
    if unknown:
        raise TypeError(f"Trainer got unknown option(s) {'; '.join(unknown)} Options are: {', '.join(names)}.")
    return dataclasses.replace(config, **options)


@dataclass
class TrackConfig:
    """Where the run is also logged: an experiment tracker (MLflow, Weights & Biases) or none."""

    backend: str = "none"  # none | mlflow | wandb
    uri: str | None = None  # MLflow: tracking URI (default: MLFLOW_TRACKING_URI, else MLflow's local store)
    experiment: str = "torchsmith"  # MLflow experiment / W&B project
    run_name: str | None = None  # default: the run directory's name
    offline: bool = False  # W&B: write files only, `wandb sync` them later
    timeout_s: float = 10.0  # the longest the run waits for the tracker at its end


@dataclass
class RunConfig:
    """Everything a run needs; saved as `config.yaml` in the run directory.

    Example:
        >>> config = RunConfig.from_dict({"train": {"max_epochs": 5}, "optim": {"lr": 0.05}})
        >>> config.train.max_epochs, config.optim.lr
        (5, 0.05)
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    loss: str = "cross_entropy"
    run_dir: str | None = None
    recipe: str | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> RunConfig:
        errors: list[str] = []
        config = _build(cls, values, source, errors)
        errors += validate(config)
        if errors:
            raise UsageError("invalid configuration:\n  - " + "\n  - ".join(errors))
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, values: Any, where: str, errors: list[str]) -> Any:
    if not isinstance(values, dict):
        errors.append(f"{where} must be a mapping of keys to values, got {short(values)}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where != "config" else str(key)
        if key not in names:
            hint = did_you_mean(str(key), names) or elsewhere(str(key)) or f" Known keys: {', '.join(names)}."
            errors.append(f"unknown key {short(path)}.{hint}")
        elif dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value, path, errors)
        else:
            kwargs[key] = _coerce(value, hints[key], path, errors)
    return cls(**kwargs)


# flag names that are not key names: `epochs: 2` at the top level means train.max_epochs
KEY_ALIASES = {"epochs": "train.max_epochs", "optimizer": "optim.name", "scheduler": "optim.scheduler"}


def elsewhere(key: str) -> str:
    """ " Did you mean 'train.max_epochs'?" for a key written at the wrong level or misspelt there."""
    keys = dict(KEY_ALIASES)
    for name, hint in typing.get_type_hints(RunConfig).items():
        if dataclasses.is_dataclass(hint):
            keys.update({f.name: f"{name}.{f.name}" for f in dataclasses.fields(hint)})
    close = difflib.get_close_matches(key, list(keys), n=1)
    return f" Did you mean '{keys[close[0]]}'?" if close else ""


def _coerce(value: Any, hint: Any, path: str, errors: list[str]) -> Any:
    """Check `value` against a field's type (int, float, str, bool, dict, Optional[...])."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        base = typing.get_origin(option) or option
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if base in (str, bool, dict) and isinstance(value, base):
            return value
    wanted = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    errors.append(f"'{path}' must be {wanted}, got {short(value)}")
    return None


CHOICES = {
    "train.precision": ("fp32", "bf16", "fp16"),
    "train.on_nan": ("stop", "skip", "rollback"),
    "train.progress": ("auto", "bar", "lines", "none"),
    "optim.scheduler": ("none", "cosine", "onecycle", "linear", "step", "plateau"),
    "train.tta": TTA_MODES,
    "model.init": ("default", "whitening"),
    "track.backend": ("none", "mlflow", "wandb"),
}


def validate(config: RunConfig) -> list[str]:
    """Value checks beyond types; returns every problem found."""
    errors = []
    train, optim = config.train, config.optim
    positive = {
        "--epochs (train.max_epochs)": train.max_epochs,
        "--batch-size (train.batch_size)": train.batch_size,
        "train.eval_batch_size": train.eval_batch_size,
        "train.log_every": train.log_every,
        "--accumulate (train.accumulate)": train.accumulate,
        "--keep-best (train.keep_best)": train.keep_best,
        "--keep-last (train.keep_last)": train.keep_last,
        "train.ema_every": train.ema_every,
        "train.nan_check_every": train.nan_check_every,
    }
    for name, value in positive.items():
        if value is not None and value <= 0:
            errors.append(f"{name} must be a positive integer, got {value}")
    optional: dict[str, int | None] = {
        "--max-steps": train.max_steps,
        "train.checkpoint_every": train.checkpoint_every,
        "--eval-every (train.eval_every)": train.eval_every,
    }
    for name, optional_value in optional.items():
        if optional_value is not None and optional_value <= 0:
            errors.append(f"{name} must be a positive integer, got {optional_value}")
    if optim.lr is not None and optim.lr <= 0:
        errors.append(f"--lr (optim.lr) must be positive, got {optim.lr}")
    if optim.beta2 is not None and not 0 <= optim.beta2 < 1:
        errors.append(f"optim.beta2 must be in [0, 1), got {optim.beta2}")
    if optim.weight_decay is not None and optim.weight_decay < 0:
        errors.append(f"--weight-decay must be >= 0, got {optim.weight_decay}")
    if config.data.val_fraction is not None and not 0 <= config.data.val_fraction < 1:
        errors.append(f"data.val_fraction must be in [0, 1), got {config.data.val_fraction}")
    if train.dist_timeout_s is not None and train.dist_timeout_s <= 0:
        errors.append(f"train.dist_timeout_s must be positive, got {train.dist_timeout_s}")
    if train.accumulate and train.batch_size and train.accumulate > train.batch_size:
        errors.append(f"--accumulate ({train.accumulate}) cannot exceed --batch-size ({train.batch_size})")
    finetune = config.finetune
    if finetune.frozen_epochs is not None and finetune.frozen_epochs < 0:
        errors.append(f"finetune.frozen_epochs must be >= 0, got {finetune.frozen_epochs}")
    if finetune.lr_decay is not None and not 0 < finetune.lr_decay <= 1:
        errors.append(f"finetune.lr_decay must be in (0, 1], got {finetune.lr_decay}")
    if config.model.pretrained is not False and config.model.init_from:
        errors.append("--pretrained and --init-from both give starting weights: choose one")
    if train.clip_grad_norm is not None and train.clip_grad_norm <= 0:
        errors.append(f"--clip-grad-norm must be positive, got {train.clip_grad_norm}")
    if isinstance(train.capture, str) and train.capture != "auto":
        errors.append(f"train.capture must be true, false or auto, got '{train.capture}'")
    if config.track.timeout_s is not None and config.track.timeout_s <= 0:
        errors.append(f"track.timeout_s must be positive, got {config.track.timeout_s}")
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value is not None and value not in allowed:
            errors.append(f"{key} must be one of {', '.join(allowed)}, got '{value}'")
    return errors


def parse_model_args(text: str | None) -> dict[str, Any]:
    """`--model-args` JSON -> constructor arguments; a clear error for anything but a JSON object."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"--model-args must be a JSON object, e.g. '{{\"num_classes\": 10}}': {error}") from None
    if not isinstance(value, dict):
        raise UsageError(f"--model-args must be a JSON object, e.g. '{{\"num_classes\": 10}}', got {text}")
    return value


def parse_set(assignments: list[str]) -> dict[str, Any]:
    """`["optim.lr=0.05", "model.args.width=64"]` -> nested dict, values parsed as YAML scalars."""
    result: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects key=value (e.g. --set optim.lr=0.05), got '{item}'")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = result
        parts = key.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                section = ".".join(parts[: depth + 1])
                raise UsageError(
                    f"--set {item} conflicts with an earlier --set {section}={short(node)}: {section} is a "
                    f"section of keys, not a value. Drop --set {section}=..., or set its keys one by one."
                )
        node[parts[-1]] = value
    return result


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge; `override` wins. `args`/`options` dicts merge key by key too."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config safely (no Python tags, no code)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist")
    try:
        values = load_yaml_text(path.read_text(encoding="utf-8"), str(path))
    except UnicodeDecodeError as error:
        raise UsageError(
            f"config file {path} is not UTF-8 text (byte {error.object[error.start]:#04x} at position "
            f"{error.start}); save it as UTF-8"
        ) from None
    except yaml.YAMLError as error:
        raise UsageError(f"{path} is not a valid torchsmith config: {error}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UsageError(f"{path} must hold a mapping at the top level, got {type(values).__name__}")
    return values


def save_yaml(config: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
