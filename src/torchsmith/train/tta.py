"""Test-time augmentation: logits averaged over flipped (and one-pixel translated) views.

`train.tta` (`none`, `flip`, `flip-translate`) turns it on for evaluation.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from torchsmith.config import TTA_MODES


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
