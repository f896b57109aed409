"""Tests for the pre-flight check, NaN/Inf localisation, diagnosis and the data scan."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchsmith.doctor import data_scan as doctor_data
from torchsmith.doctor.data_scan import scan_data, tensor_stats
from torchsmith.doctor.diagnosis import NanReport, diagnose
from torchsmith.doctor.nan_replay import localize_nonfinite
from torchsmith.doctor.preflight import Finding, preflight, raise_for_errors
from torchsmith.errors import UsageError

CE = nn.CrossEntropyLoss()


class TutorialConvNet(nn.Module):
    """The classic bug: sized for 64x64 inputs, fed 32x32 CIFAR images."""

    def __init__(self, flatten: bool = False, lazy: bool = False) -> None:
        super().__init__()
        self.flatten = flatten
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.LazyLinear(128) if lazy else nn.Linear(128 * 8 * 8, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = self.pool(F.relu(self.conv3(x)))
        x = torch.flatten(x, 1) if self.flatten else x.view(-1, 128 * 8 * 8)
        return self.fc2(F.relu(self.fc1(x)))


class Mlp(nn.Module):
    def __init__(self, in_features: int = 4, out_features: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, 16)
        self.norm = nn.BatchNorm1d(16)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(16, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(F.relu(self.norm(self.fc(x)))))


def assert_no_hooks(model: nn.Module) -> None:
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module._backward_hooks and not module._backward_pre_hooks
    for param in model.parameters():
        assert not param._backward_hooks


def snapshot(model: nn.Module) -> dict[str, torch.Tensor | None]:
    state = {name: value.clone() for name, value in model.state_dict().items()}
    for name, param in model.named_parameters():
        state[f"{name}.grad"] = None if param.grad is None else param.grad.clone()
    return state


def raw_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes, so NaN == NaN and the comparison is bitwise."""
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor | None]) -> None:
    after = snapshot(model)
    assert after.keys() == before.keys()
    for name, value in before.items():
        if value is None:
            assert after[name] is None, name
        else:
            assert torch.equal(raw_bytes(after[name]), raw_bytes(value)), name
    assert_no_hooks(model)


def images(batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=generator)
    return x, torch.randint(0, 10, (batch,), generator=generator)


# ---------------------------------------------------------------- pre-flight


def test_tutorial_convnet_merged_batch_is_explained() -> None:
    torch.manual_seed(0)
    model = TutorialConvNet()
    x, y = images(64, 32)
    findings = preflight(model, x, y, num_classes=10, loss_fn=CE)
    assert [f.code for f in findings] == ["batch-dim-changed"]
    message = findings[0].message
    assert message.startswith(
        "`TutorialConvNet.fc1` expects 8192 input features but received 2048 features per sample: "
        "`pool` returned (64, 128, 4, 4), and a `view`/`reshape` in `TutorialConvNet.forward` before "
        "`fc1` merged the batch dimension into the features (64 samples became 16 rows of 8192)"
    )
    assert "`torch.flatten(x, 1)`" in message
    assert "`nn.Linear(128*4*4, 128)`" in message and "`nn.LazyLinear(128)`" in message
    with pytest.raises(UsageError, match="fc1") as raised:
        raise_for_errors(findings)
    assert raised.value.exit_code == 2
    assert_no_hooks(model)


def test_functional_pooling_still_counts_features_per_sample() -> None:
    class FunctionalPoolNet(TutorialConvNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            x = F.max_pool2d(F.relu(self.conv3(x)), 2)  # no module sees (B, 128, 4, 4)
            return self.fc2(F.relu(self.fc1(x.view(-1, 128 * 8 * 8))))

    torch.manual_seed(0)
    x, y = images(8, 32)
    findings = preflight(FunctionalPoolNet(), x, y, num_classes=10, loss_fn=CE)
    message = findings[0].message
    assert "expects 8192 input features but received 2048 features per sample" in message
    assert "`conv3` returned (8, 128, 8, 8)" in message
    assert "`nn.Linear(2048, 128)`" in message
    x, y = images(6, 32)
    message = preflight(FunctionalPoolNet(), x, y, num_classes=10, loss_fn=CE)[0].message
    assert "each sample has 2048 features" in message and "`nn.Linear(2048, 128)`" in message


def test_tutorial_convnet_fits_64x64_images() -> None:
    torch.manual_seed(0)
    model = TutorialConvNet()
    x, y = images(8, 64)
    assert preflight(model, x, y, num_classes=10, loss_fn=CE) == []
    assert_no_hooks(model)


def test_suggested_fix_passes_and_materialises_lazy_layer() -> None:
    torch.manual_seed(0)
    model = TutorialConvNet(flatten=True, lazy=True)
    x, y = images(8, 32)
    assert preflight(model, x, y, num_classes=10, loss_fn=CE) == []
    assert model.fc1.in_features == 2048


def test_indivisible_batch_view_error_is_explained() -> None:
    torch.manual_seed(0)
    model = TutorialConvNet()
    x, y = images(6, 32)  # 6 * 2048 values cannot form rows of 8192: view raises
    findings = preflight(model, x, y, num_classes=10, loss_fn=CE)
    assert [f.code for f in findings] == ["forward-failed"]
    message = findings[0].message
    assert "`TutorialConvNet.forward` failed after `pool` returned (6, 128, 4, 4)" in message
    assert "rows of 8192 values (what `TutorialConvNet.fc1` expects)" in message
    assert "each sample has 2048 features" in message
    assert "merges the batch dimension" in message
    assert "`torch.flatten(x, 1)`" in message and "`nn.Linear(128*4*4, 128)`" in message
    assert_no_hooks(model)


def test_linear_shape_crash_names_the_layer() -> None:
    torch.manual_seed(0)
    model = TutorialConvNet(flatten=True)  # keeps the batch, but fc1 still wants 8192
    x, y = images(4, 32)
    findings = preflight(model, x, y, num_classes=10, loss_fn=CE)
    assert [f.code for f in findings] == ["forward-failed"]
    message = findings[0].message
    assert "`TutorialConvNet.fc1` (Linear) expects 8192 input features but received 2048" in message
    assert "mat1 and mat2 shapes cannot be multiplied" in message
    assert "`nn.Linear(128*4*4, 128)`" in message
    assert_no_hooks(model)


def test_module_that_changes_batch_dim_is_named() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.Flatten(0), nn.Unflatten(0, (-1, 12)))
    labels = torch.zeros(8, dtype=torch.long)
    findings = preflight(model, torch.randn(8, 4), labels, num_classes=12, loss_fn=CE)
    assert [f.code for f in findings] == ["batch-dim-changed"]
    assert "`Sequential.1` (Flatten) received 8 samples (8, 6) but returned (48,)" in findings[0].message


def test_output_width_mismatch_names_both_counts() -> None:
    torch.manual_seed(0)
    model = Mlp(out_features=5)
    findings = preflight(model, torch.randn(8, 4), torch.arange(8), num_classes=10, loss_fn=CE)
    assert [f.code for f in findings] == ["output-width"]
    message = findings[0].message
    assert "outputs 5 values per sample but the data has 10 classes" in message
    assert "`Mlp.out` is Linear(in_features=16, out_features=5" in message


def test_labels_out_of_range_and_wrong_dtype() -> None:
    torch.manual_seed(0)
    model = Mlp()
    labels = torch.tensor([0, 3, 10, 9, 10, 1, 2, 4])
    findings = preflight(model, torch.randn(8, 4), labels, num_classes=10, loss_fn=CE)
    assert [f.code for f in findings] == ["label-range"]
    assert "[0, 10)" in findings[0].message
    assert "labels from 0 to 10" in findings[0].message
    assert "2 of 8 samples" in findings[0].message
    findings = preflight(model, torch.randn(8, 4), labels.float(), num_classes=10, loss_fn=CE)
    assert [f.code for f in findings] == ["label-dtype"]
    assert "float32" in findings[0].message


def test_high_first_loss_is_a_warning_and_nan_loss_an_error() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 10)
    x, y = torch.randn(16, 4) * 255, torch.randint(0, 10, (16,))
    findings = preflight(model, x, y, num_classes=10, loss_fn=CE)
    assert [(f.level, f.code) for f in findings] == [("warning", "loss-high")]
    assert "ln(10) = 2.3" in findings[0].message
    raise_for_errors(findings)  # warnings do not raise
    x[3, 1] = float("nan")
    findings = preflight(model, x, y, num_classes=10, loss_fn=CE)
    assert [(f.level, f.code) for f in findings] == [("error", "loss-nonfinite")]


def test_preflight_restores_mode_buffers_and_rng() -> None:
    torch.manual_seed(0)
    model = Mlp()
    model.train()
    before = snapshot(model)
    x = torch.randn(8, 4) * 3 + 1
    rng = torch.get_rng_state()
    findings = preflight(model, x, torch.arange(8), num_classes=10, loss_fn=CE)
    assert [f.level for f in findings] == []
    assert model.training
    assert torch.equal(torch.get_rng_state(), rng)
    assert_unchanged(model, before)  # running stats and num_batches_tracked included
    model.eval()
    preflight(model, torch.randn(8, 4), torch.arange(8), num_classes=10, loss_fn=CE)
    assert not model.training


def test_sequence_task_checks_vocab_and_ignores_padding() -> None:
    torch.manual_seed(0)

    class CharModel(nn.Module):
        def __init__(self, vocab: int, out: int) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, 8)
            self.head = nn.Linear(8, out)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(tokens))  # (B, T, V)

    def sequence_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    tokens = torch.randint(0, 20, (4, 7))
    targets = torch.randint(0, 20, (4, 7))
    targets[:, -2:] = -100  # padding
    args = {"task": "sequence", "num_classes": 20, "loss_fn": sequence_loss}
    assert preflight(CharModel(20, 20), tokens, targets, **args) == []
    findings = preflight(CharModel(20, 18), tokens, targets, **args)
    assert [f.code for f in findings] == ["output-width"]
    assert "18 values per position but the data has 20 tokens" in findings[0].message
    with pytest.raises(UsageError, match="task must be one of"):
        preflight(
            CharModel(20, 20),
            tokens,
            targets,
            task="ranking",
            num_classes=20,
            loss_fn=CE,
        )


def test_soft_labels_are_accepted() -> None:
    torch.manual_seed(0)
    probabilities = torch.softmax(torch.randn(8, 10), dim=1)  # mixup-style targets
    x = torch.randn(8, 4)
    assert preflight(Mlp(), x, probabilities, num_classes=10, loss_fn=CE) == []


def test_seq_first_lstm_is_not_blamed_for_its_time_dimension() -> None:
    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(30, 8)
            self.lstm = nn.LSTM(8, 16)  # batch_first=False: (T, B, E)
            self.fc = nn.Linear(16, 5)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            out, _ = self.lstm(self.embed(tokens).transpose(0, 1))  # (T, B, 16)
            return self.fc(out.reshape(-1, 16))  # forgot to go back to (B, ...)

    tokens = torch.randint(0, 30, (4, 6))
    findings = preflight(Tagger(), tokens, torch.arange(4), num_classes=5, loss_fn=CE)
    assert [f.code for f in findings] == ["batch-dim-changed"]
    message = findings[0].message
    assert "`Tagger.fc` (Linear) received (24, 16)" in message
    assert "`lstm` returned (6, 4, 16)" in message and "before `fc`" in message


# ---------------------------------------------------------------- NaN localisation


class LogLayer(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


class LogModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.head = LogLayer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(x))


class L2Length(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((x * x).sum(dim=1, keepdim=True))  # d/dx is NaN at x == 0


class LengthModel(nn.Module):
    def __init__(self, inplace_relu: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4, bias=False)
        self.act = nn.ReLU(inplace=True) if inplace_relu else nn.Identity()
        self.norm = L2Length()
        self.head = nn.Linear(1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.act(self.fc(x))))


def prepared(model: nn.Module) -> dict[str, torch.Tensor | None]:
    """Give some parameters a .grad (others stay None) and snapshot everything."""
    params = list(model.parameters())
    for param in params[::2]:
        param.grad = torch.randn_like(param)
    return snapshot(model)


def rng_states(device: torch.device) -> list[torch.Tensor]:
    states = [torch.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return states


def localize(model, loss_fn, x, y, **kwargs) -> NanReport:
    """localize_nonfinite, checking it leaves weights, .grad, hooks and RNG alone."""
    before = prepared(model)
    rng = rng_states(x.device)
    report = localize_nonfinite(model, loss_fn, x, y, step=kwargs.pop("step", 7), epoch=1, **kwargs)
    assert_unchanged(model, before)
    assert all(map(torch.equal, rng_states(x.device), rng))
    json.dumps(report.to_dict(), allow_nan=False)  # strict JSON
    assert report.cause in report.to_text()
    return report


def test_nan_in_one_input_sample_maps_to_dataset_index() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(6, 4), torch.randint(0, 10, (6,))
    x[4, 2] = float("nan")
    indices = torch.tensor([50, 51, 52, 53, 54, 55])
    report = localize(Mlp(), CE, x, y, sample_indices=indices)
    assert (report.stage, report.positions, report.samples) == ("input", [4], [54])
    assert report.cause == "non-finite input data"
    assert "[54]" in report.advice[0] and "torchsmith doctor data" in report.advice[1]


def test_forward_nan_names_the_user_submodule() -> None:
    torch.manual_seed(0)
    model = LogModel()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    report = localize(model, CE, x, y)
    assert (report.stage, report.module, report.module_type) == (
        "forward",
        "head",
        "LogLayer",
    )
    assert report.after == "fc"
    assert report.stats["input"]["nan"] == 0 and report.stats["input"]["inf"] == 0
    expected_nan = int((model.fc(x) < 0).sum())
    assert report.stats["output"]["nan"] == expected_nan > 0
    assert report.positions == sorted(set((model.fc(x) < 0).nonzero()[:, 0].tolist()))
    assert report.cause == "forward NaN in head"
    assert "clamp_min" in report.advice[1]
    assert "`head` (LogLayer)" in report.to_text()


@pytest.mark.parametrize("inplace_relu", [False, True])
def test_backward_only_nan_names_the_module(inplace_relu: bool) -> None:
    torch.manual_seed(0)
    model = LengthModel(inplace_relu)
    x, y = torch.randn(5, 4).abs(), torch.randint(0, 3, (5,))
    with torch.no_grad():
        model.fc.weight.abs_()  # positive outputs: the in-place ReLU keeps them
    x[2] = 0.0  # fc gives a zero row: sqrt(0) is fine forward, NaN backward
    report = localize(model, CE, x, y)
    assert (report.stage, report.module, report.module_type) == (
        "backward",
        "norm",
        "L2Length",
    )
    assert report.detail == "gradient w.r.t. its input"
    assert report.stats["grad_output"]["nan"] == 0 and report.stats["grad"]["nan"] > 0
    assert report.cause == "backward-only non-finite in norm"
    assert "eps" in report.advice[1]


class SqrtInPlace(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sqrt_()


def test_backward_nan_in_an_in_place_module_is_named() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4, bias=False), SqrtInPlace(), nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight.abs_()
    x, y = torch.rand(5, 4), torch.randint(0, 3, (5,))
    x[1] = 0.0  # sqrt(0) = 0 forward, infinite slope backward
    report = localize(model, CE, x, y)
    assert (report.stage, report.module, report.module_type) == (
        "backward",
        "1",
        "SqrtInPlace",
    )
    assert report.stats["grad"]["inf"] > 0 and report.stats["grad_output"]["inf"] == 0


def test_infinite_loss_on_finite_outputs() -> None:
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], [200.0, 0.0], [-200.0, 0.0]]))
        model.bias.zero_()

    def custom_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(torch.log(torch.softmax(logits, dim=1)), targets)

    x, y = torch.ones(4, 2), torch.tensor([2, 1, 2, 0])  # p(class 2) underflows to 0
    report = localize(model, custom_loss, x, y)
    assert report.stage == "loss" and report.loss == math.inf
    assert report.stats["output"]["nan"] == 0 and report.stats["output"]["inf"] == 0
    assert report.cause == "non-finite loss"
    assert "F.cross_entropy" in report.advice[1]
    assert report.to_dict()["loss"] == "inf"


def test_exploding_gradient_history_suggests_lower_lr() -> None:
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.fill_(1e38)  # weights after a divergence: the forward overflows
    history = [{"step": s, "loss": 1.0 + s, "grad_norm": 10.0 * 4**s, "lr": 0.5} for s in range(6)]
    x, y = torch.full((4, 4), 10.0), torch.tensor([0, 1, 2, 0])
    report = localize(model, CE, x, y, history=history)
    assert report.stage == "forward" and report.stats["output"]["inf"] > 0
    assert report.cause == "exploding gradient"
    assert "`--lr 0.05` (it was 0.5)" in report.advice[0]
    assert "--clip-grad-norm 1.0" in report.advice[1]
    assert report.history[-1] == {
        "step": 5,
        "loss": 6.0,
        "grad_norm": 10240.0,
        "lr": 0.5,
    }


def test_fp16_overflow_is_recognised() -> None:
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.fill_(3e4)  # outputs 1.2e5: finite in fp32, above fp16's 65504
    x, y = torch.ones(4, 4), torch.tensor([0, 1, 2, 0])
    report = localize(model, CE, x, y, precision="fp16")
    assert report.stage == "forward" and report.fp32_finite is True
    assert report.cause == "fp16 overflow"
    assert "--precision bf16" in report.advice[1]
    assert localize(model, CE, x, y, precision="fp32").cause == "not reproduced"


def test_nonfinite_weights_and_dropout_replay_leave_state_alone() -> None:
    torch.manual_seed(0)
    model = Mlp()
    x = torch.randn(8, 4)
    report = localize(model, CE, x, torch.arange(8))  # dropout, BatchNorm: train mode
    assert report.stage == "none" and report.cause == "not reproduced"
    assert model.training
    with torch.no_grad():
        model.norm.running_var[3] = float("nan")
    report = localize(model, CE, torch.randn(8, 4), torch.arange(8))
    assert report.cause == "non-finite parameters"
    assert report.bad_parameters == ["norm.running_var"]


def test_diagnose_priorities_and_history_rules() -> None:
    flat = [{"step": s, "loss": 1.0, "grad_norm": 2.0} for s in range(8)]
    report = NanReport(
        step=8,
        epoch=0,
        stage="forward",
        module="head",
        module_type="LogLayer",
        history=flat,
    )
    assert diagnose(report)[0] == "forward NaN in head"
    report.history = [*flat, {"step": 8, "loss": 1.0, "grad_norm": 5e4}]  # huge norm
    cause, advice = diagnose(report)
    assert cause == "exploding gradient" and "10x smaller `--lr`" in advice[0]
    report.stage, report.module = "backward", None
    report.history = []
    assert diagnose(report)[0] == "backward-only non-finite in the loss function"


# ---------------------------------------------------------------- data scan


def test_scan_data_finds_every_problem() -> None:
    inputs = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    inputs[1, 0] = float("nan")
    inputs[2] = 7.0  # constant
    inputs[5] = inputs[3]  # duplicate of 3, with another label
    labels = torch.tensor([0, 1, 2, 1, 2, 7])
    report = scan_data(inputs, labels, num_classes=3)
    assert report.nonfinite == [1] and report.constant == [2]
    assert report.duplicate_groups == [[3, 5]]
    assert report.conflicting_duplicates == [[3, 5]]
    assert report.label_out_of_range == [5]
    assert (report.label_min, report.label_max) == (0, 7)
    assert report.class_counts == [1, 2, 2] and report.imbalance_ratio == 2.0
    assert report.has_errors
    text = report.to_text()
    assert "NaN/Inf inputs: 1" in text
    assert "outside [0, 3) (found min 0, max 7) in samples: 5" in text
    saved = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert saved["duplicate_groups"] == [[3, 5]] and saved["has_errors"] is True
    clean = scan_data(torch.randn(6, 4), torch.tensor([0, 0, 0, 0, 0, 1]), num_classes=3)
    assert not clean.has_errors and clean.missing_classes == [2]
    assert clean.imbalance_ratio is None


def test_duplicates_exact_on_larger_uint8_data() -> None:
    generator = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (3000, 1, 28, 28), dtype=torch.uint8, generator=generator)
    data[2999] = data[10]
    data[1500] = data[10]
    data[7] = data[8]
    data[9, 0, 0, 0] = data[8, 0, 0, 0] ^ 1  # one byte away from a duplicate: not one
    data[9, 0, 1:] = data[8, 0, 1:]
    data[9, 0, 0, 1:] = data[8, 0, 0, 1:]
    assert doctor_data.duplicate_groups(data) == [[7, 8], [10, 1500, 2999]]


def test_duplicates_survive_hash_collisions(monkeypatch: pytest.MonkeyPatch) -> None:
    def colliding(flat: torch.Tensor) -> torch.Tensor:
        return torch.zeros(flat.shape[0], dtype=torch.int64)  # one bucket for all rows

    monkeypatch.setattr(doctor_data, "_row_hashes", colliding)
    rows = torch.tensor([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0], [5.0, 6.0], [3.0, 4.0]])
    assert doctor_data.duplicate_groups(rows) == [[0, 2], [1, 4]]


def test_tensor_stats_ignore_nonfinite_values() -> None:
    stats = tensor_stats(torch.tensor([1.0, float("nan"), 3.0, float("inf"), -float("inf")]))
    assert stats == {
        "shape": [5],
        "dtype": "float32",
        "min": 1.0,
        "max": 3.0,
        "mean": 2.0,
        "nan": 1,
        "inf": 2,
    }
    assert Finding("error", "x", "m").to_dict() == {
        "level": "error",
        "code": "x",
        "message": "m",
    }


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_doctor_on_cuda_keeps_cuda_rng_and_finds_fp16_overflow() -> None:
    device = torch.device("cuda")
    torch.manual_seed(0)
    x, y = images(64, 32)
    findings = preflight(
        TutorialConvNet().to(device),
        x.to(device),
        y.to(device),
        num_classes=10,
        loss_fn=CE,
    )
    assert [f.code for f in findings] == ["batch-dim-changed"]
    assert "2048" in findings[0].message
    model = nn.Linear(4, 3).to(device)
    with torch.no_grad():
        model.weight.fill_(3e4)
    x, y = torch.ones(4, 4, device=device), torch.tensor([0, 1, 2, 0], device=device)
    report = localize(model, CE, x, y, precision="fp16")
    assert report.cause == "fp16 overflow" and report.fp32_finite is True
    model = Mlp().to(device)  # dropout draws from the CUDA generator
    report = localize(model, CE, torch.randn(8, 4, device=device), torch.arange(8, device=device))
    assert report.cause == "not reproduced"
