"""Models from the zoos by name: `timm:NAME` and `torchvision:NAME`, the head sized to the data.

timm builds its head for `num_classes` itself; for torchvision the last `nn.Linear` is
replaced by one with an output per class (torchvision refuses other class counts with its
weights). The library's own pretrained weights come through the library, which downloads
and checks them; without internet access the message names the file to fetch elsewhere
and the place to put it. timm is an optional extra: `pip install timm`.
"""

from __future__ import annotations

import difflib
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from torchsmith.data.bundle import DataInfo
from torchsmith.errors import UsageError
from torchsmith.models.weights import find_head

ZOOS = ("timm", "torchvision")
WEIGHTS_DIR = Path(os.environ.get("TORCHSMITH_CACHE", Path.home() / ".cache" / "torchsmith")) / "weights"
HOSTS = {"timm": "huggingface.co", "torchvision": "download.pytorch.org"}


def is_zoo(name: str) -> bool:
    """Whether a --model value names a zoo model (`timm:NAME` or `torchvision:NAME`)."""
    return name.partition(":")[0] in ZOOS


@dataclass(frozen=True)
class Backbone:
    """What a zoo model's pretrained weights expect: (C, H, W) input size and normalisation."""

    weights: str  # e.g. "resnet18.a1_in1k" or "ResNet18_Weights.IMAGENET1K_V1"
    input_size: tuple[int, int, int]
    mean: list[float]
    std: list[float]
    interpolation: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "input_size": list(self.input_size),
            "mean": self.mean,
            "std": self.std,
            "interpolation": self.interpolation,
        }


def build(spec: str, info: DataInfo, args: dict[str, Any], pretrained: bool = False) -> nn.Module:
    """The zoo model `spec` with one output per class, and the library's weights if `pretrained`."""
    zoo, _, name = spec.partition(":")
    if info.modality != "image" or len(info.input_shape) != 3:
        raise UsageError(f"{spec} takes images (C, H, W), but this data gives {info.modality} {info.input_shape}")
    if zoo == "timm":
        return _build_timm(name, info, args, pretrained)
    return _build_torchvision(name, info, args, pretrained)


# ----------------------------------------------------------------- timm
def timm_module() -> ModuleType:
    """timm, or a UsageError with the command that installs it."""
    try:
        import timm
    except ImportError:
        raise UsageError(
            "timm models need the timm package, which is not installed: pip install timm "
            "(or pip install 'torchsmith[timm]')"
        ) from None
    return timm


def _check_timm_name(timm: ModuleType, name: str) -> None:
    if timm.is_model(name) or timm.get_pretrained_cfg(name) is not None:
        return
    choices = timm.list_models(pretrained="." in name)
    close = difflib.get_close_matches(name, choices, n=3)
    hint = f" Did you mean {' or '.join(f'timm:{c}' for c in close)}?" if close else ""
    raise UsageError(f"timm has no model '{name}'.{hint} See `torchsmith list models --zoo timm`.")


def _build_timm(name: str, info: DataInfo, args: dict[str, Any], pretrained: bool) -> nn.Module:
    timm = timm_module()
    _check_timm_name(timm, name)
    options: dict[str, Any] = {"num_classes": info.num_classes, "in_chans": info.input_shape[0], **args}
    if pretrained:
        cfg = timm.get_pretrained_cfg(name)
        local = timm_weights_file(timm, name)
        if local is None and (cfg is None or not (cfg.hf_hub_id or cfg.url)):
            raise UsageError(f"timm has no pretrained weights for {name}; leave --pretrained out, or give a file")
        if local is None:
            require_online("timm", name, timm_offline_help(timm, name))
        else:
            options["pretrained_cfg_overlay"] = {"file": str(local)}
    try:
        return timm.create_model(name, pretrained=pretrained, **options)
    except TypeError as error:
        raise UsageError(f"bad --model-args for timm:{name}: {error}") from None
    except (OSError, RuntimeError) as error:
        if not pretrained:
            raise
        raise UsageError(
            f"timm could not load the pretrained weights of {name}: {error}\n{timm_offline_help(timm, name)}"
        ) from None


def timm_weights_file(timm: ModuleType, name: str) -> Path | None:
    """A local copy of timm's pretrained weights: placed in torchsmith's weights folder, or
    already in the Hugging Face cache."""
    cfg = timm.get_pretrained_cfg(name)
    tag = f"{cfg.architecture}.{cfg.tag}" if cfg is not None and cfg.tag else name
    placed = WEIGHTS_DIR / "timm" / f"{tag}.safetensors"
    if placed.is_file():
        return placed
    if cfg is not None and cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(cfg.hf_hub_id, "model.safetensors")
        if isinstance(cached, str):
            return Path(cached)
    return None


def timm_offline_help(timm: ModuleType, name: str) -> str:
    cfg = timm.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        return f"timm has no pretrained weights for {name}; train from scratch (leave --pretrained out)."
    tag = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else name
    url = f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/model.safetensors" if cfg.hf_hub_id else cfg.url
    place = WEIGHTS_DIR / "timm" / f"{tag}.safetensors"
    return (
        f"Without internet access: on a machine that has it, download {url}, and place it here as "
        f"{place}; --pretrained then finds it. Or pass any weights file with --pretrained PATH."
    )


# ----------------------------------------------------------------- torchvision
def _split_torchvision(name: str) -> tuple[str, str | None]:
    """`resnet50.IMAGENET1K_V2` -> ("resnet50", "IMAGENET1K_V2"); no suffix: the DEFAULT weights."""
    import torchvision
    from torchvision.models import list_models

    arch, _, weights = name.partition(".")
    known = list_models(module=torchvision.models)  # classification models only
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=3)
        hint = f" Did you mean {' or '.join(f'torchvision:{c}' for c in close)}?" if close else ""
        raise UsageError(
            f"torchvision has no classification model '{arch}'.{hint} See `torchsmith list models --zoo torchvision`."
        )
    return arch, weights or None


def torchvision_weights(name: str) -> Any:
    """The weights enum member for `name` (DEFAULT unless a suffix names another)."""
    from torchvision.models import get_model_weights

    arch, chosen = _split_torchvision(name)
    enum = get_model_weights(arch)
    if chosen is None:
        return enum.DEFAULT
    try:
        return enum[chosen]
    except KeyError:
        raise UsageError(
            f"torchvision has no weights {chosen} for {arch}; it has {', '.join(m.name for m in enum)}"
        ) from None


def _build_torchvision(name: str, info: DataInfo, args: dict[str, Any], pretrained: bool) -> nn.Module:
    from torchvision.models import get_model

    arch, _ = _split_torchvision(name)
    if info.input_shape[0] != 3:
        raise UsageError(
            f"torchvision:{arch} takes 3-channel (RGB) images, but this data has {info.input_shape[0]} channel(s)"
        )
    weights = torchvision_weights(name) if pretrained else None
    if weights is not None:
        placed = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if placed.is_file():
            _check_torchvision_file(placed)
        else:
            require_online("torchvision", name, torchvision_offline_help(weights, placed))
    try:
        model = get_model(arch, weights=weights, **args)
    except TypeError as error:
        raise UsageError(f"bad --model-args for torchvision:{arch}: {error}") from None
    except (OSError, RuntimeError) as error:
        if weights is None:
            raise
        placed = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise UsageError(
            f"torchvision could not load {weights}: {error}\n{torchvision_offline_help(weights, placed)}"
        ) from None
    replace_last_linear(model, info.num_classes, f"torchvision:{arch}")
    return model


def _check_torchvision_file(path: Path) -> None:
    """torchvision's file names end in the first hex digits of their SHA-256: check a placed file."""
    import hashlib

    expected = path.stem.rpartition("-")[2]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if expected and not digest.hexdigest().startswith(expected):
        raise UsageError(
            f"{path} does not match its checksum (its SHA-256 does not start with {expected}): "
            f"the download is damaged or another file; delete it and place the file again"
        )


def torchvision_offline_help(weights: Any, place: Path) -> str:
    return (
        f"Without internet access: on a machine that has it, download {weights.url}, and place it here as "
        f"{place} (torch's hub cache; its checksum is checked); --pretrained then finds it. "
        f"Or pass any weights file with --pretrained PATH."
    )


def replace_last_linear(model: nn.Module, num_classes: int, spec: str) -> str:
    """Swap the model's last `nn.Linear` for one with `num_classes` outputs; returns its name."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UsageError(f"{spec} has no nn.Linear classifier to size to the data's classes")
    name, old = linears[-1]
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    return name


# ----------------------------------------------------------------- shared
def require_online(zoo: str, name: str, help_text: str) -> None:
    """Fail at once, with the offline route, when the weights' host cannot even be resolved
    (the libraries would retry for most of a minute before giving up)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TORCHSMITH_OFFLINE") == "1":
        raise UsageError(f"the pretrained weights of {zoo}:{name} are not on this machine.\n{help_text}")
    host = HOSTS[zoo]
    with ThreadPoolExecutor(max_workers=1) as pool:
        lookup = pool.submit(socket.getaddrinfo, host, 443)
        try:
            lookup.result(timeout=5)
        except (OSError, FutureTimeout):
            raise UsageError(
                f"the pretrained weights of {zoo}:{name} are not on this machine, and {host} cannot be "
                f"reached to download them.\n{help_text}"
            ) from None


def backbone(spec: str, model: nn.Module) -> Backbone:
    """The input size and normalisation the zoo model's pretrained weights were trained with."""
    zoo, _, name = spec.partition(":")
    if zoo == "timm":
        cfg = getattr(model, "pretrained_cfg", None) or {}
        size = tuple(int(v) for v in cfg.get("input_size", (3, 224, 224)))
        tag = f"{cfg.get('architecture', name)}.{cfg['tag']}" if cfg.get("tag") else name
        return Backbone(
            tag,
            (size[0], size[1], size[2]),
            [float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))],
            [float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))],
            str(cfg.get("interpolation", "bilinear")),
        )
    weights = torchvision_weights(name)
    transform = weights.transforms()
    crop = int(transform.crop_size[0])
    return Backbone(
        str(weights),
        (3, crop, crop),
        [float(v) for v in transform.mean],
        [float(v) for v in transform.std],
        str(transform.interpolation.value),
    )


def describe_head(spec: str, model: nn.Module, num_classes: int) -> str:
    """One line for the log: which layer is the classifier head, and its size."""
    head = find_head(model, num_classes)
    layer = model.get_submodule(head[0]) if head else None
    shape = (
        f"Linear({layer.in_features} -> {layer.out_features})" if isinstance(layer, nn.Linear) else type(layer).__name__
    )
    if spec.startswith("torchvision:"):
        return f"{spec}: replaced the last Linear layer, `{head[0]}`, with {shape} for the data's {num_classes} classes"
    return f"{spec}: classifier head `{', '.join(head)}` is {shape} for the data's {num_classes} classes"


def list_names(zoo: str, pattern: str | None = None) -> list[str]:
    """The model names a zoo builds (timm: architectures; torchvision: classification models)."""
    if zoo == "timm":
        return list(timm_module().list_models(pattern or ""))
    import fnmatch

    import torchvision
    from torchvision.models import list_models

    names = list_models(module=torchvision.models)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names
