"""`torchsmith lr-find`: the learning-rate range test, with a suggested learning rate.

A short run from a fresh copy of the model raises the LR exponentially from `min_lr` to
`max_lr`, one optimizer step per value, and records the loss. The loss is smoothed with
an exponential moving average (bias-corrected, so the first points are not pulled to
zero) and the run stops once the smoothed loss exceeds 4x its best (divergence).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchsmith.callbacks.base import Callback
from torchsmith.callbacks.finetune import FineTune
from torchsmith.config import OptimConfig, RunConfig, TrainConfig
from torchsmith.errors import UsageError
from torchsmith.train.optim import optimizer_by_name
from torchsmith.train.trainer import Trainer

SKIP_START = 5  # the first smoothed points hold too few losses to rank slopes by


@dataclass
class LRFindResult:
    """The range test's curve and the suggested learning rate.

    Example:
        >>> result = lr_find(model, (inputs, targets), steps=100)  # doctest: +SKIP
        >>> result.suggestion  # doctest: +SKIP
        0.0031
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    min_loss_lr: float  # where the smoothed loss was lowest
    stop_reason: str  # "max_lr reached", "diverged", "non-finite loss"
    trained: int = 0  # parameters the sweep trained (with --finetune: the head's)

    def to_text(self) -> str:
        return (
            f"lowest smoothed loss {min(self.smoothed):.4f} at lr {self.min_loss_lr:.3g}; {self.stop_reason} "
            f"after {len(self.lrs)} steps over {self.trained:,} trainable parameters\nsuggested lr "
            f"{self.suggestion:.3g}  (steepest descent of the smoothed loss)"
        )

    def plot(self, path: str | Path) -> Path:
        """Write the loss-vs-LR curve (log x) with the suggestion marked, as a PNG."""
        from matplotlib.figure import Figure  # Agg canvas, without pyplot's global state

        figure = Figure(figsize=(6.4, 4.0), dpi=100)
        axes = figure.add_subplot()
        axes.plot(self.lrs, self.losses, color="#9ab", linewidth=0.8, label="loss")
        axes.plot(self.lrs, self.smoothed, color="#1f4e99", linewidth=1.8, label="smoothed loss")
        axes.axvline(self.suggestion, color="#c33", linestyle="--", label=f"suggested lr {self.suggestion:.3g}")
        axes.set_xscale("log")
        low, start = min(self.smoothed + self.losses), self.smoothed[0]
        axes.set_ylim(low - 0.1 * (start - low + 1e-8), start + 0.5 * (start - low + 1e-8))  # hide the blow-up
        axes.set(xlabel="learning rate", ylabel="training loss", title="learning-rate range test")
        axes.legend()
        axes.grid(alpha=0.3)
        figure.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format="png")
        return path


def lr_find(
    model: nn.Module,
    train_data: Any,
    *,
    loss: Any = "cross_entropy",
    task: str = "classification",
    optim: OptimConfig | None = None,
    config: TrainConfig | None = None,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    steps: int = 100,
    smoothing: float = 0.9,
    divergence: float = 4.0,
    finetune: FineTune | None = None,
) -> LRFindResult:
    """Run the range test on a deep copy of `model` (the model itself is not changed).

    `optim` names the optimizer and its settings (its lr and schedule are ignored);
    `config` gives batch size, seed, device and precision. With `finetune`, the test runs on
    what trains first: the head alone while the body is frozen (the LR is the head's; each
    layer group keeps its share of it when nothing is frozen).
    """
    _check_range(min_lr, max_lr, steps, smoothing)
    optim = dataclasses.replace(
        optim or OptimConfig(), lr=min_lr, scheduler="none", warmup_steps=0, warmup_fraction=0.0
    )
    # The Trainer's own step, one per LR; log_every=1 reads each step's loss (the stop rule needs
    # it) and the guard is off, since a non-finite loss is an answer here, not a failure.
    config = dataclasses.replace(
        config or TrainConfig(),
        progress="none",
        compile=False,
        log_every=1,
        nan_guard=False,
        max_steps=steps,
        max_epochs=steps,
    )
    sweep = _RangeTest(
        [min_lr * (max_lr / min_lr) ** (step / (steps - 1)) for step in range(steps)], smoothing, divergence
    )
    torch.manual_seed(config.seed)  # the model copy's lazily built parts, if any
    model = copy.deepcopy(model)
    optimizer: Any = None
    callbacks: list[Callback] = [sweep]
    if finetune is not None:
        # A new FineTune finds the body's parameters in the copy; what trains first stays so
        # through the whole sweep, and each layer group keeps its share of the swept LR.
        frozen = steps + 1 if finetune.frozen_epochs > 0 else 0
        finetune = FineTune(finetune.head, frozen, finetune.lr_decay)
        groups = finetune.param_groups(model, min_lr)

        def optimizer(params: Any) -> torch.optim.Optimizer:
            return optimizer_by_name(optim.name, groups, optim)

        callbacks.insert(0, finetune)
    trainer = Trainer(model, loss=loss, optimizer=optimizer, task=task, config=config, optim=optim, callbacks=callbacks)
    trainer.fit(train_data)
    lrs, losses, smoothed, stop_reason = sweep.lrs[: len(sweep.losses)], sweep.losses, sweep.smoothed, sweep.stop_reason
    if len(lrs) < 2 * SKIP_START:
        raise UsageError(
            f"the range test stopped after {len(lrs)} steps ({stop_reason}); lower --min-lr "
            f"(now {min_lr:g}) so the first steps train"
        )
    best = smoothed.index(min(smoothed))
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return LRFindResult(lrs, losses, smoothed, suggest_lr(lrs, smoothed), lrs[best], stop_reason, trained)


class _RangeTest(Callback):
    """Sets each step's learning rate of the exponential sweep and records the loss it gave;
    stops the fit when the smoothed loss diverges or the loss is no longer finite."""

    def __init__(self, lrs: list[float], smoothing: float, divergence: float) -> None:
        self.lrs, self.smoothing, self.divergence = lrs, smoothing, divergence
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.average, self.best, self.stop_reason = 0.0, math.inf, "max_lr reached"

    def on_fit_start(self, trainer: Trainer) -> None:
        self._set_lr(trainer, self.lrs[0])

    def on_step_end(self, trainer: Trainer) -> None:
        value, step = trainer.state.last_loss, len(self.losses)
        if not math.isfinite(value):
            self._stop(trainer, "non-finite loss")
            return
        self.average = self.smoothing * self.average + (1 - self.smoothing) * value
        current = self.average / (1 - self.smoothing ** (step + 1))  # bias correction
        self.losses.append(value)
        self.smoothed.append(current)
        self.best = min(self.best, current)
        if current > self.divergence * self.best:
            self._stop(trainer, "diverged")
        elif step + 1 < len(self.lrs):
            self._set_lr(trainer, self.lrs[step + 1])

    def _stop(self, trainer: Trainer, reason: str) -> None:
        self.stop_reason = reason
        trainer.state.request_stop(reason)

    @staticmethod
    def _set_lr(trainer: Trainer, lr: float) -> None:
        for group in trainer.optimizer.param_groups if trainer.optimizer else []:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # fine-tuning's layer groups keep their shares


def suggest_lr(lrs: list[float], smoothed: list[float]) -> float:
    """The LR where the smoothed loss falls fastest per decade, before its minimum.

    Example:
        >>> lrs = [10 ** (k / 10 - 4) for k in range(30)]
        >>> loss = [1 / (1 + math.exp((math.log10(lr) + 2.5) * 4)) for lr in lrs]
        >>> round(math.log10(suggest_lr(lrs, loss)), 1)
        -2.5
    """
    stop = smoothed.index(min(smoothed))
    log_lrs = [math.log10(lr) for lr in lrs]
    best_index, best_slope = stop, math.inf
    # central differences over the points before the minimum; the first few are left out
    for i in range(max(1, SKIP_START), min(stop, len(lrs) - 1)):
        slope = (smoothed[i + 1] - smoothed[i - 1]) / (log_lrs[i + 1] - log_lrs[i - 1])
        if slope < best_slope:
            best_index, best_slope = i, slope
    return lrs[best_index]


def lr_find_run(config: RunConfig, *, min_lr: float = 1e-6, max_lr: float = 1.0, steps: int = 100) -> LRFindResult:
    """The range test for a run's config: its data, its model with the starting weights the
    config names (--pretrained, --init-from), its optimizer; with --finetune, on the head."""
    from torchsmith.after.transfer import start_model
    from torchsmith.data.registry import load_data

    bundle = load_data(config.data, config.train.seed)
    torch.manual_seed(config.train.seed)
    start = start_model(config, bundle)
    return lr_find(
        start.model,
        bundle.train,
        loss=config.loss,
        task=bundle.info.task,
        optim=config.optim,
        config=config.train,
        min_lr=min_lr,
        max_lr=max_lr,
        steps=steps,
        finetune=start.finetune,
    )


def _check_range(min_lr: float, max_lr: float, steps: int, smoothing: float) -> None:
    errors = []
    if not 0 < min_lr < max_lr:
        errors.append(f"--min-lr must be positive and below --max-lr, got {min_lr:g} and {max_lr:g}")
    if steps < 2 * SKIP_START:
        errors.append(f"--steps must be at least {2 * SKIP_START}, got {steps}")
    if not 0 <= smoothing < 1:
        errors.append(f"smoothing must be in [0, 1), got {smoothing}")
    if errors:
        raise UsageError("; ".join(errors))
