"""summary(): parameter counts, FLOPs against FlopCounterMode, shapes, memory, modes."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from torchsmith.errors import UsageError
from torchsmith.report.model_summary import parse_shape, summary


class SmallConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


class ReusedBlock(nn.Module):
    """Calls `block` twice and returns a tuple and a dict: every call must count."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Linear(16, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        hidden = self.block(torch.relu(self.block(x)))
        return self.out(hidden), {"hidden": hidden}


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


def flop_counts(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}


CASES = [
    (mlp, torch.randn(4, 1, 28, 28)),
    (SmallConvNet, torch.randn(3, 3, 16, 16)),
    (ReusedBlock, torch.randn(5, 16)),
]


@pytest.mark.parametrize(("make", "x"), CASES)
def test_totals_match_parameters_and_flop_counter(make, x) -> None:
    torch.manual_seed(0)
    model = make()
    result = summary(model, x)
    expected = flop_counts(model, x)
    assert result.total_params == sum(p.numel() for p in model.parameters())
    assert sum(row.params for row in result.rows) == result.total_params
    assert result.total_flops == expected["Global"] > 0
    # per-module rows agree with FlopCounterMode's own per-module attribution,
    # which names modules "<RootType>.<qualified name>"
    root = type(model).__name__
    for row in result.rows:
        key = f"{root}.{row.name}" if row.name else root
        assert row.flops == expected.get(key, 0), row.name


def test_mlp_hand_counts() -> None:
    result = summary(mlp(), torch.zeros(2, 1, 28, 28))
    rows = {row.name: row for row in result.rows}
    assert rows["1"].params == 784 * 128 + 128
    assert rows["3"].params == 128 * 10 + 10
    assert rows["1"].flops == 2 * 2 * 784 * 128  # 2 * batch * in * out
    assert rows["1"].output_shape == "[2, 128]"
    assert rows[""].output_shape == "[2, 10]"
    assert result.total_flops == 2 * 2 * (784 * 128 + 128 * 10)


def test_reused_module_counts_every_call_and_walks_outputs() -> None:
    result = summary(ReusedBlock(), torch.zeros(5, 16))
    rows = {row.name: row for row in result.rows}
    assert rows["block"].calls == 2
    assert rows["block"].flops == 2 * (2 * 5 * 16 * 16)
    assert rows["block"].output_shape == "[5, 16] (2 calls)"
    assert rows[""].output_shape == "([5, 4], {hidden: [5, 16]})"


def test_shared_parameters_count_once_and_trainable_flags() -> None:
    model = SmallConvNet()
    model.features[0].requires_grad_(False)
    model.head.bias.requires_grad_(False)
    result = summary(model, torch.zeros(1, 3, 16, 16))
    rows = {row.name: row for row in result.rows}
    assert (rows["features.0"].trainable, rows["head"].trainable) == ("no", "partial")
    assert rows["features.2"].trainable == ""
    frozen = model.features[0].weight.numel() + model.features[0].bias.numel() + 10
    assert result.trainable_params == result.total_params - frozen

    tied = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    tied[1].weight = tied[0].weight
    tied_result = summary(tied, torch.zeros(1, 8))
    assert tied_result.total_params == 64 + 8 + 8
    assert sum(row.params for row in tied_result.rows) == tied_result.total_params


def test_modes_restored_and_no_grad() -> None:
    model = SmallConvNet().train()
    model.features[1].eval()  # a frozen BatchNorm inside a training model stays frozen
    before = model.features[1].running_mean.clone()
    summary(model, torch.randn(4, 3, 16, 16))
    assert model.training and model.head.training
    assert not model.features[1].training
    assert torch.equal(model.features[1].running_mean, before)
    assert all(p.grad is None for p in model.parameters())


def test_memory_estimate_scales_with_batch_size() -> None:
    model = mlp()
    small = summary(model, torch.zeros(2, 1, 28, 28))
    large = summary(model, torch.zeros(2, 1, 28, 28), batch_size=64)
    params = sum(p.numel() for p in model.parameters())
    assert large.memory.weights_bytes == 4 * params
    assert large.memory.gradients_bytes == 4 * params
    assert large.memory.optimizer_bytes == 8 * params
    # distinct outputs at batch 2: flatten is a view of the input (784), then 128,
    # 128 and 10 floats per sample, doubled for backward
    assert small.memory.activations_bytes == 2 * 2 * 4 * (784 + 128 + 128 + 10)
    assert large.memory.activations_bytes == 32 * small.memory.activations_bytes
    assert large.memory.total_bytes == 16 * params + large.memory.activations_bytes


def test_text_and_dict_forms() -> None:
    result = summary(SmallConvNet(), (3, 16, 16), batch_size=32)
    assert result.input_shapes == [[1, 3, 16, 16]]
    full = result.to_text()
    short = result.to_text(short=True)
    assert "features.1" in full and "BatchNorm2d" in full
    assert "features.1" not in short and "features" in short and "head" in short
    assert f"{result.total_params:,}" in short
    lines = full.splitlines()
    assert len({len(line) for line in lines[:2]}) == 1  # header as wide as the rule
    data = json.loads(json.dumps(result.to_dict()))
    assert data["total_flops"] == result.total_flops
    assert data["memory"]["batch_size"] == 32
    assert len(data["rows"]) == len(list(SmallConvNet().modules()))


def test_parse_shape() -> None:
    assert parse_shape("3x32x32") == (3, 32, 32)
    assert parse_shape("784") == (784,)
    assert parse_shape(" 1, 28, 28 ") == (1, 28, 28)
    for bad in ["", "3x", "3x-1", "axb", "0x4", "3.5x2"]:
        with pytest.raises(UsageError, match="3x32x32"):
            parse_shape(bad)


def test_bad_input_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"failed on an input of shape \[2, 5\]"):
        summary(mlp(), torch.zeros(2, 5))
    with pytest.raises(UsageError, match="example_input"):
        summary(mlp(), "3x32x32")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="batch_size"):
        summary(mlp(), (1, 28, 28), batch_size=0)


def test_preflight_and_summary_look_at_one_training_batch() -> None:
    # not an evaluation batch (1,000 rows by default): pre-flight's two forward passes on one
    # cost as much as ten training steps of a convnet on 64x64 photos
    from torchsmith import Trainer
    from torchsmith.app import first_batch
    from torchsmith.data.bundle import DataBundle, DataInfo

    data = (torch.randn(300, 4), torch.randint(0, 2, (300,)))
    trainer = Trainer(nn.Linear(4, 2), batch_size=16, eval_batch_size=1000, progress="none", device="cpu")
    inputs, targets = first_batch(trainer, DataBundle(data, None, None, DataInfo("table", 2, (4,))))
    assert inputs.shape == (16, 4) and targets.shape == (16,)
    assert torch.equal(inputs, data[0][:16])  # the first rows, in order and unaugmented
