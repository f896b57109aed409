from __future__ import annotations

import pytest
import torch

from torchsmith.data.bundle import DataInfo
from torchsmith.errors import UsageError
from torchsmith.models import ConvLayer
from torchsmith.models.registry import build_model, load_user_class
from torchsmith.models.vision import ConvNet, SimpleNet

MNIST = DataInfo(modality="image", num_classes=10, input_shape=(1, 28, 28))
CIFAR = DataInfo(modality="image", num_classes=10, input_shape=(3, 32, 32))


def test_simplenet_is_784_128_10() -> None:
    model = build_model("simplenet", MNIST)
    assert isinstance(model, SimpleNet)
    assert (model.fc1.in_features, model.fc1.out_features, model.fc2.out_features) == (784, 128, 10)
    assert sum(p.numel() for p in model.parameters()) == 784 * 128 + 128 + 128 * 10 + 10


@pytest.mark.parametrize("info,flat", [(MNIST, 128 * 3 * 3), (CIFAR, 128 * 4 * 4)])
def test_convnet_sizes_its_flatten_from_the_input(info: DataInfo, flat: int) -> None:
    model = build_model("convnet", info)
    assert isinstance(model, ConvNet) and model.fc1.in_features == flat
    batch = torch.zeros(5, *info.input_shape)
    assert model(batch).shape == (5, 10)  # the batch dimension is kept


def test_conv_layer_block() -> None:
    layer = ConvLayer(3, 8, kernel_size=3, stride=2, padding=1)
    out = layer(torch.randn(4, 3, 16, 16))
    assert out.shape == (4, 8, 8, 8) and (out >= 0).all()
    assert [type(m).__name__ for m in layer.children()] == ["Conv2d", "BatchNorm2d", "ReLU"]


def test_model_args_override_and_bad_args() -> None:
    assert build_model("simplenet", MNIST, {"hidden_dim": 32}).fc1.out_features == 32
    with pytest.raises(UsageError, match="bad --model-args for simplenet"):
        build_model("simplenet", MNIST, {"width": 3})


def test_unknown_model_suggests() -> None:
    with pytest.raises(UsageError, match="Did you mean 'convnet'"):
        build_model("convnett", MNIST)


def test_user_file_class(tmp_path) -> None:
    path = tmp_path / "nets.py"
    path.write_text(
        "from torch import nn\nclass Tiny(nn.Module):\n    def __init__(self, width=4):\n"
        "        super().__init__()\n        self.fc = nn.Linear(784, width)\n"
        "    def forward(self, x):\n        return self.fc(x.flatten(1))\n"
    )
    model = build_model(f"{path}:Tiny", MNIST, {"width": 7})
    assert model.fc.out_features == 7
    with pytest.raises(UsageError, match=r"has no class 'Tinny'\. Did you mean 'Tiny'"):
        load_user_class(f"{path}:Tinny")
    with pytest.raises(UsageError, match="could not build"):
        build_model(f"{path}:Tiny", MNIST, {"depth": 2})


def test_user_file_syntax_error_shows_file_and_line(tmp_path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("import torch\n\nclass Net(torch.nn.Module:\n    pass\n")
    with pytest.raises(UsageError, match=r"syntax error in .*broken.py, line 3"):
        load_user_class(f"{path}:Net")
    with pytest.raises(UsageError, match="does not exist"):
        load_user_class(f"{tmp_path}/nope.py:Net")


def test_package_module_class() -> None:
    assert load_user_class("torchsmith.models.vision:ConvNet") is ConvNet
    with pytest.raises(UsageError, match="cannot import module"):
        load_user_class("no_such_package.nets:Net")
