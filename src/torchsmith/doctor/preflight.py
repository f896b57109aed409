"""The pre-flight check: the model on the first batch before training, with shape, label and
initial-loss mistakes explained in terms of the user's own layers."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchsmith.config import TASK_NAMES
from torchsmith.doctor.data_scan import out_of_range_rows, tensors_in
from torchsmith.doctor.nan_replay import LossFn, device_of, localize_nonfinite, state_kept
from torchsmith.doctor.shapes import (
    ShapeTracer,
    explain_batch_change,
    explain_crash,
    fmt,
    module_label,
    rows_of,
    shape_of,
)
from torchsmith.errors import UsageError

Select = Callable[[Any], Any]  # what the model returned -> its prediction (a dict's "logits", ...)
NUMERIC_TASKS = ("regression", "multilabel")  # float targets of a fixed width, no class indices

# a first loss above this multiple of ln(C) means the initial logits are far from uniform
HIGH_LOSS_FACTOR = 3.0


@dataclass(frozen=True)
class Finding:
    """One pre-flight result: `level` is "error" (training would fail) or "warning".

    Example:
        >>> Finding("error", "label-range", "Labels must lie in [0, 10) ...").level
        'error'
    """

    level: str
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"level": self.level, "code": self.code, "message": self.message}


def raise_for_errors(findings: Sequence[Finding]) -> None:
    """Raise `UsageError` (exit code 2) with every error message, if there are any.

    Example:
        >>> raise_for_errors(preflight(model, x, y, num_classes=10, loss_fn=loss))
    """
    errors = [finding.message for finding in findings if finding.level == "error"]
    if errors:
        raise UsageError("The pre-flight check on the first batch failed:\n- " + "\n- ".join(errors))


def _error(code: str, message: str) -> list[Finding]:
    return [Finding("error", code, message)]


def _shape_pass(
    model: nn.Module, inputs: Any, batch: int, select: Select | None
) -> tuple[Any, list[Finding], ShapeTracer]:
    """Forward once with shape hooks; explain a crash or a lost batch dimension."""
    tracer = ShapeTracer(model)
    try:
        outputs = model(inputs)
    except Exception as error:  # any failure of the user's forward is explained
        return (
            None,
            _error("forward-failed", explain_crash(model, tracer, error, batch)),
            tracer,
        )
    finally:
        tracer.remove()
    if select is not None:
        try:
            outputs = select(outputs)  # the prediction in a dict, ModelOutput or tuple
        except UsageError as error:  # its message names the keys the model returned
            return None, _error("output-kind", str(error)), tracer
    out_shape = shape_of(outputs)
    if out_shape is not None and rows_of(out_shape) != batch:
        message = explain_batch_change(model, tracer, batch, out_shape)
        return outputs, _error("batch-dim-changed", message), tracer
    return outputs, [], tracer


def _check_outputs(
    model: nn.Module,
    tracer: ShapeTracer,
    outputs: Any,
    targets: torch.Tensor,
    task: str,
    num_classes: int,
) -> list[Finding]:
    """Classification: (batch, C) logits; sequence: (*targets.shape, vocab)."""
    out_shape = shape_of(outputs)
    if out_shape is None:
        message = "The model output holds no tensor; its shape was not checked."
        return [Finding("warning", "output-unchecked", message)]
    last = tracer.last_output_before()
    layer = ""
    if last is not None and last.output_shape == out_shape:
        layer = f" (`{module_label(model, last.name)}` is {last.module})"
    if task in NUMERIC_TASKS:
        return _check_numeric_outputs(out_shape, targets, task, num_classes, layer)
    classification = task == "classification"
    # float targets are one row of class probabilities per sample (soft labels)
    labels = targets.shape[:1] if targets.is_floating_point() else targets.shape
    expected = (*labels, num_classes)
    width = out_shape[1] if classification and len(out_shape) > 1 else out_shape[-1]
    if len(out_shape) > 1 and width != num_classes:
        what = "classes" if classification else "tokens in the vocabulary"
        message = (
            f"The model outputs {width} values per {'sample' if classification else 'position'} "
            f"but the data has {num_classes} {what}{layer}: the last layer must produce one "
            f"logit per class. Fix: give it {num_classes} outputs (e.g. `nn.Linear(in_features, "
            f"{num_classes})`) or pass the count to the model, e.g. "
            f"`--model-args '{{\"num_classes\": {num_classes}}}'`."
        )
        return _error("output-width", message)
    if out_shape != expected:
        message = (
            f"The model returned {fmt(out_shape)} but targets of shape "
            f"{fmt(tuple(targets.shape))} need outputs of shape {fmt(expected)}{layer}. For "
            f"one label per sample, flatten to (batch, features) with `torch.flatten(x, 1)` "
            f"before the last layer."
        )
        return _error("output-shape", message)
    return []


def _check_numeric_outputs(
    out_shape: tuple[int, ...], targets: torch.Tensor, task: str, width: int, layer: str
) -> list[Finding]:
    """Regression: (batch,) or (batch, K) outputs for K targets; multi-label: (batch, C) logits."""
    batch = targets.shape[0]
    wanted = [(batch, width)] + ([(batch,)] if task == "regression" and width == 1 else [])
    if out_shape in wanted:
        return []
    what = "target value(s)" if task == "regression" else "labels (one logit each)"
    message = (
        f"The model returned {fmt(out_shape)} but the data has {width} {what} per sample, so the "
        f"outputs must be {fmt(wanted[0])}{layer}. Fix: give the last layer {width} outputs, e.g. "
        f"`--model-args '{{\"num_classes\": {width}}}'`."
    )
    return _error("output-shape", message)


def _check_targets(targets: Any, batch: int, task: str, num_classes: int, loss_fn: LossFn) -> list[Finding]:
    """Same batch size as the inputs, integer labels, every label in [0, num_classes)."""
    if not isinstance(targets, torch.Tensor) or targets.ndim == 0:
        message = f"Targets must be a tensor with one row per sample, got {type(targets).__name__}."
        return _error("targets", message)
    if targets.shape[0] != batch:
        message = f"The batch has {batch} inputs but {targets.shape[0]} targets; both need the same size in dim 0."
        return _error("target-batch", message)
    if task in NUMERIC_TASKS or (task == "classification" and targets.is_floating_point() and targets.ndim == 2):
        return []  # numbers per sample, or soft labels (mixup, label smoothing): probabilities, not indices
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        dtype = str(targets.dtype).replace("torch.", "")
        message = (
            f"Labels must be integer class indices (torch.long) in [0, {num_classes}), got "
            f"dtype {dtype}. Fix: `targets.long()` if they hold whole numbers."
        )
        return _error("label-dtype", message)
    ignore_index = getattr(loss_fn, "ignore_index", -100)  # cross entropy's padding label
    bad = out_of_range_rows(targets, num_classes, ignore_index)
    if not bad:
        return []
    valid = targets[targets != ignore_index]
    low, high = int(valid.min()), int(valid.max())
    hint = " Labels look 1-based: subtract 1." if low >= 1 and high == num_classes else ""
    message = (
        f"Labels must lie in [0, {num_classes}) for {num_classes} classes, but the first "
        f"batch holds labels from {low} to {high} ({len(bad)} of {batch} samples out of "
        f"range).{hint} Fix the labels, or set the number of classes to {high + 1} if "
        "there really are that many."
    )
    return _error("label-range", message)


def _check_first_loss(
    model: nn.Module,
    inputs: Any,
    targets: torch.Tensor,
    loss_fn: LossFn,
    num_classes: int,
    task: str,
) -> list[Finding]:
    """The first loss must be one finite number, and near ln(C) for an untrained model."""
    try:
        loss = loss_fn(model(inputs), targets)
    except Exception as error:  # the user's model or loss failing is reported
        return _error("loss-failed", f"The loss function failed on the first batch: {error}")
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        got = fmt(tuple(loss.shape)) if isinstance(loss, torch.Tensor) else type(loss).__name__
        message = f"The loss function must return one number, got {got}. Use reduction='mean'."
        return _error("loss-not-scalar", message)
    value = loss.detach().float().item()
    if not math.isfinite(value):
        message = (
            f"The loss on the first batch is {value} before any training step. Check the "
            "inputs for NaN/Inf with `torchsmith doctor data`, and any log, sqrt or "
            "division in the model or the loss."
        )
        return _error("loss-nonfinite", message)
    expected = math.log(num_classes) if num_classes > 1 and task not in NUMERIC_TASKS else 0.0
    if expected > 0 and value > HIGH_LOSS_FACTOR * expected:
        message = (
            f"The first loss is {value:.3g}, more than {HIGH_LOSS_FACTOR:g}x ln({num_classes})"
            f" = {expected:.3g}, the loss of uniform predictions: the initial logits are "
            "very large. Usual causes: unnormalised inputs (e.g. pixels in 0..255; "
            "normalise to mean 0, std 1) or an initialisation with large weights. "
            "Training may diverge."
        )
        return [Finding("warning", "loss-high", message)]
    return []


def preflight(
    model: nn.Module,
    inputs: Any,
    targets: torch.Tensor,
    *,
    task: str = "classification",
    num_classes: int,
    loss_fn: LossFn,
    select: Select | None = None,
) -> list[Finding]:
    """Check one batch before training: batch dim kept, output width, labels, first loss.

    The shape pass runs in eval mode, the loss pass in train mode, both without
    gradients. The model's mode, its buffers (BatchNorm statistics) and the RNG state
    are restored afterwards, and no hook stays registered; lazy modules are
    materialised. For "sequence", `num_classes` is the vocabulary size and outputs are
    (*targets.shape, vocab); for "regression" and "multilabel" it is the outputs' width.
    `loss_fn(outputs, targets)` is the trainer's loss of what the model returns; `select` picks
    the prediction from a dict, ModelOutput or tuple the model returns.

    Example:
        >>> findings = preflight(model, images, labels, num_classes=10, loss_fn=nn.CrossEntropyLoss())
        >>> raise_for_errors(findings)  # UsageError naming the layer, the shapes and the fix
    """
    if task not in TASK_NAMES:
        raise UsageError(f"task must be one of {', '.join(TASK_NAMES)}, got {task!r}")
    sizes = [t.shape[0] for t in tensors_in(inputs) if t.ndim > 0]
    if not sizes:
        raise UsageError(
            f"inputs must be a tensor (or hold tensors) with a batch dimension, got {type(inputs).__name__}"
        )
    batch, device = sizes[0], device_of(inputs)
    findings = _check_targets(targets, batch, task, num_classes, loss_fn)
    with state_kept(model, device, train=False), torch.no_grad():
        outputs, problems, tracer = _shape_pass(model, inputs, batch, select)
    findings += problems
    if problems or not isinstance(targets, torch.Tensor):
        return findings
    findings += _check_outputs(model, tracer, outputs, targets, task, num_classes)
    if any(finding.level == "error" for finding in findings):
        return findings  # a bad label would make the loss fail (a device assert on CUDA)
    with state_kept(model, device, train=True), torch.no_grad():
        first_loss = _check_first_loss(model, inputs, targets, loss_fn, num_classes, task)
    if any(f.code == "loss-nonfinite" for f in first_loss):
        first_loss = [_localized(model, inputs, targets, loss_fn, first_loss[0])]
    return findings + first_loss


def _localized(model: nn.Module, inputs: Any, targets: Any, loss_fn: LossFn, finding: Finding) -> Finding:
    """A NaN first loss, with the doctor's replay: which layer, what went in, what came out."""
    report = localize_nonfinite(model, loss_fn, inputs, targets, step=0, epoch=0)
    if report.stage in ("none", ""):
        return finding
    details = report.to_text().split("\n")[1:]  # "Found: ...", stats, cause and advice (no step line)
    return Finding(
        "error",
        finding.code,
        "The loss on the first batch is not finite before any training step.\n" + "\n".join(details),
    )


def check_input_size(input_shape: Sequence[int], expected: Sequence[int], source: str) -> list[Finding]:
    """A warning when images are far smaller (under half the height or width) than the size a
    pretrained backbone learnt its features at.

    Example:
        >>> check_input_size((3, 32, 32), (3, 224, 224), "timm:resnet18")[0].code
        'input-small'
    """
    height, width = int(input_shape[-2]), int(input_shape[-1])
    want_height, want_width = int(expected[-2]), int(expected[-1])
    if 2 * height >= want_height and 2 * width >= want_width:
        return []
    message = (
        f"the images are {height}x{width}, but {source}'s pretrained weights were trained on "
        f"{want_height}x{want_width} images (its config): the features they learnt are for objects about "
        f"{max(want_height // max(height, 1), 1)}x larger, so less of them transfers. Resize the images "
        f"towards {want_height}x{want_width} for the most from the pretrained weights."
    )
    return [Finding("warning", "input-small", message)]
