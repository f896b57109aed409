"""`WhitenBiasFreeze`: airbench94's whitening-bias schedule as a callback.

The whitening conv's bias (SpeedNet's first layer) trains for the first epochs only; then it
is frozen, which saves its backward pass. The rest of that recipe: `train.airbench_sgd`,
`train.tta`, `data.augment.translate_batch`, `callbacks.ema`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from torchsmith.callbacks.base import Callback

if TYPE_CHECKING:
    from torchsmith.train.trainer import Trainer

# Parameters of these layers form the "norm" group (BatchNorm biases, in SpeedNet).
_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)


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
