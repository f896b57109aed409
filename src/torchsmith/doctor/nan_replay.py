"""NaN/Inf localisation: replay a failing step with hooks and find the first bad value.

Forward hooks on every module find the first module whose output turns non-finite from
finite inputs. Tensor hooks (not full backward hooks, which break when a later op such
as `ReLU(inplace=True)` modifies a module's output) find the first module whose
backward turns a finite gradient non-finite.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import nn

from torchsmith.doctor.data_scan import nonfinite_rows, tensor_stats, tensors_in
from torchsmith.doctor.diagnosis import NanReport, diagnose
from torchsmith.precision import autocast

LossFn = Callable[[Any, Any], torch.Tensor]
HISTORY_KEPT = 20  # recent steps kept in a NanReport
INPUT_GRAD = "gradient w.r.t. its input"


def device_of(inputs: Any) -> torch.device:
    tensors = tensors_in(inputs)
    return tensors[0].device if tensors else torch.device("cpu")


@contextmanager
def state_kept(model: nn.Module, device: torch.device, *, train: bool) -> Iterator[Callable[[], None]]:
    """Run in train or eval mode, then restore the mode, every buffer and the RNG.

    Yields a function that resets the RNG (CPU, and CUDA for `device`) to its state
    at entry, so a second replay draws the same dropout masks.
    """
    was_training = model.training
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers() if not nn.parameter.is_lazy(buffer)]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def reset_rng() -> None:
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, device)

    model.train(train)
    try:
        yield reset_rng
    finally:
        model.train(was_training)
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
        reset_rng()


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


class _NonFiniteTracer:
    """Finds the first forward output, then the first gradient, that turns non-finite."""

    def __init__(self, model: nn.Module) -> None:
        self.forward_event: dict[str, Any] | None = None
        self.backward_event: dict[str, Any] | None = None
        self.types = {name: type(m).__name__ for name, m in model.named_modules()}
        self.stack: list[tuple[bool, dict[str, Any] | None, str]] = []
        # module name -> name of the module whose forward called it
        self.callers: dict[str, str] = {}
        self.last_finished: str | None = None
        self.grad_output: dict[str, tuple[bool, dict[str, Any] | None]] = {}
        self.first_bad_output: str | None = None
        self.handles: list[Any] = []
        seen: set[int] = set()
        for name, module in model.named_modules():
            self.handles.append(module.register_forward_pre_hook(partial(self._enter, name)))
            self.handles.append(module.register_forward_hook(partial(self._exit, name)))
            for param_name, param in module.named_parameters(recurse=False):
                if param.requires_grad and id(param) not in seen:
                    seen.add(id(param))
                    hook = partial(self._on_grad, name, f"parameter `{param_name}`")
                    self.handles.append(param.register_hook(hook))

    def _enter(self, name: str, module: nn.Module, args: Any) -> None:
        self.callers.setdefault(name, self.stack[-1][2] if self.stack else "")
        tensors = tensors_in(args) if self.forward_event is None else []
        # taken before the forward runs, since an in-place module overwrites its input:
        # input stats, and gradient hooks that see the gradient w.r.t. the old values
        stats = tensor_stats(tensors[0]) if tensors else None
        self.stack.append((_all_finite(tensors), stats, name))
        self._watch(name, INPUT_GRAD, tensors)

    def _exit(self, name: str, module: nn.Module, args: Any, output: Any) -> None:
        inputs_finite, input_stats, _ = self.stack.pop()
        outputs = tensors_in(output)
        if self.forward_event is None and inputs_finite:
            bad = [t for t in outputs if not bool(torch.isfinite(t).all())]
            if bad:
                stats = {"input": input_stats} if input_stats else {}
                self.forward_event = {
                    "module": name,
                    "stats": {**stats, "output": tensor_stats(bad[0])},
                    "after": self.last_finished,
                    "positions": nonfinite_rows(bad[0]),
                }
        if self.forward_event is None:
            self._watch(name, "output", outputs)
        if name:
            self.last_finished = name

    def _watch(self, name: str, kind: str, tensors: list[torch.Tensor]) -> None:
        for tensor in tensors:
            if tensor.requires_grad and torch.is_grad_enabled():
                tensor.register_hook(partial(self._on_grad, name, kind))

    def _on_grad(self, name: str, kind: str, grad: torch.Tensor) -> None:
        """Backward order: a module's output gradient arrives before its input's."""
        if self.backward_event is not None:
            return
        finite = bool(torch.isfinite(grad).all())
        if kind == "output":
            self.grad_output[name] = (finite, tensor_stats(grad) if finite else None)
            if not finite and name == "":  # the model's output: the loss's backward
                self.backward_event = {
                    "module": None,
                    "detail": "gradient of the loss w.r.t. the model output",
                    "stats": {"grad": tensor_stats(grad)},
                }
            elif not finite and self.first_bad_output is None:
                self.first_bad_output = name
            return
        # no output gradient seen yet: a pass-through module (Identity) whose input hook
        # fires first on the shared tensor, so it cannot be the module that broke it
        output_finite, output_stats = self.grad_output.get(name, (False, None))
        if not finite and output_finite:
            stats = {"grad_output": output_stats} if output_stats else {}
            stats["grad"] = tensor_stats(grad)
            self.backward_event = {"module": name, "detail": kind, "stats": stats}

    def finish_backward(self) -> None:
        """No module turned a finite gradient non-finite, yet an output gradient is
        non-finite: blame the forward code that used that output (its caller)."""
        if self.backward_event is None and self.first_bad_output is not None:
            culprit = self.first_bad_output
            self.backward_event = {
                "module": self.callers.get(culprit, ""),
                "stats": {},
                "detail": f"in the code that uses the output of `{culprit}`",
            }

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _scalar(loss: torch.Tensor) -> torch.Tensor:
    return loss if loss.ndim == 0 else loss.mean()


def _replay(model: nn.Module, loss_fn: LossFn, inputs: Any, targets: Any, report: NanReport) -> None:
    """One forward, loss and backward with hooks; fills the report's stage and stats."""
    tracer = _NonFiniteTracer(model)
    try:
        with autocast(report.precision, device_of(inputs)):
            outputs = model(inputs)
            loss = None if tracer.forward_event else _scalar(loss_fn(outputs, targets))
        if tracer.forward_event is not None:
            _fill(report, "forward", tracer.forward_event, tracer.types)
            return
        assert loss is not None  # computed whenever the forward stayed finite
        report.loss = loss.detach().float().item()
        if not math.isfinite(report.loss):
            report.stage = "loss"
            report.stats = {"output": tensor_stats(tensors_in(outputs)[0])}
            return
        params = [p for p in model.parameters() if p.requires_grad]
        if loss.requires_grad and params:
            # autograd.grad returns the gradients instead of accumulating into .grad
            torch.autograd.grad(loss, params, allow_unused=True)
            tracer.finish_backward()
        if tracer.backward_event is not None:
            _fill(report, "backward", tracer.backward_event, tracer.types)
    finally:
        tracer.remove()


def _fill(report: NanReport, stage: str, event: dict[str, Any], types: dict[str, str]) -> None:
    report.stage, report.module = stage, event["module"]
    report.module_type = types.get(event["module"]) if event["module"] is not None else None
    report.stats, report.detail = event["stats"], event.get("detail", "")
    report.after, report.positions = event.get("after"), event.get("positions", [])


def _replay_is_finite(model: nn.Module, loss_fn: LossFn, inputs: Any, targets: Any) -> bool:
    """Forward, loss and gradients in full precision, without hooks: all finite?"""
    loss = _scalar(loss_fn(model(inputs), targets))
    params = [p for p in model.parameters() if p.requires_grad]
    if not bool(torch.isfinite(loss)):
        return False
    if not loss.requires_grad or not params:
        return True
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return _all_finite([g for g in grads if g is not None])


def _check_batch(report: NanReport, inputs: Any, targets: Any) -> bool:
    positions: set[int] = set()
    for tensor in tensors_in(inputs) + tensors_in(targets):
        positions.update(nonfinite_rows(tensor))
    report.positions = sorted(positions)
    if positions:
        report.stage = "input"
    return bool(positions)


def _check_weights(report: NanReport, model: nn.Module) -> bool:
    named = [*model.named_parameters(), *model.named_buffers()]
    report.bad_parameters = [
        name
        for name, tensor in named
        if tensor.is_floating_point() and not nn.parameter.is_lazy(tensor) and not bool(torch.isfinite(tensor).all())
    ]
    if report.bad_parameters:
        report.stage = "parameters"
    return bool(report.bad_parameters)


def localize_nonfinite(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Any,
    targets: Any,
    *,
    step: int,
    epoch: int,
    sample_indices: Sequence[int] | torch.Tensor | None = None,
    history: Sequence[dict[str, float]] | None = None,
    precision: str = "fp32",
    lr: float | None = None,
) -> NanReport:
    """Replay a failing step, find where the first NaN/Inf appeared, and diagnose it.

    Call it with the weights from before the failing step, the same batch, and the RNG
    re-seeded as for that step. It checks the batch and the weights, then replays
    forward (hooks on every module), loss and backward in train mode under the run's
    `precision` ("fp32", "bf16", "fp16"; an fp16 failure is also replayed in fp32).
    Parameters, `.grad`, buffers, the model's mode and the RNG state are left as they
    were, and no hook stays registered. Pass the unwrapped model (no DDP or
    torch.compile wrapper). `sample_indices` maps batch rows to dataset indices;
    `history` holds recent {"step", "loss", "grad_norm", "lr"} dicts.

    Example:
        >>> report = localize_nonfinite(model, loss_fn, x, y, step=120, epoch=3)
        >>> report.cause
        'forward NaN in head'
    """
    report = NanReport(step=step, epoch=epoch, precision=precision, lr=lr)
    report.history = [
        {key: entry[key] for key in ("step", "loss", "grad_norm", "lr") if key in entry}
        for entry in list(history or [])[-HISTORY_KEPT:]
    ]
    if not _check_batch(report, inputs, targets) and not _check_weights(report, model):
        with state_kept(model, device_of(inputs), train=True) as reset_rng:
            _replay(model, loss_fn, inputs, targets, report)
            if precision == "fp16" and report.stage != "none":
                reset_rng()  # the same dropout masks as the fp16 replay
                report.fp32_finite = _replay_is_finite(model, loss_fn, inputs, targets)
    if sample_indices is not None and report.positions:
        indices = torch.as_tensor(sample_indices).flatten().tolist()
        report.samples = [int(indices[p]) for p in report.positions if p < len(indices)]
    report.cause, report.advice = diagnose(report)
    return report
