"""Starting weights from a file or another run: read safely, match by key and shape, head aside.

A weights file is read without running code: `.safetensors` holds tensors only, and a
`.pth`/`.pt` pickle loads with `torch.load(weights_only=True)`, which refuses anything but
tensors and plain containers. The tensors are matched to the model by key, and only the
classifier head may differ (it is sized to the data's classes, and starts fresh when the
source's has another size): a tensor of another shape, a key of the model the source lacks
or a key of the source the model lacks, anywhere else, means weights made for another
architecture, and they are refused with the first such keys named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from torchsmith.errors import UsageError

# Folders and wrappers a weights file may hold its state_dict in (timm, Lightning, torchvision
# recipes), and the prefixes DDP and torch.compile add to every key.
CONTAINER_KEYS = ("state_dict", "model", "model_state", "module")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
SHOWN = 3  # mismatching keys named in a message


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` or `.pth`/`.pt`/`.bin` file (or a folder holding
    `model.safetensors`), keys as in `model.state_dict()`.

    Example:
        >>> state = read_weights_file("resnet18/model.safetensors")  # doctest: +SKIP
    """
    path = Path(path)
    if path.is_dir() and (path / "model.safetensors").is_file():
        path = path / "model.safetensors"  # a folder as timm's save_for_hf and Hugging Face write it
    if not path.is_file():
        raise UsageError(f"weights file {path} does not exist; pass a .safetensors or .pth file with --pretrained")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise UsageError(f"{path} is not a readable .safetensors file: {error}") from None
    if path.suffix not in (".pth", ".pt", ".bin", ".ckpt"):
        raise UsageError(f"weights file {path}: expected .safetensors, or a PyTorch .pth/.pt file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # matched by name: importing pickle anywhere in the package is banned by a test
        if type(error).__name__ == "UnpicklingError":
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
            what = f"a Python object ({found.group(1)})" if found else "Python objects besides tensors"
            raise UsageError(
                f"{path} holds {what}, which could run code when unpickled, so it is not loaded "
                f"(torch.load with weights_only=True refused it). Save only the weights: "
                f"torch.save(model.state_dict(), 'weights.pth'), or as .safetensors."
            ) from None
        if isinstance(error, (RuntimeError, OSError, EOFError, ValueError)):
            raise UsageError(f"{path} is not a readable PyTorch weights file: {error}") from None
        raise
    return plain_state_dict(loaded, str(path))


def plain_state_dict(loaded: object, source: str) -> dict[str, torch.Tensor]:
    """The name -> tensor mapping inside what a weights file held, without wrapper prefixes."""
    for _ in range(2):  # e.g. {"state_dict": {...}} or {"model": {"module.fc.weight": ...}}
        if isinstance(loaded, dict) and not _all_tensors(loaded):
            inner = next((loaded[key] for key in CONTAINER_KEYS if isinstance(loaded.get(key), dict)), None)
            if inner is not None:
                loaded = inner
    if not isinstance(loaded, dict) or not loaded or not _all_tensors(loaded):
        raise UsageError(
            f"{source} does not hold a state_dict (a mapping of names to tensors); "
            f"save one with torch.save(model.state_dict(), PATH)"
        )
    state = {str(k): v for k, v in loaded.items()}
    for prefix in WRAPPER_PREFIXES:
        if all(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    return state


def _all_tensors(mapping: dict[object, object]) -> bool:
    return all(isinstance(value, torch.Tensor) for value in mapping.values())


def find_head(model: nn.Module, num_classes: int) -> list[str]:
    """The names of the classifier head's modules: timm's `get_classifier()`, else the last
    `nn.Linear` with `num_classes` outputs, else the last `nn.Linear`; [] when there is none.

    Example:
        >>> find_head(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), 4)
        ['2']
    """
    names = {id(module): name for name, module in model.named_modules()}
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        found = get_classifier()
        modules = found if isinstance(found, (tuple, list)) else [found]
        heads = [names[id(m)] for m in modules if id(m) in names and any(True for _ in m.parameters())]
        if heads:
            return heads
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    sized = [name for name, m in linears if m.out_features == num_classes]
    if sized:
        return [sized[-1]]
    return [linears[-1][0]] if linears else []


def in_head(key: str, head: list[str]) -> bool:
    return any(key == name or key.startswith(name + ".") for name in head)


@dataclass
class LoadReport:
    """What loading starting weights did: keys left at their initial values, keys not used."""

    source: str
    loaded: int
    fresh_head: list[str] = field(default_factory=list)  # head tensors not taken from the source
    missing: list[str] = field(default_factory=list)  # BatchNorm batch counters the source lacks
    unexpected: list[str] = field(default_factory=list)  # source keys of another head, or batch counters

    def lines(self) -> list[str]:
        out = [f"loaded {self.loaded} tensors from {self.source}"]
        if self.fresh_head:
            out.append(f"the head starts fresh: {', '.join(self.fresh_head)}")
        if self.unexpected:
            out.append(f"{len(self.unexpected)} tensors of the source are not used: {_first(self.unexpected)}")
        return out


def load_into(
    model: nn.Module, state: dict[str, torch.Tensor], head: list[str], source: str, *, keep_head: bool = True
) -> LoadReport:
    """Copy `state` into `model`: outside the head, the keys and shapes must be the model's.

    The head's tensors are taken when `keep_head` and their shapes fit, else they keep the
    model's fresh initialisation. UsageError naming the first keys that do not fit.
    """
    own = model.state_dict()
    report = LoadReport(source, 0)
    mismatched = []
    for key, tensor in own.items():
        if key not in state:
            (report.fresh_head if in_head(key, head) else report.missing).append(key)
        elif tuple(state[key].shape) != tuple(tensor.shape):
            if in_head(key, head):
                report.fresh_head.append(key)
            else:
                mismatched.append(f"{key}: {tuple(state[key].shape)} in the source, {tuple(tensor.shape)} in the model")
        elif in_head(key, head) and not keep_head:
            report.fresh_head.append(key)
    unexpected = [key for key in state if key not in own]
    report.unexpected = [key for key in unexpected if in_head(key, head) or key.endswith("num_batches_tracked")]
    extra = [key for key in unexpected if key not in report.unexpected]
    missing = [key for key in report.missing if not key.endswith("num_batches_tracked")]
    if mismatched or missing or extra:
        raise UsageError(_mismatch_message(source, mismatched, missing, extra))
    taken = {key: value for key, value in state.items() if key in own and key not in report.fresh_head}
    model.load_state_dict({**own, **taken})
    report.loaded = len(taken)
    return report


def _mismatch_message(source: str, mismatched: list[str], missing: list[str], extra: list[str]) -> str:
    """Why the weights of `source` do not fit: the first keys of each kind, with shapes."""
    parts = []
    if mismatched:
        parts.append(f"{len(mismatched)} tensors have other shapes than this model's: {'; '.join(mismatched[:SHOWN])}")
    if missing:
        parts.append(f"the model's {_first(missing)} ({len(missing)} tensors) are not in it")
    if extra:
        parts.append(f"its {_first(extra)} ({len(extra)} tensors) have no place in the model")
    return (
        f"the weights in {source} were made for another architecture: {'; '.join(parts)}. Only the "
        f"classifier head may differ; start from weights saved from the same model (--model as they were trained)."
    )


def _first(keys: list[str]) -> str:
    return ", ".join(keys[:SHOWN]) + (", ..." if len(keys) > SHOWN else "")
