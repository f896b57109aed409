from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_image_tree

from torchsmith.cli.main import main

TUTORIAL_SIMPLENET = """
import torch
import torch.nn as nn

class SimpleNet(nn.Module):
    def __init__(self):
        super(SimpleNet, self).__init__()
        self.fc1 = nn.Linear(784, 128)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = x.view(-1, 784)
        x = self.relu(self.fc1(x))
        x = self.fc2(x)
        return x
"""

TUTORIAL_CONVNET = """
import torch
import torch.nn as nn
import torch.nn.functional as F

class ConvNet(nn.Module):
    def __init__(self):
        super(ConvNet, self).__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(128 * 8 * 8, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = self.pool(F.relu(self.conv3(x)))
        x = x.view(-1, 128 * 8 * 8)
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        return x
"""


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_train_writes_the_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--max-steps", "60", "--run-dir", str(run), "--quiet"], capsys)
    assert code == 0, err
    for name in (
        "config.yaml",
        "metrics.csv",
        "model.safetensors",
        "summary.json",
        "preprocessing.json",
        "model_summary.txt",
        "report.html",
        "predictions.safetensors",
    ):
        assert (run / name).is_file(), name
    assert list((run / "tb").iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 60
    assert 0.5 < summary["test"]["accuracy"] <= 1.0
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"test accuracy {summary['test']['accuracy']:.4f}")
    from safetensors.torch import load_file

    weights = load_file(str(run / "model.safetensors"))
    assert sorted(weights) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    assert weights["fc1.weight"].shape == (128, 784)


def test_config_replays_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(["train", "--max-steps", "40", "--lr", "0.003", "--run-dir", str(first), "--quiet"]) == 0
    assert main(["train", "--config", str(first / "config.yaml"), "--run-dir", str(second), "--quiet"]) == 0
    a = json.loads((first / "summary.json").read_text())
    b = json.loads((second / "summary.json").read_text())
    assert a["test"] == b["test"] and a["steps"] == b["steps"] == 40


@pytest.mark.parametrize(
    "args,message",
    [
        (["--batch-size", "0"], "--batch-size (train.batch_size) must be a positive integer, got 0"),
        (["--epochs", "-1"], "--epochs (train.max_epochs) must be a positive integer, got -1"),
        (["--lr", "0"], "--lr (optim.lr) must be positive"),
        (["--model", "simplnet"], "Did you mean 'simplenet'"),
        (["--data", "mnsit"], "Did you mean 'mnist'"),
        (["--set", "optim.lrr=1"], "Did you mean 'lr'"),
        (["--config", "missing.yaml"], "does not exist"),
        (["--model-args", "{bad"], "--model-args must be a JSON object"),
        (["--optimizer", "adamm"], "Did you mean 'adam"),
        (["--recipe", "mnist-fats"], "unknown recipe"),
    ],
)
def test_usage_errors_exit_2_without_traceback(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["train", "--run-dir", str(tmp_path / "r"), "--max-steps", "1", *args], capsys)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_tutorial_simplenet_trains_unchanged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tutorial.py"
    path.write_text(TUTORIAL_SIMPLENET)
    run = tmp_path / "run"
    code, _, err = run_cli(
        ["train", "--model", f"{path}:SimpleNet", "--epochs", "1", "--run-dir", str(run), "--quiet"], capsys
    )
    assert code == 0, err
    assert json.loads((run / "summary.json").read_text())["test"]["accuracy"] > 0.85


def test_tutorial_convnet_on_cifar_shapes_stops_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tutorial.py"
    path.write_text(TUTORIAL_CONVNET)
    write_image_tree(tmp_path / "images", classes=10, per_class=8, size=32)
    code, _, err = run_cli(
        [
            "train",
            "--model",
            f"{path}:ConvNet",
            "--data",
            f"imagefolder:{tmp_path / 'images'}",
            "--run-dir",
            str(tmp_path / "run"),
        ],
        capsys,
    )
    assert code == 2
    assert "fc1" in err and "2048" in err and "8192" in err and "batch" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_every_recipe_is_a_valid_config() -> None:
    from torchsmith.config import RunConfig
    from torchsmith.recipes import RECIPES, recipe_config

    for name in RECIPES:
        assert RunConfig.from_dict(recipe_config(name), source=f"recipe {name}").model.name


def test_cifar10_accurate_recipe_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Every part on a tiny CIFAR-shaped tree: residual SpeedNet from the recipe's arguments, whitening
    # init, the translate-flip-cutout policy, airbench SGD, lookahead and TTA in the final evaluation.
    for split, count in (("train", 6), ("test", 2)):
        write_image_tree(tmp_path / "cifar" / split, classes=10, per_class=count, size=32)
    run = tmp_path / "run"
    code, _, err = run_cli(
        [
            *("train", "--recipe", "cifar10-accurate", "--data-dir", str(tmp_path / "cifar")),
            *("--max-steps", "2", "--batch-size", "16", "--run-dir", str(run), "--quiet"),
        ],
        capsys,
    )
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    right = summary["test"]["accuracy"] * 20  # the 20 test images, each counted once (with TTA)
    assert summary["status"] == "completed" and abs(right - round(right)) < 1e-6 and 0 <= right <= 20
    config = (run / "config.yaml").read_text()
    assert "flip-translate4-cutout12" in config and "residual: true" in config


def test_list_commands(capsys: pytest.CaptureFixture[str]) -> None:
    for what, expected in (("models", "convnet"), ("data", "imagefolder:PATH"), ("recipes", "mnist-sample")):
        code, out, _ = run_cli(["list", what], capsys)
        assert code == 0 and expected in out


def test_failure_during_training_keeps_the_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.py"
    path.write_text(
        "import torch\nfrom torch import nn\nclass Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(784, 10)\n"
        "        self.calls = 0\n"
        "    def forward(self, x):\n        self.calls += 1\n        out = self.fc(x.flatten(1))\n"
        "        return out * float('nan') if self.calls > 20 else out\n"
    )
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--model", f"{path}:Net", "--run-dir", str(run), "--quiet"], capsys)
    assert code == 1 and "non-finite" in err.lower() and "Traceback" not in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["nan_events"]
    assert (run / "config.yaml").is_file() and (run / "metrics.csv").is_file()


def test_module_entry_point_and_version() -> None:
    result = subprocess.run([sys.executable, "-m", "torchsmith", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("torchsmith ")
