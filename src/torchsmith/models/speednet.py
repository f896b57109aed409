"""SpeedNet: the airbench94 CIFAR-10 network (Keller Jordan), as one plain nn.Module.

What makes it train to 94 % in a few epochs, following airbench94:
- the first layer is a frozen 2x2 patch-whitening convolution, set from the training
  data by `init_whitening`, concatenated with its negation so GELU loses nothing;
  only its bias learns (and the recipe freezes it after a few epochs);
- blocks of conv -> max-pool -> BN -> GELU -> conv -> BN -> GELU, no residuals, each
  3x3 conv initialised as an identity (dirac) on as many channels as it can;
- BatchNorm keeps its scale fixed at 1 (only the bias learns), with eps 1e-12 and
  a fast running-statistics momentum;
- global max pooling, a bias-free linear head, logits scaled down by 1/9.
With `depth=3, residual=True, widths=(128, 512, 512), bn_momentum=0.1` it is airbench96's
network: the last two convs of each block are bridged by a skip connection, with the
block's last activation after the sum.
Any input size works down to 9x9 with the default three blocks (the 2x2 whitening conv
and three pools leave at least one pixel).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class _Conv(nn.Conv2d):
    """3x3 'same' conv without bias, identity-initialised on its first `in_channels` outputs."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        # An implicit residual: output channel i starts as a copy of input channel i.
        # Channels beyond min(in, out) keep the default (Kaiming-uniform) draw.
        count = min(self.in_channels, self.out_channels)
        nn.init.dirac_(self.weight.data[:count])


class _BatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale stays 1: only the bias is a learned parameter."""

    def __init__(self, num_features: int, momentum: float) -> None:
        super().__init__(num_features, eps=1e-12, momentum=momentum)
        self.weight.requires_grad_(False)


class _Block(nn.Module):
    """conv -> max-pool 2 -> BN -> GELU, then (depth - 1) x (conv -> BN -> GELU).

    With `residual`, the output of the first stage is added back after the last BN,
    before the last GELU (airbench96): x0 = f1(x); out = GELU(x0 + BN(conv(...(x0)))).
    """

    def __init__(
        self, in_channels: int, out_channels: int, depth: int, bn_momentum: float, residual: bool = False
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_Conv(in_channels if i == 0 else out_channels, out_channels) for i in range(depth))
        self.norms = nn.ModuleList(_BatchNorm(out_channels, bn_momentum) for _ in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.activation = nn.GELU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.convs) - 1
        skip = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            x = conv(x)
            if i == 0:
                x = self.pool(x)  # pooling before BN is cheaper: BN runs on 1/4 of the pixels
            x = norm(x)
            if self.residual and i == last:
                x = x + skip
            x = self.activation(x)
            if i == 0:
                skip = x
        return x


class SpeedNet(nn.Module):
    """The airbench94 network: whitening conv, three conv blocks, global max pool, scaled head.

    Inputs are normalised float images (B, C, H, W), at least 9x9 with three blocks; call
    `init_whitening(model, train_images)` once before training.

    Example:
        >>> model = SpeedNet(num_classes=10)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: Sequence[int] = (64, 256, 256),
        depth: int = 2,
        whiten_kernel: int = 2,
        whiten_width: int | None = None,
        head_scale: float = 1 / 9,
        bn_momentum: float = 0.4,
        residual: bool = False,
    ) -> None:
        super().__init__()
        full_width = 2 * in_channels * whiten_kernel**2
        whiten_width = full_width if whiten_width is None else whiten_width
        _check_arguments(num_classes, widths, depth, whiten_width, full_width)
        if residual and depth < 2:
            raise ValueError(
                f"residual=True bridges the convs after a block's first one: it needs depth >= 2, got {depth}."
            )
        # Frozen weights (set by init_whitening), learnable bias; padding 0 as in airbench.
        self.whiten = nn.Conv2d(in_channels, whiten_width, whiten_kernel, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        self._whiten_bias().data.zero_()
        channels = [whiten_width, *widths]
        self.blocks = nn.ModuleList(
            _Block(channels[i], channels[i + 1], depth, bn_momentum, residual) for i in range(len(widths))
        )
        self.head = nn.Linear(channels[-1], num_classes, bias=False)
        self.head_scale = head_scale
        self.min_size = whiten_kernel - 1 + 2 ** len(widths)

    def reset_parameters(self) -> None:
        """Draw fresh weights in place, as at construction (call `init_whitening` after).

        Lets one compiled model serve several seeds: its compiled code is kept.
        """
        for module in self.modules():
            reset = getattr(module, "reset_parameters", None)
            if module is not self and callable(reset):
                reset()  # BN also resets its running statistics
        bias = self._whiten_bias()
        bias.data.zero_()
        bias.requires_grad_(True)

    def _whiten_bias(self) -> torch.Tensor:
        assert self.whiten.bias is not None  # built with bias=True
        return self.whiten.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < self.min_size or x.shape[-2] < self.min_size:
            raise ValueError(
                f"SpeedNet needs images of at least {self.min_size}x{self.min_size} "
                f"(whitening conv and {len(self.blocks)} pools), got {tuple(x.shape[-2:])}; "
                "upsample the inputs or build it with fewer widths."
            )
        x = F.gelu(self.whiten(x))  # (B, 2 C k^2, H - k + 1, W - k + 1)
        for block in self.blocks:
            x = block(x)  # spatial size halves per block
        # (B, widths[-1]): global max pool, any input size. Not torch.amax: its backward
        # compares x with the max, which under compile + bf16 autocast can match nothing
        # and divide by a zero count (NaN); max pooling's backward routes by index.
        x = F.adaptive_max_pool2d(x, 1).flatten(1)
        # Float logits even under autocast, so the loss and TTA averages run in fp32.
        return (self.head(x) * self.head_scale).float()


def _check_arguments(
    num_classes: int,
    widths: Sequence[int],
    depth: int,
    whiten_width: int,
    full_width: int,
) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes}.")
    if depth < 1 or not widths or any(w < 1 for w in widths):
        raise ValueError(f"depth >= 1 and positive widths are needed, got {depth=}, {widths=}.")
    if whiten_width % 2 or not 2 <= whiten_width <= full_width:
        raise ValueError(
            f"whiten_width must be even and between 2 and 2 * in_channels * whiten_kernel**2 = "
            f"{full_width} (the eigenvectors and their negations), got {whiten_width}."
        )


@torch.no_grad()
def init_whitening(
    target: nn.Module,
    images: torch.Tensor,
    eps: float = 5e-4,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """Set the whitening conv from the eigen-decomposition of the training patches' covariance.

    `target` is a SpeedNet (its `whiten` conv) or a Conv2d. `images` (N, C, H, W) must
    be what the model sees: uint8 images are scaled to [0, 1], then normalised with
    `mean`/`std` when given. As in airbench, the second moment of the k x k patches is
    decomposed as V diag(lambda) V^T (not mean-centred) and the filters are
    V / sqrt(lambda + eps) for the largest eigenvalues, then their negations; so on the
    training patches the first half of the outputs has second moment
    diag(lambda / (lambda + eps)), about the identity. Returns the eigenvalues used.

    Example:
        >>> model = SpeedNet()
        >>> _ = init_whitening(model, torch.randn(64, 3, 32, 32))
    """
    conv = target.whiten if isinstance(target, SpeedNet) else target
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"init_whitening needs a SpeedNet or an nn.Conv2d, got {type(target).__name__}.")
    if images.ndim != 4 or images.shape[1] != conv.in_channels:
        raise ValueError(
            f"images must be (N, {conv.in_channels}, H, W) to match the whitening conv, got {tuple(images.shape)}."
        )
    covariance = _patch_second_moment(images, conv.kernel_size, mean, std)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    keep = conv.out_channels // 2
    eigenvalues = eigenvalues.flip(0)[:keep]  # largest first
    filters = eigenvectors.flip(1)[:, :keep].T / torch.sqrt(eigenvalues + eps).unsqueeze(1)
    filters = filters.reshape(keep, *conv.weight.shape[1:])  # (keep, C, k, k)
    conv.weight.copy_(torch.cat([filters, -filters]).to(conv.weight))
    return eigenvalues.float()


def _patch_second_moment(
    images: torch.Tensor,
    kernel_size: tuple[int, ...],
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    chunk: int = 1024,
) -> torch.Tensor:
    """E[p p^T] over every k x k patch, in float64, accumulated over chunks of images."""
    dim = images.shape[1] * kernel_size[0] * kernel_size[1]
    total = torch.zeros(dim, dim, dtype=torch.float64, device=images.device)
    count = 0
    for part in images.split(chunk):
        x = part.float() / 255 if part.dtype == torch.uint8 else part.float()
        if mean is not None and std is not None:
            shape = (1, -1, 1, 1)
            x = (x - torch.tensor(mean, device=x.device).view(shape)) / torch.tensor(std, device=x.device).view(shape)
        # (n, C*k*k, L) with features ordered (c, kh, kw), as in a conv weight's flattening
        patches = F.unfold(x, kernel_size).transpose(1, 2).reshape(-1, dim).double()
        total += patches.T @ patches
        count += patches.shape[0]
    return total / count
