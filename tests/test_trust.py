"""A run or config made elsewhere never imports the user code it names without consent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli

MODEL_FILE = """
from pathlib import Path

import torch
from torch import nn

with open(Path(__file__).with_suffix(".imports"), "a") as marker:  # counts each import of this file
    marker.write("x")


class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.fc = nn.Linear(28 * 28, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(x, 1))
"""


def imports(model_file: Path) -> int:
    marker = model_file.with_suffix(".imports")
    return len(marker.read_text()) if marker.is_file() else 0


@pytest.fixture(scope="module")
def user_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from torchsmith.cli.main import main

    folder = tmp_path_factory.mktemp("trust")
    model_file = folder / "nets.py"
    model_file.write_text(MODEL_FILE)
    run = folder / "run"
    args = ["train", "--model", f"{model_file}:Net", "--max-steps", "3", "--checkpoint-every", "3"]
    assert main([*args, "--run-dir", str(run), "--quiet"]) == 0
    return run, model_file


@pytest.mark.parametrize(
    "command",
    [
        ["evaluate", "{run}"],
        ["predict", "{run}", "{image}"],
        ["export", "{run}", "--format", "safetensors"],
        ["train", "--config", "{run}/config.yaml", "--run-dir", "{tmp}/replay", "--max-steps", "1"],
        ["train", "--run-dir", "{run}", "--resume", "--max-steps", "4"],
        ["lr-find", "--config", "{run}/config.yaml", "--steps", "3"],
    ],
    ids=["evaluate", "predict", "export", "train-config", "resume", "lr-find"],
)
def test_a_replayed_config_naming_user_code_is_refused_without_consent(
    user_run: tuple[Path, Path], command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, model_file = user_run
    image = tmp_path / "digit.png"
    args = [a.format(run=run, image=image, tmp=tmp_path) for a in command]
    before = imports(model_file)
    code, _, err = run_cli(args, capsys)
    assert code == 2, err
    assert "--trust-model-code" in err and str(model_file) in err
    assert imports(model_file) == before  # the file never ran


def test_trusted_replay_imports_the_code_and_the_hash_was_recorded(
    user_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from torchsmith.io.files import sha256_file

    run, model_file = user_run
    recorded = json.loads((run / "model_source.json").read_text())
    assert recorded["sha256"] == sha256_file(model_file) and recorded["file"] == str(model_file.resolve())
    before = imports(model_file)
    code, out, err = run_cli(["evaluate", str(run), "--trust-model-code"], capsys)
    assert code == 0, err
    assert imports(model_file) == before + 1 and "accuracy" in out
    assert "changed since" not in err


def test_a_changed_model_file_is_reported_when_trusted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_file = tmp_path / "nets.py"
    model_file.write_text(MODEL_FILE)
    run = tmp_path / "run"
    args = ["train", "--model", f"{model_file}:Net", "--max-steps", "2", "--run-dir", str(run), "--quiet"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    model_file.write_text(MODEL_FILE + "\n# edited\n")
    code, _, err = run_cli(["evaluate", str(run), "--trust-model-code", "--checkpoint", "final"], capsys)
    assert code == 0, err
    assert f"warning: {model_file.resolve()} changed since run" in err


def test_a_model_named_on_the_command_line_needs_no_flag(
    user_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, model_file = user_run
    args = ["train", "--config", str(run / "config.yaml"), "--model", f"{model_file}:Net", "--max-steps", "1"]
    code, _, err = run_cli([*args, "--run-dir", str(tmp_path / "again"), "--quiet"], capsys)
    assert code == 0, err


def test_built_in_models_replay_without_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--max-steps", "2", "--run-dir", str(run), "--quiet"], capsys)
    assert code == 0, err
    assert not (run / "model_source.json").exists()
    code, _, err = run_cli(["evaluate", str(run)], capsys)
    assert code == 0, err


def test_load_in_python_needs_trust_model_code(user_run: tuple[Path, Path]) -> None:
    import torchsmith
    from torchsmith.errors import UsageError

    run, _ = user_run
    with pytest.raises(UsageError, match="trust_model_code=True"):
        torchsmith.load(run)
    assert torchsmith.load(run, trust_model_code=True).model is not None
