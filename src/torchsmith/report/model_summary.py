"""Layer table for any `nn.Module`: output shapes, parameters, FLOPs and memory.

One forward pass in eval mode without gradients, with a forward hook on every
module and `torch.utils.flop_counter.FlopCounterMode` counting the FLOPs. A module
called several times is counted at every call; tuple, list and dict outputs are
walked for their tensors.

Example:
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    >>> print(summary(model, torch.zeros(1, 1, 28, 28), batch_size=64).to_text())
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from torchsmith.errors import UsageError
from torchsmith.train.defer_compiler import defer_dynamo_import

__all__ = ["LayerRow", "MemoryEstimate", "ModelSummary", "parse_shape", "summary"]


@dataclass
class LayerRow:
    """One module: `params` are its own (children not included, shared ones once);
    `flops` cover all its calls, children included, as FlopCounterMode attributes
    them; `trainable` is "yes", "no", "partial" or "" (no own parameters)."""

    name: str
    type: str
    depth: int
    output_shape: str
    calls: int
    params: int
    trainable: str
    flops: int


@dataclass
class MemoryEstimate:
    """Training memory for `batch_size` samples, in bytes, assuming Adam.

    Activations are the distinct output tensors of the forward pass, times 2 for
    what backward keeps alongside them; a rough guide, not an allocator trace.
    """

    batch_size: int
    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.gradients_bytes + self.optimizer_bytes + self.activations_bytes


@dataclass
class ModelSummary:
    """Result of `summary`: one row per module (root first), totals and memory.

    Example:
        >>> s = summary(nn.Linear(4, 2), torch.zeros(8, 4))
        >>> s.total_params, s.total_flops
        (10, 128)
    """

    model_name: str
    input_shapes: list[list[int]]
    rows: list[LayerRow]
    total_params: int
    trainable_params: int
    total_flops: int
    memory: MemoryEstimate

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of everything in the summary."""
        data = asdict(self)
        data["memory"]["total_bytes"] = self.memory.total_bytes
        return data

    def to_text(self, short: bool = False) -> str:
        """Aligned table; `short` keeps the totals and the top-level children only."""
        if short:
            header = ["Layer", "Type", "Output shape", "Params (subtree)", "FLOPs"]
            body = [
                [
                    r.name or self.model_name,
                    r.type,
                    r.output_shape,
                    f"{self._subtree_params(r):,}",
                    _si(r.flops),
                ]
                for r in self.rows
                if r.depth == 1 or len(self.rows) == 1
            ]
        else:
            header = ["Layer", "Type", "Output shape", "Params", "Trainable", "FLOPs"]
            body = [
                [
                    "  " * r.depth + (r.name or self.model_name),
                    r.type,
                    r.output_shape,
                    f"{r.params:,}",
                    r.trainable,
                    _si(r.flops),
                ]
                for r in self.rows
            ]
        return _table(header, body) + "\n" + self._totals_text()

    def _subtree_params(self, row: LayerRow) -> int:
        prefix = row.name + "."
        inside = [r for r in self.rows if r.name == row.name or r.name.startswith(prefix)]
        return self.total_params if not row.name else sum(r.params for r in inside)

    def _totals_text(self) -> str:
        m = self.memory
        frozen = self.total_params - self.trainable_params
        shapes = ", ".join(str(s) for s in self.input_shapes)
        params = f"{self.total_params:,}  trainable: {self.trainable_params:,}"
        memory = (
            f"{_bytes(m.total_bytes)} = weights {_bytes(m.weights_bytes)}"
            f" + gradients {_bytes(m.gradients_bytes)}"
            f" + optimizer {_bytes(m.optimizer_bytes)}"
            f" + activations {_bytes(m.activations_bytes)}"
        )
        lines = [
            f"Input shapes: {shapes}",
            f"Total params: {params}  frozen: {frozen:,}",
            f"Forward FLOPs for this input: {_si(self.total_flops)}",
            f"Estimated training memory at batch size {m.batch_size} (Adam): {memory}",
        ]
        return "\n".join(lines)


def parse_shape(text: str) -> tuple[int, ...]:
    """Read a per-sample input shape written as "3x32x32" (or "3,32,32").

    Example:
        >>> parse_shape("3x32x32")
        (3, 32, 32)
    """
    parts = [p.strip() for p in re.split(r"[xX,]", str(text).strip())]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UsageError(f"Input shape must be positive integers separated by 'x', like 3x32x32, got {text!r}.")
    return tuple(int(p) for p in parts)


def summary(model: nn.Module, example_input: Tensor | tuple, batch_size: int | None = None) -> ModelSummary:
    """Run one forward pass of `model` on `example_input` and tabulate every module.

    `example_input` is a batch tensor (batch dimension first), a tuple of tensors
    passed as positional arguments, or a tuple of ints read as the shape of one
    sample (a zero float batch of 1 is built). `batch_size` sizes the memory
    estimate; it defaults to the example's batch size. The modes of all modules
    are restored afterwards.

    Example:
        >>> summary(nn.Linear(784, 10), (784,), batch_size=64).total_params
        7850
    """
    inputs = _as_inputs(model, example_input)
    example_batch = inputs[0].shape[0] if inputs and inputs[0].dim() > 0 else 1
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}.")
    modules = dict(model.named_modules())
    recorder = _Recorder()
    total_flops = _run(model, modules, inputs, recorder)
    scale = (batch_size or example_batch) / example_batch
    return ModelSummary(
        model_name=type(model).__name__,
        input_shapes=[list(t.shape) for t in inputs],
        rows=_rows(modules, recorder),
        total_params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_flops=total_flops,
        memory=_memory(model, recorder.activation_bytes(), scale, batch_size or example_batch),
    )


class _Recorder:
    """Forward hooks: calls, output shapes, distinct output storage, FLOPs per module.

    A module's FLOPs are the growth of FlopCounterMode's running total between its
    pre- and post-hook, so every call counts (also for a module reused under one
    name) and a recursive call is not counted twice.
    """

    def __init__(self) -> None:
        self.counter: FlopCounterMode | None = None
        self.calls: dict[str, int] = defaultdict(int)
        self.flops: dict[str, int] = defaultdict(int)
        self.shapes: dict[str, list[str]] = defaultdict(list)
        self._active: dict[str, int] = defaultdict(int)
        self._start: dict[str, int] = {}
        # storage address -> a tensor on it: holding it stops the address being
        # reused by a later output, which would hide that output from the sum.
        self._storages: dict[int, Tensor] = {}

    def _total(self) -> int:
        return self.counter.get_total_flops() if self.counter is not None else 0

    def pre_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            if self._active[name] == 0:
                self._start[name] = self._total()
            self._active[name] += 1

        return hook

    def post_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self._active[name] -= 1
            if self._active[name] == 0:
                self.flops[name] += self._total() - self._start.pop(name)
            self.calls[name] += 1
            self.shapes[name].append(_shape_text(output))
            for tensor in _tensors(output):
                self._storages.setdefault(tensor.untyped_storage().data_ptr(), tensor)

        return hook

    def activation_bytes(self) -> int:
        return sum(t.untyped_storage().nbytes() for t in self._storages.values())


def _as_inputs(model: nn.Module, example_input: Tensor | tuple) -> list[Tensor]:
    items = example_input if isinstance(example_input, tuple) else (example_input,)
    if items and all(isinstance(t, Tensor) for t in items):
        inputs = list(items)
    elif items and all(isinstance(d, int) for d in items):
        inputs = [torch.zeros(1, *items)]  # a per-sample shape: a batch of one
    else:
        raise UsageError(
            "example_input must be a tensor with the batch dimension first, a tuple "
            "of tensors, or a per-sample shape like (3, 32, 32); "
            f"got {example_input!r}."
        )
    first = next(model.parameters(), None)
    if first is not None:
        inputs = [t.to(first.device) for t in inputs]
    return inputs


def _run(
    model: nn.Module,
    modules: dict[str, nn.Module],
    inputs: list[Tensor],
    recorder: _Recorder,
) -> int:
    """One hooked forward pass in eval mode under FlopCounterMode; returns its FLOPs."""
    modes = {m: m.training for m in model.modules()}
    handles = [
        h
        for name, module in modules.items()
        for h in (
            module.register_forward_pre_hook(recorder.pre_hook(name)),
            module.register_forward_hook(recorder.post_hook(name)),
        )
    ]
    try:
        model.eval()
        # Counting FLOPs needs no compiler: the mode's dispatch (torch's private class) runs as it is.
        mode = getattr(torch.utils.flop_counter, "_FlopCounterMode", None)
        defer_dynamo_import(getattr(mode, "__torch_dispatch__", None))
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            recorder.counter = counter
            _forward(model, inputs)
        return counter.get_total_flops()
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():  # per module: keep frozen BatchNorms
            module.training = training


def _forward(model: nn.Module, inputs: list[Tensor]) -> None:
    try:
        model(*inputs)
    except Exception as error:  # the user's forward: report which input broke it
        shapes = ", ".join(str(list(t.shape)) for t in inputs)
        raise UsageError(
            f"{type(model).__name__}.forward failed on an input of shape {shapes}: "
            f"{error}. Check that the input shape (batch dimension first) and "
            "dtype match what the model expects."
        ) from error


def _rows(modules: dict[str, nn.Module], recorder: _Recorder) -> list[LayerRow]:
    seen: set[int] = set()  # a parameter shared by two modules counts once
    rows = []
    for name, module in modules.items():
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        flags = {p.requires_grad for p in own}
        trainable = {(): "", (True,): "yes", (False,): "no"}.get(tuple(flags), "partial")
        shapes = recorder.shapes[name]
        shape = shapes[0] if len(set(shapes)) == 1 else " | ".join(shapes) or "-"
        if len(shapes) > 1:
            shape += f" ({len(shapes)} calls)"
        rows.append(
            LayerRow(
                name=name,
                type=type(module).__name__,
                depth=name.count(".") + 1 if name else 0,
                output_shape=shape,
                calls=recorder.calls[name],
                params=sum(p.numel() for p in own),
                trainable=trainable,
                flops=recorder.flops[name],
            )
        )
    return rows


def _memory(model: nn.Module, activation_bytes: int, scale: float, batch_size: int) -> MemoryEstimate:
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    weights += sum(b.numel() * b.element_size() for b in model.buffers())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return MemoryEstimate(
        batch_size=batch_size,
        weights_bytes=weights,
        gradients_bytes=trainable,
        optimizer_bytes=2 * trainable,  # Adam: exp_avg and exp_avg_sq
        activations_bytes=int(2 * activation_bytes * scale),
    )


def _tensors(obj: Any) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for value in obj.values() for t in _tensors(value)]
    if isinstance(obj, (list, tuple)):
        return [t for value in obj for t in _tensors(value)]
    return []


def _shape_text(obj: Any) -> str:
    if isinstance(obj, Tensor):
        return str(list(obj.shape))
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{k}: {_shape_text(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        return "(" + ", ".join(_shape_text(v) for v in obj) + ")"
    return "None" if obj is None else type(obj).__name__


def _si(number: float) -> str:
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(number) >= factor:
            return f"{number / factor:.2f}{suffix}"
    return str(int(number))


def _bytes(number: float) -> str:
    for factor, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if number >= factor:
            return f"{number / factor:.1f} {suffix}"
    return f"{int(number)} B"


def _table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    # text columns left-aligned, numbers (params, FLOPs) right-aligned
    numeric = {i for i, h in enumerate(header) if h.startswith(("Params", "FLOPs"))}

    def line(row: list[str]) -> str:
        cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(cells).rstrip()

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *(line(r) for r in body), rule])
