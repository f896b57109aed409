"""Optimizers and learning-rate schedules from names or from the user's objects, and the step itself."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypedDict

import torch
from torch import nn
from torch.optim import optimizer as optimizer_module

from torchsmith.config import OptimConfig
from torchsmith.errors import UsageError, did_you_mean
from torchsmith.state import lower_is_better
from torchsmith.train.defer_compiler import defer_dynamo_import


class _Kernels(TypedDict, total=False):
    """The multi-tensor implementation an optimizer is asked for."""

    fused: bool
    foreach: bool


# torch.optim.Optimizer's methods that torch marks as not to be traced by torch.compile.
_NO_TRACE_METHODS = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


def build_optimizer(
    spec: torch.optim.Optimizer | Callable[..., torch.optim.Optimizer] | str | None,
    model: nn.Module,
    config: OptimConfig,
    batch_size: int = 64,
) -> torch.optim.Optimizer:
    """An optimizer instance as given, a factory called with the parameters, or a name."""
    if isinstance(spec, torch.optim.Optimizer):
        return spec
    # Building one would import torch.compile's machinery (~1 s) even for a run that never compiles.
    defer_dynamo_import(*(getattr(torch.optim.Optimizer, name) for name in _NO_TRACE_METHODS))
    if (spec or config.name) == "airbench-sgd":
        from torchsmith.train.airbench_sgd import speed_sgd

        # lr and weight decay in airbench's decoupled units (per 1024 samples)
        return speed_sgd(
            model, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, batch_size=batch_size
        )
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UsageError("the model has no trainable parameters")
    if callable(spec):
        return spec(params)
    return optimizer_by_name(spec or config.name, params, config)


def optimizer_by_name(
    name: str, params: Iterable[nn.Parameter] | Iterable[dict[str, Any]], config: OptimConfig
) -> torch.optim.Optimizer:
    """A torch optimizer by name over `params`: parameters, or parameter groups (dicts with
    "params" and their own "lr", as `FineTune.param_groups` builds)."""
    lr, wd, betas = config.lr, config.weight_decay, (0.9, config.beta2)
    items: list[Any] = list(params)
    tensors = [p for item in items for p in (item["params"] if isinstance(item, dict) else [item])]
    # Fused kernels where PyTorch has them (CUDA and CPU): one pass per update (on CUDA the
    # NaN guard can also skip a step on the device); AdamW's is about 3x faster than foreach
    # on a 2-core CPU. Elsewhere foreach: one kernel per group of tensors, not one per tensor.
    fused: _Kernels
    if all(p.is_cuda or p.device.type == "cpu" for p in tensors) and name in ("sgd", "adamw", "adam", "adagrad"):
        fused = {"fused": True}
    else:
        fused = {"foreach": True}
    makers: dict[str, Callable[[], torch.optim.Optimizer]] = {
        "sgd": lambda: torch.optim.SGD(
            items, lr=lr, momentum=config.momentum, nesterov=config.nesterov, weight_decay=wd, **fused
        ),
        "adamw": lambda: torch.optim.AdamW(items, lr=lr, betas=betas, weight_decay=wd, **fused),
        "adam": lambda: torch.optim.Adam(items, lr=lr, betas=betas, weight_decay=wd, **fused),
        "adadelta": lambda: torch.optim.Adadelta(items, lr=lr, weight_decay=wd, foreach=True),
        "rmsprop": lambda: torch.optim.RMSprop(items, lr=lr, weight_decay=wd, momentum=config.momentum, foreach=True),
        "adagrad": lambda: torch.optim.Adagrad(items, lr=lr, weight_decay=wd, **fused),
    }
    if name not in makers:
        raise UsageError(f"unknown optimizer '{name}'.{did_you_mean(name, makers)} Known: {', '.join(makers)}")
    return makers[name]()


def schedule_factor(name: str, step: int, total: int, warmup: int, min_ratio: float, start_ratio: float = 0.0) -> float:
    """LR multiplier at `step` (0-based) of `total` steps for a named schedule."""
    if warmup > 0 and step < warmup:
        return start_ratio + (1 - start_ratio) * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if name == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if name == "linear":
        return min_ratio + (1 - min_ratio) * (1 - progress)
    if name == "step":  # x0.1 at 50 % and 75 % of training
        return 0.1 ** (int(progress >= 0.5) + int(progress >= 0.75))
    return 1.0


def build_schedule(config: OptimConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """A per-step scheduler for the config's schedule name, or None for a constant LR."""
    warmup = config.warmup_steps or int(config.warmup_fraction * total_steps)
    if config.scheduler == "none" and warmup == 0:
        return None
    if config.scheduler == "onecycle":
        max_lrs = [group["lr"] for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lrs, total_steps=max(total_steps, 2))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: schedule_factor(
            config.scheduler, step, total_steps, warmup, config.min_lr_ratio, config.warmup_start_ratio
        ),
    )


def schedule_for(
    spec: Any,
    own_schedule: bool,
    config: OptimConfig,
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    monitor: str = "val_loss",
) -> tuple[Any, str]:
    """(scheduler, "step", "epoch" or "eval"): the user's scheduler as given (stepped as its kind
    needs), or the config's named schedule over `total_steps` when the Trainer chooses the schedule;
    `plateau` lowers the LR when `monitor` stops improving, stepped after each evaluation."""
    if spec is not None or not own_schedule:
        return spec, "step" if spec is None else steps_per_call(spec)
    if config.scheduler == "plateau":
        mode: Literal["min", "max"] = "min" if lower_is_better(monitor) else "max"
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=config.plateau_factor, patience=config.plateau_patience
        )
        return plateau, "eval"
    return build_schedule(config, optimizer, total_steps), "step"


def steps_per_call(scheduler: Any) -> str:
    """ "step" for schedules defined over optimizer steps, "eval" for ReduceLROnPlateau (it reads
    the monitored metric), "epoch" for the rest."""
    per_step = (torch.optim.lr_scheduler.OneCycleLR, torch.optim.lr_scheduler.CyclicLR)
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return "eval"
    return "step" if isinstance(scheduler, per_step) else "epoch"


def grad_norm(params: Iterable[nn.Parameter], max_norm: float | None = None) -> torch.Tensor:
    """The global gradient norm (a device tensor), clipping to `max_norm` when given."""
    params = [p for p in params if p.grad is not None]
    grads = [p.grad for p in params if p.grad is not None]  # the same list, typed as tensors
    if not grads:
        raise UsageError("no parameter received a gradient: does the loss depend on the model's output?")
    if max_norm is not None:
        return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    if all(g.device == grads[0].device and not g.is_sparse for g in grads):  # one group: no grouping pass
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    return torch.nn.utils.get_total_norm(grads, foreach=True)


def zero_grad(optimizer: torch.optim.Optimizer) -> None:
    """`optimizer.zero_grad(set_to_none=True)` without its per-call profiler scope: a few
    microseconds that show against a small model's step. Optimizers that override
    `zero_grad` get their own."""
    if type(optimizer).zero_grad is not torch.optim.Optimizer.zero_grad:
        optimizer.zero_grad(set_to_none=True)
        return
    for group in optimizer.param_groups:
        for param in group["params"]:
            param.grad = None


def optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    """`optimizer.step()` without the profiler scope and hook walk that torch wraps around
    every step, when nothing would see them: no step hooks (global or on this optimizer),
    the autograd profiler off, and `step` not replaced on the instance, except by an LR
    scheduler's call tracker, whose flag is set here. Otherwise the plain `optimizer.step()`."""
    wrapped = type(optimizer).step
    inner = getattr(wrapped, "__wrapped__", None)
    if (
        inner is None
        or not getattr(wrapped, "hooked", False)
        or optimizer._optimizer_step_pre_hooks
        or optimizer._optimizer_step_post_hooks
        or optimizer_module._global_optimizer_pre_hooks
        or optimizer_module._global_optimizer_post_hooks
        or torch.autograd._profiler_enabled()
    ):
        optimizer.step()
        return
    own = vars(optimizer).get("step")
    if own is not None:
        if not getattr(own, "_wrapped_by_lr_sched", False) or getattr(own, "__wrapped__", None) is not wrapped:
            optimizer.step()  # replaced by someone else: theirs runs
            return
        optimizer._opt_called = True  # type: ignore[attr-defined]  # what the scheduler's tracker records
    raw = getattr(inner, "__wrapped__", None)
    if raw is None or inner.__code__.co_name != "_use_grad" or "torch._dynamo" in sys.modules:
        inner(optimizer)
        return
    # torch's `_use_grad` wrapper imports torch._dynamo (about a second, once) for a graph break
    # that only matters while torch.compile traces the step; its grad mode is set here instead.
    enabled = torch.is_grad_enabled()
    torch.set_grad_enabled(optimizer.defaults.get("differentiable", False))
    try:
        raw(optimizer)
    finally:
        torch.set_grad_enabled(enabled)


def prime_fused_momentum(optimizer: Any) -> None:
    """Zero momentum buffers for a fused SGD whose first step may be skipped (a GradScaler's overflow,
    the on-device NaN guard). torch's fused SGD creates them with `empty_like` on its first call and
    fills them only if that step runs: a skipped first step leaves uninitialised memory that the
    next step multiplies by the momentum (seen as weights of 1e28). With dampening 0, a zero buffer
    gives the first step exactly the plain first step's update (buffer = gradient)."""
    if not isinstance(optimizer, torch.optim.SGD):
        return
    for group in optimizer.param_groups:
        if group.get("fused") and group["momentum"] and not group["dampening"]:
            for param in group["params"]:
                state = optimizer.state[param]
                if state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
