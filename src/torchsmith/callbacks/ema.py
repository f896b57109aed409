"""Weight averaging: an exponential moving average of the model, or airbench94's lookahead.

The average is an fp32 shadow of every floating-point entry of the model's state_dict
(parameters and BatchNorm running statistics), kept on the model's device and updated
with `torch._foreach_lerp_`, with the decay computed on the host from the step counter,
so an update never waits for the GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchsmith.callbacks.base import Callback

if TYPE_CHECKING:
    from torchsmith.train.trainer import Trainer


class EMACallback(Callback):
    """Average the weights every `update_every` steps; evaluate and save with the average.

    At a step s (counted after the optimizer step) with s >= start_step and
    s % update_every == 0, the shadow moves toward the weights:
    shadow = rho * shadow + (1 - rho) * weights, where
    rho = decay ** update_every * (s / total_steps) ** warmup_power
    (warmup_power 0 gives a constant rho; airbench94 uses decay 0.95, update_every 5,
    warmup_power 3, so averaging starts weak and ends strong). The first update copies
    the weights. With `lookahead=True` the model is then reset to the shadow, as airbench
    does (and once more at the end of fit); otherwise the model trains undisturbed, the
    Trainer evaluates and checkpoints the average (`inference_weights`), keeping the
    training weights in this callback's state so a resumed run goes on from them, and at
    the end of fit the model takes the average for good.
    `total_steps` defaults to the trainer's max_steps or steps_per_epoch * max_epochs.

    Example:
        >>> ema = EMACallback(decay=0.95, update_every=5, warmup_power=3.0, lookahead=True)
        >>> # trainer = Trainer(..., callbacks=[ema]); with ema.averaged_weights(model): evaluate
    """

    def __init__(
        self,
        decay: float = 0.999,
        update_every: int = 1,
        *,
        start_step: int = 0,
        warmup_power: float = 0.0,
        total_steps: int | None = None,
        lookahead: bool = False,
    ) -> None:
        if not 0.0 <= decay <= 1.0 or update_every < 1 or warmup_power < 0:
            raise ValueError(
                f"need 0 <= decay <= 1, update_every >= 1 and warmup_power >= 0, got "
                f"decay={decay}, update_every={update_every}, warmup_power={warmup_power}."
            )
        self.decay = decay
        self.update_every = update_every
        self.start_step = start_step
        self.warmup_power = warmup_power
        self.total_steps = total_steps
        self.lookahead = lookahead
        self.shadow: dict[str, torch.Tensor] | None = None
        self.num_updates = 0
        self.model: nn.Module | None = None
        self._training_weights: dict[str, torch.Tensor] | None = None  # from a checkpoint, until fit starts
        self._training_weights_at_end: dict[str, torch.Tensor] | None = None  # after fit swapped the average in

    # --- the averaging itself, usable from any loop -------------------------------------

    def rho(self, step: int, total_steps: int | None = None) -> float:
        """The weight of the old average at `step` (a Python float: no device sync)."""
        rho = self.decay**self.update_every
        if self.warmup_power:
            total = total_steps or self.total_steps
            if not total:
                raise ValueError("EMACallback with warmup_power > 0 needs total_steps.")
            rho *= min(step / total, 1.0) ** self.warmup_power
        return rho

    @torch.no_grad()
    def maybe_update(self, model: nn.Module, step: int, total_steps: int | None = None) -> bool:
        """Update the average if `step` is an update step; returns whether it did."""
        if step < self.start_step or step % self.update_every:
            return False
        self.update(model, self.rho(step, total_steps))
        return True

    @torch.no_grad()
    def update(self, model: nn.Module, rho: float) -> None:
        """shadow = rho * shadow + (1 - rho) * weights (a copy on the first call)."""
        tensors = _averaged_tensors(model)
        if self.shadow is None:
            self.shadow = {name: t.detach().float().clone() for name, t in tensors.items()}
        else:
            self._move_shadow_to(tensors)
            shadow, weights = self._pairs(tensors)
            same = [i for i, w in enumerate(weights) if w.dtype == torch.float32]
            if same:  # one fused kernel per dtype group, no host sync
                torch._foreach_lerp_([shadow[i] for i in same], [weights[i] for i in same], 1 - rho)
            for i, w in enumerate(weights):
                if w.dtype != torch.float32:  # half/bf16 models: average in fp32
                    shadow[i].lerp_(w.float(), 1 - rho)
        self.num_updates += 1
        if self.lookahead:
            self.copy_to(model)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's averaged tensors with the shadow (no-op before any update)."""
        if self.shadow is None:
            return
        tensors = _averaged_tensors(model)
        self._move_shadow_to(tensors)
        shadow, weights = self._pairs(tensors)
        torch._foreach_copy_(weights, shadow)

    @contextlib.contextmanager
    def averaged_weights(self, model: nn.Module) -> Iterator[nn.Module]:
        """Within the block the model holds the averaged weights; its own come back after.

        Example:
            >>> # with ema.averaged_weights(model): metrics = evaluate(model)
        """
        if self.shadow is None:
            yield model
            return
        backup = {name: t.detach().clone() for name, t in _averaged_tensors(model).items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            _load(model, backup)

    def inference_weights(self, model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
        """The average for evaluation and saving; with lookahead the model already holds it."""
        return contextlib.nullcontext(model) if self.lookahead else self.averaged_weights(model)

    # --- trainer hooks --------------------------------------------------------------------

    def on_fit_start(self, trainer: Trainer) -> None:
        self.model = trainer.model
        self._training_weights_at_end = None
        if self._training_weights is not None:  # resumed: the checkpoint's model is the average
            _load(trainer.model, self._training_weights)
            self._training_weights = None
        if self.warmup_power and not self._total(trainer):
            raise ValueError(
                "EMACallback(warmup_power > 0) needs the run's length: pass total_steps or "
                "set max_steps / max_epochs on the Trainer."
            )

    def on_step_end(self, trainer: Trainer) -> None:
        self.maybe_update(trainer.model, trainer.state.step, self._total(trainer))

    def on_fit_end(self, trainer: Trainer) -> None:
        if not self.lookahead and self.shadow is not None:  # what a checkpoint saved after this resumes from
            self._training_weights_at_end = {k: t.detach().clone() for k, t in _averaged_tensors(trainer.model).items()}
        self.copy_to(trainer.model)  # the final weights are the average (airbench: a last update with decay 1)

    def state_dict(self) -> dict[str, Any]:
        """Tensors (the shadow) and counters: a resumed run continues the same average. Without
        lookahead also the training weights, since checkpoints hold the average as the model."""
        shadow = None if self.shadow is None else {k: v.clone() for k, v in self.shadow.items()}
        state: dict[str, Any] = {"shadow": shadow, "num_updates": self.num_updates}
        if self._training_weights_at_end is not None:
            state["training_weights"] = self._training_weights_at_end
        elif not self.lookahead and self.shadow is not None and self.model is not None:
            state["training_weights"] = {k: t.detach().clone() for k, t in _averaged_tensors(self.model).items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shadow = state.get("shadow")
        self.shadow = None if shadow is None else {k: v.float().clone() for k, v in shadow.items()}
        self.num_updates = int(state.get("num_updates", 0))
        self._training_weights = state.get("training_weights")

    # --- helpers ----------------------------------------------------------------------------

    def _total(self, trainer: Trainer) -> int | None:
        return self.total_steps or trainer.state.total_steps

    def _pairs(self, tensors: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        assert self.shadow is not None
        if self.shadow.keys() != tensors.keys():
            missing = sorted(set(tensors) ^ set(self.shadow))[:5]
            raise ValueError(f"EMA shadow and model disagree on these entries: {missing}.")
        names = list(tensors)
        return [self.shadow[n] for n in names], [tensors[n] for n in names]

    def _move_shadow_to(self, tensors: dict[str, torch.Tensor]) -> None:
        # After load_state_dict the shadow may sit on the CPU; move it once, lazily.
        assert self.shadow is not None
        for name, t in tensors.items():
            if self.shadow[name].device != t.device:
                self.shadow[name] = self.shadow[name].to(t.device)


def _averaged_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    # Floating-point parameters and buffers by state_dict name; integer buffers
    # (num_batches_tracked) are counters, not weights, and are left alone.
    return {name: t for name, t in model.state_dict(keep_vars=True).items() if t.is_floating_point()}


@torch.no_grad()
def _load(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved tensors back into the model's averaged entries, by state_dict name."""
    for name, t in _averaged_tensors(model).items():
        t.copy_(tensors[name])
