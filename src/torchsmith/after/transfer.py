"""Where a run's weights start: the model's own initialisation, a zoo's pretrained weights, a
weights file (`--pretrained PATH`), or another torchsmith run (`--init-from RUN`).

Both `train` and `lr-find` start here. Another run is read through its run directory
(`config.yaml`, `preprocessing.json` and the weights; safe YAML and safetensors): its model
is never built, so no code of the other run's (a model file) is imported. The inputs are
normalised as the starting weights expect: with a zoo backbone's own constants, or with
those of the run they come from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from torchsmith.after.run_dir import Run, apply_run_normalisation
from torchsmith.callbacks.finetune import FineTune
from torchsmith.config import RunConfig
from torchsmith.data.bundle import DataBundle
from torchsmith.doctor.preflight import Finding, check_input_size
from torchsmith.errors import UsageError
from torchsmith.models import zoo
from torchsmith.models.registry import build_model
from torchsmith.models.weights import LoadReport, find_head, load_into, read_weights_file
from torchsmith.train.optim import optimizer_by_name


@dataclass
class Start:
    """A model with its starting weights, what was done to get them, and the fine-tuning
    schedule when asked for (`callbacks`, `optimizer` for the Trainer)."""

    model: nn.Module
    head: list[str]
    notes: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    report: LoadReport | None = None
    finetune: FineTune | None = None
    optimizer: str | Callable[..., Any] | None = None

    def summary(self) -> dict[str, Any]:
        """What summary.json records under "start"."""
        if self.report is None:
            return {}
        report = self.report
        return {
            "source": report.source,
            "loaded": report.loaded,
            "fresh_head": report.fresh_head,
            "unused": report.unexpected,
        }


def start_model(config: RunConfig, bundle: DataBundle) -> Start:
    """Build the run's model with its starting weights; sets the data's normalisation to match."""
    name, info, pretrained = config.model.name, bundle.info, config.model.pretrained
    if pretrained is True and not zoo.is_zoo(name):
        raise UsageError(
            f"--pretrained without a file loads a zoo library's own weights (timm:NAME, torchvision:NAME); "
            f"for {name}, name a weights file: --pretrained PATH"
        )
    if pretrained is True:
        model = zoo.build(name, info, dict(config.model.args), pretrained=True)
    else:
        model = build_model(name, info, config.model.args)
    start = Start(model, find_head(model, info.num_classes))
    if zoo.is_zoo(name):
        start.notes.append(zoo.describe_head(name, model, info.num_classes))
    if pretrained is True:
        start.notes.append(f"{name}: starts from the library's pretrained weights")
        start.report = LoadReport(f"{name} pretrained weights", len(model.state_dict()))
    elif isinstance(pretrained, str) and pretrained:
        start.report = load_into(model, read_weights_file(pretrained), start.head, pretrained)
        start.notes += start.report.lines()
    elif config.model.init_from:
        start.report = _init_from(config.model.init_from, start, bundle)
        start.notes += start.report.lines()
    if zoo.is_zoo(name):
        _use_backbone(name, start, bundle, pretrained=bool(pretrained))
    if config.finetune.enabled:
        _finetune(config, start)
    return start


def _init_from(path: str, start: Start, bundle: DataBundle) -> LoadReport:
    """The weights of another run; its head is kept only when its classes are this data's."""
    source = Run.open(path)
    info = bundle.info
    _check_same_inputs(source, bundle)
    state, label = source.load_state_dict()
    same_classes = source.info.num_classes == info.num_classes and source.info.class_names == info.class_names
    report = load_into(start.model, state, start.head, f"run {source.path} ({label})", keep_head=same_classes)
    if not same_classes:
        start.notes.append(
            f"the head is new: run {source.path} classified {source.info.num_classes} classes "
            f"({_names(source.info.class_names)}), this data has {info.num_classes} ({_names(info.class_names)})"
        )
    saved = source.preprocessing
    if saved.get("kind") == "image" and info.preprocessing.get("kind") == "image":
        for key in ("mean", "std", "backbone"):
            if key in saved:
                info.preprocessing[key] = saved[key]
        info.preprocessing["normalization"] = f"from run {source.path}"
        _normalise(bundle)
    return report


def _check_same_inputs(source: Run, bundle: DataBundle) -> None:
    """Text runs must share the vocabulary: embedding rows mean words by their position."""
    saved, current = source.preprocessing, bundle.info.preprocessing
    if saved.get("kind") != current.get("kind"):
        raise UsageError(
            f"run {source.path} was trained on {source.info.modality} data ({saved.get('kind')}), this data is "
            f"{bundle.info.modality} ({current.get('kind')}): start from a run on the same kind of inputs"
        )
    for key in ("tokenizer", "vocabulary"):
        if key in saved and saved[key] != current.get(key):
            raise UsageError(
                f"run {source.path} has another vocabulary than this data, so its embedding rows would stand "
                f"for other words; --init-from a text run needs data that builds the same vocabulary"
            )


def _use_backbone(name: str, start: Start, bundle: DataBundle, pretrained: bool) -> None:
    """Save the backbone's input size and normalisation; with its weights, normalise as it expects."""
    backbone = zoo.backbone(name, start.model)
    preprocessing = bundle.info.preprocessing
    preprocessing["backbone"] = backbone.to_dict()
    if not pretrained or preprocessing.get("kind") != "image":
        return
    channels = int(preprocessing.get("channels", 3))
    mean, std = backbone.mean, backbone.std
    if channels != len(mean):  # e.g. greyscale images on an RGB backbone: the channels' average
        mean, std = [sum(mean) / len(mean)] * channels, [sum(std) / len(std)] * channels
    preprocessing["mean"], preprocessing["std"] = mean, std
    preprocessing["normalization"] = f"{name} pretrained weights ({backbone.weights})"
    _normalise(bundle)
    start.findings += check_input_size(bundle.info.input_shape, backbone.input_size, name)


def _normalise(bundle: DataBundle) -> None:
    for split in (bundle.train, bundle.val, bundle.test):
        if split is not None:
            apply_run_normalisation(split, bundle.info.preprocessing)


def _finetune(config: RunConfig, start: Start) -> None:
    settings, optim = config.finetune, config.optim
    if not (config.model.pretrained or config.model.init_from):
        raise UsageError(
            "--finetune trains the head alone before the rest: it needs starting weights "
            "(--pretrained, --pretrained PATH or --init-from RUN)"
        )
    if not start.head:
        raise UsageError(f"--finetune: {config.model.name} has no nn.Linear head to train first")
    if optim.name == "airbench-sgd":
        raise UsageError("--finetune needs one of sgd, adamw, adam, adadelta, rmsprop, adagrad as the optimizer")
    finetune = FineTune(start.head, settings.frozen_epochs, settings.lr_decay)
    groups = finetune.param_groups(start.model, optim.lr)
    start.finetune = finetune
    start.optimizer = lambda params: optimizer_by_name(optim.name, groups, optim)
    lrs = ", ".join(f"{g['layer_group']} {g['lr']:.3g}" for g in groups[:4]) + (", ..." if len(groups) > 4 else "")
    start.notes.append(
        f"fine-tuning: the head ({', '.join(start.head)}) trains alone for {settings.frozen_epochs} epoch(s), "
        f"then {len(groups)} layer groups at lr {lrs}"
    )


def _names(names: list[str]) -> str:
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
