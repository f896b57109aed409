"""The pieces of the airbench94 recipe (Keller Jordan's CIFAR-10 speed record) outside the model.

- `translate_batch`: per-sample random translation with reflect padding (airbench's
  `batch_crop` on a reflect-padded batch), drawn from one generator;
- `tta_predict`: test-time augmentation, flip and flip + one-pixel translations;
- `label_smoothing_loss`, `warmup_linear_decay`, `speed_sgd`: the loss, the triangular
  learning-rate schedule and the Nesterov SGD with airbench's decoupled units;
- `WhitenBiasFreeze`: trains the whitening conv's bias for the first epochs only;
- `EMACallback` (from `torchsmith.callbacks_ema`): weight averaging, airbench's
  lookahead included.

The model is `torchsmith.models.speednet.SpeedNet`; `benchmarks/cifar10_gpu.py` puts
everything together in a hand-written loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from torchsmith.callbacks import Callback
from torchsmith.callbacks_ema import EMACallback
from torchsmith.data.augment import _gen_device

if TYPE_CHECKING:
    from torchsmith.trainer import Trainer

__all__ = [
    "TTA_MODES",
    "EMACallback",
    "WhitenBiasFreeze",
    "label_smoothing_loss",
    "speed_sgd",
    "translate_batch",
    "tta_predict",
    "warmup_linear_decay",
]

TTA_MODES = ("none", "flip", "flip-translate")


def translate_batch(x: torch.Tensor, max_shift: int, generator: torch.Generator | None) -> torch.Tensor:
    """Shift each image (B, C, H, W) by its own (dy, dx) in [-max_shift, max_shift], reflecting at edges.

    Equal to cropping an H x W window at a random offset out of the batch reflect-padded
    by `max_shift` (airbench's translate), but done as two gathers with reflected indices,
    so no padded copy is made and any dtype works (uint8 included). The offsets are
    drawn like `data.augment.random_crop` (rows, then columns), so the two agree away
    from the border for the same generator state.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> translate_batch(torch.rand(8, 3, 32, 32), 2, g).shape
        torch.Size([8, 3, 32, 32])
    """
    if max_shift <= 0:
        return x
    batch, channels, height, width = x.shape
    if max_shift >= min(height, width):
        raise ValueError(
            f"max_shift must be smaller than the image ({height}x{width}) for reflect padding, got {max_shift}."
        )
    device = _gen_device(x, generator)
    span = 2 * max_shift + 1
    dy = torch.randint(0, span, (batch,), generator=generator, device=device).to(x.device)
    dx = torch.randint(0, span, (batch,), generator=generator, device=device).to(x.device)
    rows = _reflect(dy.view(-1, 1) - max_shift + torch.arange(height, device=x.device), height)
    cols = _reflect(dx.view(-1, 1) - max_shift + torch.arange(width, device=x.device), width)
    rows = rows.view(batch, 1, height, 1).expand(batch, channels, height, width)
    out = x.gather(2, rows)  # (B, C, H, W): row i of sample b is source row rows[b, i]
    cols = cols.view(batch, 1, 1, width).expand(batch, channels, height, width)
    return out.gather(3, cols)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    # Reflect padding without repeating the edge ("reflect", not "symmetric"): -1 -> 1, size -> size - 2.
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


@torch.no_grad()
def tta_predict(model: nn.Module, x: torch.Tensor, mode: str = "flip-translate") -> torch.Tensor:
    """Logits (B, K) averaged over test-time views of x (B, C, H, W), as airbench94 does.

    "none": the model's logits; "flip": mean of x and its mirror image; "flip-translate":
    half the "flip" average plus half the mean of the "flip" averages of x translated by
    one pixel up-left and down-right (reflect padding), i.e. six views weighted
    1/4, 1/4, 1/8, 1/8, 1/8, 1/8. All views go through one forward pass; put the model
    in eval() first so BatchNorm uses its running statistics.

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()
        >>> tta_predict(model, torch.rand(4, 3, 8, 8), "flip").shape
        torch.Size([4, 10])
    """
    if mode not in TTA_MODES:
        raise ValueError(f"TTA mode must be one of {TTA_MODES}, got {mode!r}.")
    if mode == "none":
        return model(x)
    height, width = x.shape[-2:]
    views = [x]
    weights = [1.0]
    if mode == "flip-translate":
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")  # (B, C, H + 2, W + 2)
        views += [padded[..., :height, :width], padded[..., 2:, 2:]]
        weights = [0.5, 0.25, 0.25]
    views = [v for view in views for v in (view, view.flip(-1))]
    weights = [w / 2 for w in weights for _ in range(2)]
    logits = model(torch.cat(views))  # (V * B, K)
    logits = logits.view(len(views), x.shape[0], *logits.shape[1:])  # (V, B, K)
    scale = torch.tensor(weights, dtype=logits.dtype, device=logits.device)
    return torch.einsum("v,vb...->b...", scale, logits)


def label_smoothing_loss(smoothing: float = 0.2) -> nn.CrossEntropyLoss:
    """Cross entropy with label smoothing (airbench94 uses 0.2), mean over the batch.

    Example:
        >>> loss = label_smoothing_loss(0.2)
        >>> float(loss(torch.zeros(2, 10), torch.tensor([1, 2]))) > 0
        True
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}.")
    return nn.CrossEntropyLoss(label_smoothing=smoothing)


def warmup_linear_decay(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int,
    start_factor: float = 0.0,
    end_factor: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Triangular schedule: lr factor rises linearly from `start_factor` to 1 over
    `warmup_steps`, then falls linearly to `end_factor` at `total_steps` and stays there.

    airbench94: `warmup_steps = int(0.23 * total_steps)`, `start_factor=0.2`,
    `end_factor=0.07`. Call `scheduler.step()` after each optimizer step.

    Example:
        >>> opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = warmup_linear_decay(opt, total_steps=100, warmup_steps=10)
    """
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"need total_steps >= 1 and 0 <= warmup_steps <= total_steps, "
            f"got total_steps={total_steps}, warmup_steps={warmup_steps}."
        )

    def factor(step: int) -> float:
        if step >= total_steps:
            return end_factor
        if step < warmup_steps:
            return start_factor + (1.0 - start_factor) * step / warmup_steps
        progress = (step - warmup_steps) / (total_steps - warmup_steps)
        return 1.0 + (end_factor - 1.0) * progress

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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


class WhitenBiasFreeze(Callback):
    """Train `model.whiten.bias` for the first `epochs` epochs, then freeze it (airbench94: 3).

    The bias converges fast; freezing it saves its backward pass. `speed_sgd` must be
    built while the bias still trains, so that it is in the optimizer.

    Example:
        >>> callback = WhitenBiasFreeze(epochs=3)
    """

    def __init__(self, epochs: int = 3) -> None:
        self.epochs = epochs

    def apply(self, model: nn.Module, epoch: int) -> None:
        """Set requires_grad of the whitening bias for `epoch` (0-based)."""
        whiten = model.get_submodule("whiten")
        if not isinstance(whiten, nn.Conv2d) or whiten.bias is None:
            raise TypeError("WhitenBiasFreeze needs a model with a `whiten` Conv2d that has a bias (SpeedNet).")
        whiten.bias.requires_grad_(epoch < self.epochs)

    def on_epoch_start(self, trainer: Trainer) -> None:
        self.apply(trainer.model, trainer.state.epoch)
