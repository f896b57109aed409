"""The airbench94 parts: augmentation statistics, EMA against a hand computation, TTA,
whitening init, SpeedNet shapes, the LR schedule and the optimizer's parameter groups."""

from __future__ import annotations

import copy
import io
import shutil
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from torchsmith.callbacks.ema import EMACallback
from torchsmith.callbacks.whitening import WhitenBiasFreeze
from torchsmith.data.augment import (
    augment_images,
    cutout,
    parse_policy,
    random_crop,
    random_crop_flip,
    random_flip,
    translate_batch,
)
from torchsmith.data.memory import ImageTensors
from torchsmith.models.speednet import SpeedNet, init_whitening
from torchsmith.state import TrainState
from torchsmith.train.airbench_sgd import speed_sgd
from torchsmith.train.tta import tta_predict


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- translate / flip ---------------------------------------------------------------------


def _identify_shifts(out: torch.Tensor, image: torch.Tensor, max_shift: int) -> torch.Tensor:
    """For each output sample, the (dy, dx) index of the reflect-padded window it equals."""
    height, width = image.shape[-2:]
    padded = F.pad(image[None].float(), (max_shift,) * 4, mode="reflect")[0]
    span = 2 * max_shift + 1
    windows = torch.stack(
        [padded[:, dy : dy + height, dx : dx + width] for dy in range(span) for dx in range(span)]
    )  # (span^2, C, H, W)
    matches = (out.float()[:, None] == windows[None]).flatten(2).all(-1)  # (B, span^2)
    assert (matches.sum(1) == 1).all(), "every output must equal exactly one shifted window"
    return matches.float().argmax(1)


def test_translate_shifts_each_sample_within_range_about_uniformly():
    image = torch.arange(49, dtype=torch.float32).view(1, 7, 7)  # unique values: shifts identifiable
    counts = torch.zeros(25)
    for seed in range(10):  # pooled over seeds: each seed draws 600 samples
        out = translate_batch(image.expand(600, 1, 7, 7), 2, _gen(seed))
        counts += torch.bincount(_identify_shifts(out, image, 2), minlength=25)
    expected = counts.sum() / 25  # 240 per (dy, dx); sd about 15
    assert counts.min() > expected - 70 and counts.max() < expected + 70, counts


def test_translate_reflects_and_keeps_dtype():
    image = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    out = translate_batch(image.expand(200, 1, 4, 4), 1, _gen(3))
    assert out.dtype == torch.uint8
    _identify_shifts(out, image[0], 1)  # each output is a reflect-padded window, never zeros


def test_translate_agrees_with_random_crop_away_from_the_border():
    x = torch.randn(64, 3, 12, 12)
    translated = translate_batch(x, 2, _gen(7))
    cropped = random_crop(x, 2, _gen(7))  # same draws, zero padding instead of reflect
    assert torch.equal(translated[..., 2:-2, 2:-2], cropped[..., 2:-2, 2:-2])
    assert not torch.equal(translated, cropped)  # borders differ: reflect vs zeros


def test_translate_is_deterministic_for_a_generator():
    x = torch.randn(32, 3, 10, 10)
    assert torch.equal(translate_batch(x, 2, _gen(1)), translate_batch(x, 2, _gen(1)))
    assert not torch.equal(translate_batch(x, 2, _gen(1)), translate_batch(x, 2, _gen(2)))
    assert translate_batch(x, 0, _gen(1)) is x
    with pytest.raises(ValueError, match="max_shift"):
        translate_batch(x, 10, _gen(1))


def test_flip_rate_is_one_half_per_sample():
    x = torch.randn(20000, 1, 1, 2)
    out = random_flip(x, _gen(0))
    flipped = (out[..., 0] == x[..., 1]).flatten()
    assert 0.48 < flipped.float().mean().item() < 0.52
    assert torch.equal(out, random_flip(x, _gen(0)))


@pytest.mark.parametrize("padding", [0, 1, 4])
@pytest.mark.parametrize("shape", [(64, 3, 32, 32), (33, 1, 7, 12)])
def test_fused_crop_flip_is_crop_then_flip_exactly(padding, shape):
    # the in-memory batch path uses the fused op; it must give the pixels the two steps give
    x = torch.randint(0, 256, shape, dtype=torch.uint8)
    for seed in range(3):
        g = _gen(seed)
        expected = random_flip(random_crop(x, padding, g), g)
        assert torch.equal(random_crop_flip(x, padding, _gen(seed)), expected)
    fused = augment_images(x, "crop-flip", _gen(5), padding=padding)
    g = _gen(5)
    assert torch.equal(fused, random_flip(random_crop(x, padding, g), g))


def test_cutout_fills_one_square_per_image_at_uniform_positions():
    x = torch.full((4000, 3, 8, 8), 200, dtype=torch.uint8)
    fill = torch.tensor([10, 20, 30], dtype=torch.uint8).view(1, 3, 1, 1)
    out = cutout(x, 3, _gen(0), fill)
    masked = out != x  # (B, C, H, W): every channel of a cut pixel changes
    assert torch.equal(masked[:, 0], masked[:, 2]) and (masked.sum((1, 2, 3)) == 3 * 9).all()
    assert torch.equal(out.permute(0, 2, 3, 1)[masked[:, 0]], fill.view(1, 3).expand(4000 * 9, 3))
    # the square is whole and lies inside: its top-left corner is uniform over the 6 x 6 positions
    rows = masked[:, 0].any(2).float().argmax(1)
    cols = masked[:, 0].any(1).float().argmax(1)
    counts = torch.bincount(rows * 6 + cols, minlength=36).float()
    assert counts.numel() == 36 and (counts / counts.mean() - 1).abs().max() < 0.35
    assert torch.equal(out, cutout(x, 3, _gen(0), fill)) and cutout(x, 0, _gen(0)) is x
    with pytest.raises(ValueError, match="larger than the 8x8"):
        cutout(x, 9, _gen(0))


def test_augmentation_policies_parse_and_compose():
    assert parse_policy("none") == {}
    assert parse_policy("crop-flip", padding=2) == {"crop": 2, "flip": 1}
    assert parse_policy("flip-translate4-cutout12") == {"flip": 1, "translate": 4, "cutout": 12}
    assert parse_policy("translate") == {"translate": 2}
    for bad in ("flip2", "rotate", "crop-translate", "flip-flip", "crop-"):
        with pytest.raises(ValueError, match="augmentation"):
            parse_policy(bad)
    x = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8)
    # the same draws in the same order as the ops applied one by one: translate, flip, cutout
    g = _gen(3)
    by_hand = cutout(random_flip(translate_batch(x, 4, g), g), 5, g)
    assert torch.equal(augment_images(x, "flip-translate4-cutout5", _gen(3)), by_hand)
    with pytest.raises(ValueError, match="unknown augmentation 'twist'"):
        ImageTensors(x, torch.zeros(16), [0.5] * 3, [0.2] * 3, augment="twist")
    for too_big in ("cutout13", "flip-translate12"):  # 12x12 images: refused when the data is built
        with pytest.raises(ValueError, match="12x12 images"):
            ImageTensors(x, torch.zeros(16), [0.5] * 3, [0.2] * 3, augment=too_big)
    source = ImageTensors(x, torch.zeros(16), [0.5] * 3, [0.2] * 3, augment="flip-translate4-cutout5")
    assert source.ops == {"flip": 1, "translate": 4, "cutout": 5} and source.subset(torch.arange(4), "none").ops == {}


def test_image_tensors_cut_out_to_the_channel_mean():
    # a cut pixel normalises to (round(255 mean) / 255 - mean) / std, within half a grey level of 0
    x = torch.full((64, 3, 8, 8), 255, dtype=torch.uint8)
    source = ImageTensors(x, torch.zeros(64), [0.1, 0.5, 0.9], [0.2, 0.2, 0.2], augment="cutout4")
    batch, _ = source.get_batch(torch.arange(64), _gen(0), train=True)
    cut = batch.abs() < 0.1  # untouched pixels normalise to (1 - mean) / std >= 0.5
    assert (cut.sum((1, 2, 3)) == 3 * 16).all() and batch[cut].abs().max() < 0.5 / 255 / 0.2 + 1e-6


# --- EMA / lookahead ----------------------------------------------------------------------


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def _batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = _gen(42)
    return [(torch.randn(8, 3, generator=g), torch.randn(8, 2, generator=g)) for _ in range(count)]


def _train(model, callback, batches, first_step=1, total=None):
    """A minimal loop calling the hooks like the Trainer: step counts the step just taken."""
    trainer = SimpleNamespace(model=model, state=TrainState(max_steps=total))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step, (x, y) in enumerate(batches, start=first_step):
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        trainer.state.step = step
        if callback is not None:
            callback.on_step_end(trainer)
    return trainer


def _flat(model: nn.Module) -> dict[str, list[float]]:
    return {k: [float(v) for v in t.flatten().tolist()] for k, t in model.state_dict().items() if t.is_floating_point()}


def test_ema_matches_a_hand_computation():
    decay, every, start, power, total = 0.9, 2, 3, 2.0, 12
    ema = EMACallback(decay, every, start_step=start, warmup_power=power, total_steps=total)
    model, twin = _tiny_model(), _tiny_model()
    reference = None
    batches = _batches(total)
    for step, batch in enumerate(batches, start=1):
        _train(twin, None, [batch], first_step=step)
        if step >= start and step % every == 0:
            weights = _flat(twin)
            if reference is None:
                reference = weights
            else:
                rho = decay**every * (step / total) ** power
                for name, values in weights.items():
                    for i, value in enumerate(values):
                        reference[name][i] = rho * reference[name][i] + (1 - rho) * value
    _train(model, ema, batches)
    assert ema.num_updates == 5  # steps 4, 6, 8, 10, 12
    assert set(ema.shadow) == set(reference)  # num_batches_tracked is not averaged
    for name, values in reference.items():
        assert ema.shadow[name].flatten().tolist() == pytest.approx(values, abs=1e-6), name
    # a plain EMA leaves training alone, and differs from the final weights
    assert _flat(model) == _flat(twin)
    assert not torch.allclose(ema.shadow["0.weight"], model[0].weight)


def test_lookahead_resets_the_weights_to_the_average():
    ema = EMACallback(0.8, 3, lookahead=True)
    model, reference = _tiny_model(), _tiny_model()
    batches = _batches(9)
    _train(model, ema, batches)
    average = None
    for step, batch in enumerate(batches, start=1):  # the same by hand: average, then copy back
        _train(reference, None, [batch], first_step=step)
        if step % 3 == 0:
            weights = _flat(reference)
            average = (
                weights
                if average is None
                else {
                    k: [0.8**3 * a + (1 - 0.8**3) * w for a, w in zip(average[k], weights[k], strict=True)]
                    for k in weights
                }
            )
            reference.load_state_dict(
                {k: torch.tensor(v).view_as(reference.state_dict()[k]) for k, v in average.items()},
                strict=False,
            )
    for name, values in _flat(model).items():
        assert values == pytest.approx(average[name], abs=1e-6), name
        assert ema.shadow[name].flatten().tolist() == pytest.approx(values, abs=1e-7)


def test_ema_state_dict_resumes_exactly():
    batches = _batches(12)
    full = EMACallback(0.9, 2)
    model = _tiny_model()
    trainer = _train(model, full, batches[:6])
    resumed_model = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(full.state_dict(), buffer)
    buffer.seek(0)
    resumed = EMACallback(0.9, 2)
    resumed.load_state_dict(torch.load(buffer))
    # both continue from step 7 with the same optimizer-free SGD (fresh, no momentum)
    _train(model, full, batches[6:], first_step=7)
    _train(resumed_model, resumed, batches[6:], first_step=7)
    assert trainer.state.step == 6 and full.num_updates == resumed.num_updates == 6
    for name in full.shadow:
        assert torch.equal(full.shadow[name], resumed.shadow[name]), name


def test_averaged_weights_swaps_in_and_restores():
    model = _tiny_model()
    ema = EMACallback(0.5, 1)
    _train(model, ema, _batches(4))
    before = copy.deepcopy(model.state_dict())
    with ema.averaged_weights(model):
        assert torch.equal(model[0].weight, ema.shadow["0.weight"])
        assert torch.equal(model[1].running_mean, ema.shadow["1.running_mean"])
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_ema_warmup_needs_the_run_length():
    trainer = SimpleNamespace(model=_tiny_model(), state=TrainState())
    with pytest.raises(ValueError, match="total_steps"):
        EMACallback(0.95, 5, warmup_power=3.0).on_fit_start(trainer)
    assert EMACallback(0.95, 5, warmup_power=3.0).rho(50, 100) == pytest.approx(0.95**5 / 8)


# --- TTA ----------------------------------------------------------------------------------


@pytest.fixture
def small_net() -> SpeedNet:
    torch.manual_seed(0)
    model = SpeedNet(widths=(8, 16, 16))
    init_whitening(model, torch.randn(32, 3, 16, 16))
    model.train()
    model(torch.randn(16, 3, 16, 16))  # non-trivial running statistics
    return model.eval()


def test_tta_equals_the_explicit_average(small_net):
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        plain, mirrored = small_net(x), small_net(x.flip(-1))
        flip = 0.5 * plain + 0.5 * mirrored
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        up_left, down_right = padded[..., 0:16, 0:16], padded[..., 2:18, 2:18]
        translated = [0.5 * small_net(v) + 0.5 * small_net(v.flip(-1)) for v in (up_left, down_right)]
        flip_translate = 0.5 * flip + 0.25 * translated[0] + 0.25 * translated[1]
    assert torch.allclose(tta_predict(small_net, x, "none"), plain)
    assert torch.allclose(tta_predict(small_net, x, "flip"), flip, atol=1e-5)
    assert torch.allclose(tta_predict(small_net, x, "flip-translate"), flip_translate, atol=1e-5)
    assert not torch.allclose(flip, plain, atol=1e-3)  # the views do differ
    with pytest.raises(ValueError, match="TTA mode"):
        tta_predict(small_net, x, "rotate")


# --- whitening ----------------------------------------------------------------------------


def _correlated_images(count: int) -> torch.Tensor:
    g = _gen(5)
    base = torch.randn(count, 3, 12, 12, generator=g)
    mix = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.5, 0.5, 0.7]])
    mixed = torch.einsum("oc,nchw->nohw", mix, base)  # correlated channels
    return mixed + 0.5 * mixed.roll(1, dims=-1) + 0.3  # correlated neighbours, non-zero mean


def test_whitening_makes_patch_second_moment_diag_lambda_over_lambda_plus_eps():
    images = _correlated_images(200)
    conv = nn.Conv2d(3, 24, 2, bias=False)
    eps = 5e-4
    eigenvalues = init_whitening(conv, images, eps=eps)
    with torch.no_grad():
        out = conv(images).permute(1, 0, 2, 3).reshape(24, -1).double()  # (24, N * 11 * 11)
    second_moment = out @ out.T / out.shape[1]
    d = torch.diag(eigenvalues.double() / (eigenvalues.double() + eps))
    expected = torch.cat([torch.cat([d, -d], 1), torch.cat([-d, d], 1)])
    assert torch.allclose(second_moment, expected, atol=1e-4)
    # these eigenvalues are all > 0.1 = 200 eps: the first half is white to within 0.5 %
    assert eigenvalues[0] > eigenvalues[-1] > 0.1  # sorted, largest first
    assert torch.allclose(second_moment[:12, :12], torch.eye(12, dtype=torch.float64), atol=5e-3)


def test_whitening_from_uint8_with_mean_std_equals_normalised_floats():
    raw = torch.randint(0, 256, (40, 3, 10, 10), dtype=torch.uint8)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    floats = (raw.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    a, b = SpeedNet(), SpeedNet()
    init_whitening(a, raw, mean=mean, std=std)
    init_whitening(b, floats)
    assert torch.allclose(a.whiten.weight, b.whiten.weight, atol=1e-4)


def test_narrow_whitening_keeps_the_largest_components():
    images = _correlated_images(50)
    full, narrow = nn.Conv2d(3, 24, 2), nn.Conv2d(3, 8, 2)
    all_eigenvalues = init_whitening(full, images)
    top = init_whitening(narrow, images)
    assert torch.allclose(top, all_eigenvalues[:4])
    assert torch.allclose(narrow.weight[:4].abs(), full.weight[:4].abs(), atol=1e-5)
    assert torch.equal(narrow.weight[4:], -narrow.weight[:4])


# --- SpeedNet -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 28])
def test_speednet_output_shape(size):
    model = SpeedNet(num_classes=7)
    assert model(torch.randn(2, 3, size, size)).shape == (2, 7)


def test_speednet_structure_follows_airbench():
    model = SpeedNet()
    assert sum(p.numel() for p in model.parameters()) == 1_972_792  # airbench94: about 2M
    assert not model.whiten.weight.requires_grad and model.whiten.bias.requires_grad
    conv = model.blocks[0].convs[1].weight  # 64 -> 64: a full identity at init
    assert torch.equal(conv[:, :, 1, 1], torch.eye(64))
    assert conv.sum().item() == pytest.approx(64.0)
    first = model.blocks[1].convs[0].weight  # 64 -> 256: identity on the first 64 outputs
    assert torch.equal(first[:64, :, 1, 1], torch.eye(64)) and first[64:].abs().sum() > 0
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(not m.weight.requires_grad and m.eps == 1e-12 for m in norms)
    with pytest.raises(ValueError, match="at least 9x9"):
        model(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="whiten_width"):
        SpeedNet(whiten_width=30)


def test_speednet_residual_blocks_follow_airbench96():
    model = SpeedNet(widths=(128, 512, 512), depth=3, residual=True, bn_momentum=0.1)
    assert sum(p.numel() for p in model.parameters()) == 12_721_208  # airbench96's width: about 12.7M
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    block = model.blocks[1].eval()
    x = torch.randn(2, 128, 8, 8)
    stage = block.activation(block.norms[0](block.pool(block.convs[0](x))))
    inner = block.norms[1](block.convs[1](stage))
    inner = block.norms[2](block.convs[2](block.activation(inner)))
    assert torch.allclose(block(x), block.activation(inner + stage), atol=1e-6)  # GELU after the sum
    plain = SpeedNet(widths=(8, 8, 8), depth=3)
    assert not plain.blocks[0].residual
    with pytest.raises(ValueError, match="depth >= 2"):
        SpeedNet(depth=1, residual=True)


def test_speednet_reset_parameters_redraws_in_place():
    model = SpeedNet(widths=(8, 16, 16))
    init_whitening(model, torch.randn(16, 3, 16, 16))
    with torch.no_grad():
        model.whiten.bias.fill_(1.0)
        model.blocks[2].norms[1].running_mean.fill_(3.0)
    model.whiten.bias.requires_grad_(False)
    head = model.head.weight
    torch.manual_seed(1)
    model.reset_parameters()
    torch.manual_seed(1)
    fresh = SpeedNet(widths=(8, 16, 16))  # the same draws as a new model with the same seed
    assert model.head.weight is head and torch.equal(head, fresh.head.weight)
    assert model.whiten.bias.requires_grad and model.whiten.bias.abs().sum() == 0
    assert model.blocks[2].norms[1].running_mean.abs().sum() == 0
    assert torch.equal(model.blocks[1].convs[0].weight, fresh.blocks[1].convs[0].weight)


def test_whiten_bias_freeze_after_epochs():
    model, freeze = SpeedNet(), WhitenBiasFreeze(epochs=3)
    freeze.apply(model, 2)
    assert model.whiten.bias.requires_grad
    freeze.apply(model, 3)
    assert not model.whiten.bias.requires_grad


# --- schedule, loss, optimizer ------------------------------------------------------------


def test_speed_sgd_groups_and_weight_decay():
    model = SpeedNet(widths=(8, 16, 16))
    optimizer = speed_sgd(model, lr=11.5, momentum=0.85, weight_decay=0.0153, batch_size=512)
    norm, other = optimizer.param_groups
    bn_biases = {id(m.bias) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert {id(p) for p in norm["params"]} == bn_biases  # BN scales are frozen: not there
    assert id(model.whiten.weight) not in {id(p) for g in optimizer.param_groups for p in g["params"]}
    scale = 1024 * (1 + 1 / 0.15)
    assert other["lr"] == pytest.approx(11.5 / scale * 512)
    assert norm["lr"] == pytest.approx(64 * other["lr"])
    # airbench: the same decay per step, lr * wd, in both groups
    assert norm["lr"] * norm["weight_decay"] == pytest.approx(0.0153 * 512 / scale)
    assert other["lr"] * other["weight_decay"] == pytest.approx(0.0153 * 512 / scale)
    assert optimizer.defaults["nesterov"] and optimizer.defaults["momentum"] == 0.85
    no_decay = speed_sgd(model, decay_norm=False)
    assert no_decay.param_groups[0]["weight_decay"] == 0.0
    assert no_decay.param_groups[1]["weight_decay"] > 0


def test_speed_sgd_with_mean_loss_equals_airbench_summed_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 5))
    twin = copy.deepcopy(model)
    initial = model[3].weight.detach().clone()
    ours = speed_sgd(model, batch_size=16)
    # airbench94's own construction, for a summed loss
    kilostep_scale = 1024 * (1 + 1 / (1 - 0.85))
    lr, wd = 11.5 / kilostep_scale, 0.0153 * 16 / kilostep_scale
    norm = [p for n, p in twin.named_parameters() if n.startswith("1.")]
    rest = [p for n, p in twin.named_parameters() if not n.startswith("1.")]
    airbench = torch.optim.SGD(
        [
            {"params": norm, "lr": lr * 64, "weight_decay": wd / (lr * 64)},
            {"params": rest, "lr": lr, "weight_decay": wd / lr},
        ],
        momentum=0.85,
        nesterov=True,
    )
    g = _gen(0)
    for _ in range(4):
        x, y = (
            torch.randn(16, 3, 6, 6, generator=g),
            torch.randint(0, 5, (16,), generator=g),
        )
        for net, opt, reduction in ((model, ours, "mean"), (twin, airbench, "sum")):
            opt.zero_grad()
            F.cross_entropy(net(x), y, label_smoothing=0.2, reduction=reduction).backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(model[3].weight, initial, atol=1e-3)  # it did train


# --- compiled training (slow: the CPU compiler takes about a minute) ---------------------------


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None, reason="needs a C++ compiler")
def test_compiled_bf16_training_step_has_finite_gradients():
    # Regression: global pooling with torch.amax gave NaN gradients under compile + bf16 autocast.
    x, y = torch.randn(32, 3, 32, 32, generator=_gen(0)), torch.randint(0, 10, (32,), generator=_gen(1))
    torch.manual_seed(0)
    model = SpeedNet(widths=(16, 32, 32))
    init_whitening(model, x)
    eager = copy.deepcopy(model)
    losses = []
    for net in (torch.compile(model, dynamic=False), eager):
        with torch.autocast("cpu", torch.bfloat16):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        losses.append(loss.item())
    for (name, p), q in zip(model.named_parameters(), eager.parameters(), strict=True):
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name
            # bf16 rounding differs between the compiled and eager kernels: compare directions
            cosine = F.cosine_similarity(p.grad.flatten(), q.grad.flatten(), dim=0).item()
            assert cosine > 0.9, (name, cosine)
    assert losses[0] == pytest.approx(losses[1], rel=1e-2)
