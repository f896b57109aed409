"""`speed_sgd`: Nesterov SGD with airbench94's decoupled units (Keller Jordan's CIFAR-10
speed record), built by the optimizer name `airbench-sgd`.

The model is `torchsmith.models.speednet.SpeedNet`; `benchmarks/cifar10_gpu.py` puts the
recipe together in a hand-written loop.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Parameters of these layers form the "norm" group (BatchNorm biases, in SpeedNet).
_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)


def speed_sgd(
    model: nn.Module,
    lr: float = 11.5,
    momentum: float = 0.85,
    weight_decay: float = 0.0153,
    batch_size: int = 1024,
    *,
    bias_scaler: float = 64.0,
    decay_norm: bool = True,
    loss_reduction: str = "mean",
) -> torch.optim.SGD:
    """Nesterov SGD in airbench94's decoupled units, with a faster group for norm layers.

    `lr` is the step size per 1024 examples with momentum factored out, and
    `weight_decay` the decay per 1024 examples independent of lr (so each can be tuned
    alone). In PyTorch terms, for a summed loss: lr_sgd = lr / (1024 (1 + 1 / (1 - momentum)))
    and the decay per step lr_sgd * wd_sgd = weight_decay * batch_size / that same
    1024 (...). With `loss_reduction="mean"` (the Trainer's and `label_smoothing_loss`'s)
    lr_sgd is multiplied by batch_size, which gives the same updates. Parameters of
    normalisation layers (group "norm") get `bias_scaler` times the lr; airbench keeps
    their decay per step equal to the others' (`decay_norm=True`); `decay_norm=False`
    exempts them. Frozen parameters (requires_grad False) are left out.

    Example:
        >>> from torchsmith.models.speednet import SpeedNet
        >>> opt = speed_sgd(SpeedNet(), batch_size=1024)
        >>> [g["name"] for g in opt.param_groups]
        ['norm', 'other']
    """
    if loss_reduction not in ("mean", "sum"):
        raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}.")
    if batch_size < 1 or lr <= 0 or not 0 <= momentum < 1:
        raise ValueError(
            f"need batch_size >= 1, lr > 0 and 0 <= momentum < 1, "
            f"got batch_size={batch_size}, lr={lr}, momentum={momentum}."
        )
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
    step_lr = lr / kilostep_scale * (batch_size if loss_reduction == "mean" else 1)
    decay_per_step = weight_decay * batch_size / kilostep_scale
    norm_ids = _norm_parameter_ids(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = []
    for name, scale in (("norm", bias_scaler), ("other", 1.0)):
        params = [p for p in trainable if (id(p) in norm_ids) == (name == "norm")]
        if not params:
            continue
        decays = name == "other" or decay_norm
        group_lr = step_lr * scale
        weight_decay_sgd = decay_per_step / group_lr if decays else 0.0
        groups.append({"name": name, "params": params, "lr": group_lr, "weight_decay": weight_decay_sgd})
    if not groups:
        raise ValueError("speed_sgd found no trainable parameters (all have requires_grad False).")
    # Fused (CUDA and CPU): one kernel for the whole update, and it can skip a step on the
    # device when the trainer's NaN guard flags it (no host sync).
    fusable = all(p.is_cuda or p.device.type == "cpu" for p in trainable)
    return torch.optim.SGD(groups, lr=step_lr, momentum=momentum, nesterov=True, fused=fusable or None)


def _norm_parameter_ids(model: nn.Module) -> set[int]:
    return {
        id(p)
        for module in model.modules()
        if isinstance(module, _NORM_LAYERS)
        for p in module.parameters(recurse=False)
    }
