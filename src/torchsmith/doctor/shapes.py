"""Shape tracing for the pre-flight check: where did the batch dimension get lost?

`ShapeTracer` records every module call's input and output shape with forward hooks;
`explain_batch_change` and `explain_crash` turn that record into a message naming the
user's layer, the shapes it saw and the fix.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import nn

from torchsmith.doctor.data_scan import tensors_in

# the message `Tensor.view`/`reshape` raises when the sizes do not divide
_VIEW_ERROR = re.compile(r"shape '\[([-\d, ]+)\]' is invalid for input of size (\d+)")
_FLATTEN = "Fix: flatten with `torch.flatten(x, 1)` (or `x.view(x.size(0), -1)`), which keeps the batch dimension"


def shape_of(obj: Any) -> tuple[int, ...] | None:
    """Shape of the first tensor in `obj` (a tensor, tuple, list or dict), else None."""
    tensors = tensors_in(obj)
    return tuple(tensors[0].shape) if tensors else None


def rows_of(shape: tuple[int, ...] | None) -> int | None:
    return shape[0] if shape else None


def fmt(shape: tuple[int, ...] | None) -> str:
    return str(tuple(shape or ()))  # (64, 128, 4, 4), (48,)


def module_label(model: nn.Module, name: str) -> str:
    """ "ConvNet.fc1" for a submodule, "ConvNet" for the model itself."""
    return type(model).__name__ if name == "" else f"{type(model).__name__}.{name}"


@dataclass
class Call:
    """One call of a module during the traced forward."""

    name: str
    module: nn.Module
    caller: Call | None
    batch_known: bool  # False for batch_first=False modules: their dim 0 is time
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None = None


class ShapeTracer:
    """Records each module call's input and output shape in execution order.

    Modules entered but not exited stay on `stack`, so after a crash `stack[-1]` is
    the module whose forward raised. Call `remove()` (in a `finally`) to drop the hooks.
    """

    def __init__(self, model: nn.Module) -> None:
        self.events: list[tuple[str, Call]] = []  # ("in" | "out", call)
        self.stack: list[Call] = []
        self.handles: list[Any] = []
        for name, module in model.named_modules():
            seq_first = any(getattr(m, "batch_first", True) is False for m in module.modules())
            enter = partial(self._enter, name, not seq_first)
            self.handles.append(module.register_forward_pre_hook(enter))
            self.handles.append(module.register_forward_hook(self._exit))

    def _enter(self, name: str, batch_known: bool, module: nn.Module, args: Any) -> None:
        caller = self.stack[-1] if self.stack else None
        call = Call(name, module, caller, batch_known, shape_of(args))
        self.stack.append(call)
        self.events.append(("in", call))

    def _exit(self, module: nn.Module, args: Any, output: Any) -> None:
        call = self.stack.pop()
        call.output_shape = shape_of(output)
        self.events.append(("out", call))

    def last_output_before(self, call: Call | None = None) -> Call | None:
        """The last submodule that finished (before `call` entered, if given)."""
        last = None
        for kind, event_call in self.events:
            if kind == "in" and event_call is call:
                break
            if kind == "out" and event_call.name != "":
                last = event_call
        return last

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _per_sample(call: Call | None, batch: int) -> tuple[int | None, str]:
    """Values per sample in `call`'s output and how to write them: (2048, "128*4*4")."""
    if call is None or call.output_shape is None or rows_of(call.output_shape) != batch or len(call.output_shape) < 2:
        return None, ""
    dims = call.output_shape[1:]
    return math.prod(dims), "*".join(str(d) for d in dims)


def _fix_text(per_sample: int | None, dims: str, linear: nn.Module | None) -> str:
    if per_sample is None or not isinstance(linear, nn.Linear):
        return _FLATTEN + "."
    out = linear.out_features
    return (
        f"{_FLATTEN}, and size the layer for {per_sample} features per sample: "
        f"`nn.Linear({dims}, {out})`, or let PyTorch infer it with `nn.LazyLinear({out})`."
    )


def _features(prev: Call | None, batch: int, total: int) -> tuple[int | None, str]:
    """Features per sample behind `total` values for `batch` samples, written with
    `prev`'s dims ("128*4*4") when `prev`'s output holds exactly those values."""
    per_sample, dims = _per_sample(prev, batch)
    if per_sample is not None and per_sample * batch == total:
        return per_sample, dims
    if total % batch == 0:  # functional ops (F.max_pool2d) ran after `prev`
        return total // batch, str(total // batch)
    return None, ""


def _explain_merge(model: nn.Module, tracer: ShapeTracer, call: Call, batch: int) -> str:
    """`call` got a different number of rows than the batch: the code before it reshaped."""
    prev = tracer.last_output_before(call)
    assert call.input_shape is not None  # only calls that recorded an input get here
    rows, width = call.input_shape[0], math.prod(call.input_shape[1:])
    # a merge starves the layer of features; a split (rows > batch) is a layout problem
    per_sample, dims = _features(prev, batch, rows * width) if rows < batch else (None, "")
    label = module_label(model, call.name)
    where = module_label(model, call.caller.name if call.caller else "")
    if isinstance(call.module, nn.Linear) and per_sample is not None:
        message = (
            f"`{label}` expects {call.module.in_features} input features but received "
            f"{per_sample} features per sample: "
        )
    else:
        message = (
            f"The batch dimension changed inside the model: {batch} samples went in, but "
            f"`{label}` ({type(call.module).__name__}) received {fmt(call.input_shape)}: "
        )
    if prev is not None:
        message += f"`{prev.name}` returned {fmt(prev.output_shape)}, and "
    change = "merged the batch dimension into the features" if rows < batch else "split samples across rows"
    message += (
        f"a `view`/`reshape` in `{where}.forward` before `{call.name}` {change} "
        f"({batch} samples became {rows} rows of {width}), so the model returns "
        f"{rows} rows for a batch of {batch}. "
    )
    return message + _fix_text(per_sample, dims, call.module)


def explain_batch_change(model: nn.Module, tracer: ShapeTracer, batch: int, out_shape: tuple[int, ...]) -> str:
    """Why the output has `out_shape[0]` rows for `batch` samples, from a traced forward.

    The first module that received a wrong row count is blamed on the code before it
    (a `view`); a module that received the batch and returned another row count is
    blamed itself.
    """
    for kind, call in tracer.events:
        if not call.batch_known:
            continue
        if kind == "in" and call.input_shape and call.input_shape[0] != batch:
            return _explain_merge(model, tracer, call, batch)
        changed = rows_of(call.output_shape) != batch
        if kind == "out" and rows_of(call.input_shape) == batch and changed:
            prev = tracer.last_output_before(call) if call.name == "" else None
            inside = f" after `{prev.name}` returned {fmt(prev.output_shape)}" if prev else ""
            return (
                f"`{module_label(model, call.name)}` ({type(call.module).__name__}) "
                f"received {batch} samples {fmt(call.input_shape)} but returned "
                f"{fmt(call.output_shape)}{inside}: it changed the batch dimension (dim 0). "
                "Keep dim 0 as the batch in every reshape, e.g. `torch.flatten(x, 1)` or "
                "`x.view(x.size(0), -1)` instead of `x.view(-1, n)`."
            )
    return (
        f"The model returned {fmt(out_shape)} for a batch of {batch} samples; dim 0 of "
        "the output must be the batch. Keep dim 0 in every reshape, e.g. "
        "`torch.flatten(x, 1)`."
    )


def _explain_linear_crash(model: nn.Module, failing: Call, prev: Call | None, batch: int, text: str) -> str:
    assert failing.input_shape is not None  # only calls that recorded an input get here
    got = failing.input_shape[-1]
    per_sample, dims = _per_sample(prev, batch)
    dims = dims if per_sample == got else str(got)
    linear = failing.module
    message = (
        f"`{module_label(model, failing.name)}` (Linear) expects {linear.in_features} "
        f"input features but received {got} per sample (input {fmt(failing.input_shape)}), "
        f"so the forward failed: {text}. "
    )
    if prev is not None:
        message += f"The layer before it, `{prev.name}`, returned {fmt(prev.output_shape)}. "
    out = linear.out_features
    return message + f"Fix: `nn.Linear({dims}, {out})`, or let PyTorch infer it with `nn.LazyLinear({out})`."


def explain_crash(model: nn.Module, tracer: ShapeTracer, error: Exception, batch: int) -> str:
    """Explain an exception raised by the traced forward, naming the failing module.

    A Linear with the wrong `in_features` and a `view(-1, n)` whose sizes do not divide
    get a specific explanation and fix; anything else names the module and its input.
    """
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    failing = tracer.stack[-1] if tracer.stack else None
    if failing is None:
        return f"The model's forward failed on the first batch: {text}"
    prev = tracer.last_output_before()
    if isinstance(failing.module, nn.Linear) and failing.input_shape:
        return _explain_linear_crash(model, failing, prev, batch, text)
    after = f" after `{prev.name}` returned {fmt(prev.output_shape)}" if prev else ""
    kind = "" if failing.name == "" else f" ({type(failing.module).__name__})"
    message = f"`{module_label(model, failing.name)}.forward`{kind} failed{after}: {text}."
    match = _VIEW_ERROR.search(str(error))
    per_sample, dims = _features(prev, batch, int(match.group(2))) if match else (None, "")
    if per_sample is None:
        return message + f" Its input had shape {fmt(failing.input_shape)}."
    assert match is not None  # per_sample is None without a match
    width = int(match.group(1).split(",")[-1])
    linears = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module.in_features == width
    ]
    linear = linears[0][1] if len(linears) == 1 else None
    layer = f" (what `{module_label(model, linears[0][0])}` expects)" if linear else ""
    message += (
        f" A `view`/`reshape` to [{match.group(1)}] asks for rows of {width} "
        f"values{layer}, but each sample has {per_sample} features ({batch} samples "
        f"hold {match.group(2)} values): -1 in dim 0 merges the batch dimension into "
        "the features, and here the sizes do not even divide. "
    )
    return message + _fix_text(per_sample, dims, linear)
