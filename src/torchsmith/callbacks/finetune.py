"""`FineTune`: train a new head on a trained body, then everything, each layer group at its own LR.

For the first `frozen_epochs` epochs only the head trains: the body's parameters do not
require gradients and its BatchNorm layers stay in evaluation mode, so their running
statistics keep what pretraining measured. Then the body unfreezes. The learning rates are
discriminative from the start: the optimizer is built over all parameter groups up front
(`param_groups`), the head at the base LR and each layer group below it at `lr_decay` times
the one above. The optimizer's groups are therefore the same before and after the unfreeze,
and whether the body trains follows from the epoch alone, so a run resumes exactly on
either side of it.

A layer group is one top-level child of the model (`layer4`, `features`, `blocks`, ...);
the head is its own group, whatever its depth in the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import nn

from torchsmith.callbacks.base import Callback
from torchsmith.models.weights import in_head

if TYPE_CHECKING:
    from torchsmith.train.trainer import Trainer


class FineTune(Callback):
    """Head alone for `frozen_epochs` epochs, then the whole model with per-group learning rates.

    Example:
        >>> finetune = FineTune(head=["fc"], frozen_epochs=1, lr_decay=0.5)
        >>> model = nn.Sequential()
        >>> model.add_module("body", nn.Linear(8, 16)); model.add_module("fc", nn.Linear(16, 4))
        >>> [(g["layer_group"], g["lr"]) for g in finetune.param_groups(model, lr=0.01)]
        [('fc', 0.01), ('body', 0.005)]
    """

    def __init__(self, head: Sequence[str], frozen_epochs: int = 1, lr_decay: float = 0.5) -> None:
        if not head:
            raise ValueError("FineTune needs the names of the head's modules, e.g. head=['fc']")
        self.head = list(head)
        self.frozen_epochs = frozen_epochs
        self.lr_decay = lr_decay
        self._body: list[nn.Parameter] | None = None  # the body's trainable parameters, found once
        self._norms: list[nn.Module] = []

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        """Optimizer groups: the head at `lr`, then each top-level child, deepest last, at
        `lr * lr_decay ** depth`; the key `lr_scale` holds that factor."""
        groups: dict[str, list[nn.Parameter]] = {}
        for name, param in model.named_parameters():
            key = "+".join(self.head) if in_head(name, self.head) else name.split(".")[0]
            groups.setdefault(key, []).append(param)
        head_key = "+".join(self.head)
        if head_key not in groups:
            raise ValueError(f"the model has no parameters under the head {self.head}")
        order = [head_key, *reversed([key for key in groups if key != head_key])]
        return [
            {"params": groups[key], "lr": lr * scale, "lr_scale": scale, "layer_group": key}
            for scale, key in ((self.lr_decay**depth, key) for depth, key in enumerate(order))
        ]

    def frozen(self, epoch: int) -> bool:
        return epoch < self.frozen_epochs

    def apply(self, model: nn.Module, epoch: int) -> bool:
        """Freeze or unfreeze the body for `epoch` (0-based); True when the trainable set changed."""
        if self._body is None:
            self._body = [p for n, p in model.named_parameters() if not in_head(n, self.head) and p.requires_grad]
            self._norms = [
                m
                for n, m in model.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and not in_head(n, self.head)
            ]
        frozen = self.frozen(epoch)
        changed = any(p.requires_grad == frozen for p in self._body)
        for param in self._body:
            param.requires_grad_(not frozen)
        if frozen:
            self.keep_norms_frozen()
        return changed

    def keep_norms_frozen(self) -> None:
        """BatchNorm layers of the frozen body normalise with their running statistics and
        leave them unchanged (evaluation mode)."""
        for norm in self._norms:
            norm.train(False)

    def _apply(self, trainer: Trainer) -> None:
        if self.apply(trainer.model, trainer.state.epoch):
            trainer.parameters_changed()

    def on_fit_start(self, trainer: Trainer) -> None:
        self._apply(trainer)

    def on_epoch_start(self, trainer: Trainer) -> None:
        self._apply(trainer)  # the Trainer has just put the model in training mode

    def on_step_end(self, trainer: Trainer) -> None:
        # The NaN doctor's replay puts every layer back in training mode: keep the body's norms frozen.
        if self.frozen(trainer.state.epoch):
            self.keep_norms_frozen()
