"""Starting from trained weights: zoo models, weights files, other runs, and the fine-tuning schedule."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_image_tree
from safetensors.torch import load_file, save_file
from torch import nn

from torchsmith.cli.main import main
from torchsmith.data.bundle import DataInfo
from torchsmith.errors import UsageError
from torchsmith.models import zoo
from torchsmith.models.weights import find_head, load_into, read_weights_file

timm = pytest.importorskip("timm", reason="the timm extra is not installed (pip install timm)")


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes of 32x32 PNGs with train/ and test/ folders (enough test images for the ONNX check)."""
    root = tmp_path_factory.mktemp("images")
    write_image_tree(root / "train", classes=3, per_class=16, size=32)
    write_image_tree(root / "test", classes=3, per_class=8, size=32)
    return root


@pytest.fixture(scope="module")
def timm_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Weights files saved by timm itself from randomly initialised models."""
    from timm.models import save_for_hf

    root = tmp_path_factory.mktemp("timm")
    torch.manual_seed(1)
    names = ("resnet18", "resnet50", "test_efficientnet")  # the last one small, for quick runs
    for name in names:
        save_for_hf(timm.create_model(name), str(root / name), safe_serialization=True)
    return {name: root / name / "model.safetensors" for name in names}


def job(images: Path, run: Path, *extra: str) -> list[str]:
    data = ["--data", f"imagefolder:{images}", "--batch-size", "8", "--device", "cpu"]
    return ["train", *data, "--run-dir", str(run), "--quiet", *extra]


# ----------------------------------------------------------------- weights saved by timm
def test_timm_resnet18_starts_from_a_file_timm_saved_and_trains(
    tmp_path: Path, images: Path, timm_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from torchsmith.after.transfer import start_model
    from torchsmith.config import RunConfig
    from torchsmith.data.registry import load_data

    saved = load_file(str(timm_files["resnet18"]))  # 1000 classes: the head must start fresh
    config = RunConfig.from_dict(
        {"model": {"name": "timm:resnet18", "pretrained": str(timm_files["resnet18"])}, "data": {"name": "imagefolder"}}
    )
    config.data.name = f"imagefolder:{images}"
    bundle = load_data(config.data, 0)
    start = start_model(config, bundle)
    weights = start.model.state_dict()
    body = [k for k in weights if not k.startswith("fc.")]
    assert len(body) == len(saved) - 2 and all(torch.equal(weights[k], saved[k]) for k in body)
    assert weights["fc.weight"].shape == (3, 512) and start.report is not None
    assert start.report.fresh_head == ["fc.weight", "fc.bias"]
    # normalised as the backbone's config says, and that is saved with the run
    assert bundle.info.preprocessing["mean"] == pytest.approx([0.485, 0.456, 0.406])

    run = tmp_path / "run"
    args = job(images, run, "--model", "timm:resnet18", "--pretrained", str(timm_files["resnet18"]), "--max-steps", "2")
    args.remove("--quiet")  # the log says what was loaded
    code, _, err = cli(args, capsys)
    assert code == 0, err
    assert "classifier head `fc` is Linear(512 -> 3)" in err and "the head starts fresh: fc.weight, fc.bias" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert summary["start"]["fresh_head"] == ["fc.weight", "fc.bias"] and summary["start"]["loaded"] == len(body)
    trained = load_file(str(run / "model.safetensors"))
    assert not torch.equal(trained["layer4.1.conv2.weight"], saved["layer4.1.conv2.weight"])  # it trained
    preprocessing = json.loads((run / "preprocessing.json").read_text())["preprocessing"]
    assert preprocessing["backbone"]["input_size"] == [3, 224, 224]
    assert preprocessing["backbone"]["weights"] == "resnet18.a1_in1k"
    assert preprocessing["std"] == pytest.approx([0.229, 0.224, 0.225])
    # 32x32 images on a backbone trained at 224x224: the pre-flight says so
    assert any(f["code"] == "input-small" for f in summary["preflight"])


def test_a_file_for_another_architecture_is_refused_naming_the_keys(
    tmp_path: Path, images: Path, timm_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(
        job(images, tmp_path / "r", "--model", "timm:resnet18", "--pretrained", str(timm_files["resnet50"])), capsys
    )
    assert code == 2
    assert "another architecture" in err and "layer1.0.conv1.weight: (64, 64, 1, 1) in the source" in err
    assert "(64, 64, 3, 3) in the model" in err
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_keys_the_model_lacks_are_refused_too() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    state = {**model.state_dict(), "extra.weight": torch.zeros(3)}
    with pytest.raises(UsageError, match=r"its extra\.weight \(1 tensors\) have no place"):
        load_into(model, state, ["2"], "f.safetensors")
    state = {k: v for k, v in model.state_dict().items() if k != "0.bias"}
    with pytest.raises(UsageError, match=r"the model's 0\.bias \(1 tensors\) are not in it"):
        load_into(model, state, ["2"], "f.safetensors")


def test_weights_files_load_only_tensors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    # a training checkpoint as many scripts save it: wrapped, with DDP's prefix
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "ok.pth")
    assert read_weights_file(tmp_path / "ok.pth").keys() == model.state_dict().keys()
    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(lr=1)}, tmp_path / "pickle.pth")
    with pytest.raises(UsageError, match=r"argparse\.Namespace.*weights_only=True refused it"):
        read_weights_file(tmp_path / "pickle.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UsageError, match=r"not a readable \.safetensors"):
        read_weights_file(tmp_path / "bad.safetensors")
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    assert torch.equal(read_weights_file(tmp_path / "w.safetensors")["2.bias"], model.state_dict()["2.bias"])


# ----------------------------------------------------------------- bad input: exit 2, one message
@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("timm:resnet81", "timm has no model 'resnet81'. Did you mean timm:resnet18"),
        ("torchvision:resnt18", "torchvision has no classification model 'resnt18'. Did you mean torchvision:resnet18"),
        ("torchvision:resnet18.IMAGENET9K", "torchvision has no weights IMAGENET9K for resnet18"),
    ],
)
def test_unknown_zoo_names_suggest_close_ones(
    tmp_path: Path, images: Path, model: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = ["--pretrained"] if "." in model else []
    code, _, err = cli(job(images, tmp_path / "r", "--model", model, *extra), capsys)
    assert code == 2 and expected in err and err.count("error:") == 1


def test_timm_missing_names_the_install_command(
    tmp_path: Path, images: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    code, _, err = cli(job(images, tmp_path / "r", "--model", "timm:resnet18"), capsys)
    assert code == 2 and "pip install timm" in err


def test_offline_library_weights_name_the_file_and_where_it_goes(
    tmp_path: Path,
    images: Path,
    timm_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TORCHSMITH_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))  # nothing cached there
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", tmp_path / "weights")
    code, _, err = cli(job(images, tmp_path / "r", "--model", "timm:resnet18", "--pretrained"), capsys)
    place = tmp_path / "weights" / "timm" / "resnet18.a1_in1k.safetensors"
    assert code == 2
    assert "https://huggingface.co/timm/resnet18.a1_in1k/resolve/main/model.safetensors" in err and str(place) in err
    # placed there, the same command finds it: timm loads it as the model's pretrained weights
    small = tmp_path / "weights" / "timm" / "test_efficientnet.r160_in1k.safetensors"
    small.parent.mkdir(parents=True)
    small.write_bytes(timm_files["test_efficientnet"].read_bytes())
    run = tmp_path / "small"
    code, _, err = cli(
        job(images, run, "--model", "timm:test_efficientnet", "--pretrained", "--max-steps", "1"), capsys
    )
    assert code == 0, err
    placed, trained = load_file(str(small))["conv_stem.weight"], load_file(str(run / "model.safetensors"))
    # one AdamW step (lr 2e-3) away from the placed weights, where a fresh initialisation is far
    assert (trained["conv_stem.weight"] - placed).abs().max() < 3e-3

    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        code, _, err = cli(job(images, tmp_path / "t", "--model", "torchvision:resnet18", "--pretrained"), capsys)
        checkpoint = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
        assert (
            code == 2 and "https://download.pytorch.org/models/resnet18-f37072fd.pth" in err and str(checkpoint) in err
        )
        checkpoint.parent.mkdir(parents=True)
        torch.save(nn.Linear(2, 2).state_dict(), checkpoint)  # not the file its name promises
        code, _, err = cli(job(images, tmp_path / "t", "--model", "torchvision:resnet18", "--pretrained"), capsys)
        assert code == 2 and "does not match its checksum" in err
    finally:
        torch.hub.set_dir(str(Path.home() / ".cache" / "torch" / "hub"))


def test_pretrained_without_a_file_needs_a_zoo_model(
    tmp_path: Path, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(job(images, tmp_path / "r", "--model", "convnet", "--pretrained"), capsys)
    assert code == 2 and "--pretrained PATH" in err
    code, _, err = cli(job(images, tmp_path / "r", "--model", "convnet", "--finetune"), capsys)
    assert code == 2 and "needs starting weights" in err


# ----------------------------------------------------------------- zoo models
def test_torchvision_head_replaced_and_named() -> None:
    info = DataInfo("image", 3, (3, 32, 32))
    model = zoo.build("torchvision:mobilenet_v3_small", info, {})
    assert model.classifier[3].out_features == 3 and find_head(model, 3) == ["classifier.3"]
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    note = zoo.describe_head("torchvision:mobilenet_v3_small", model, 3)
    assert "replaced the last Linear layer, `classifier.3`, with Linear(1024 -> 3)" in note
    backbone = zoo.backbone("torchvision:mobilenet_v3_small", model)
    assert backbone.input_size == (3, 224, 224) and backbone.mean == pytest.approx([0.485, 0.456, 0.406])


def test_list_models_from_a_zoo(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["list", "models", "--zoo", "timm", "--filter", "resnet1*"], capsys)
    assert code == 0 and "timm:resnet18" in out.splitlines()
    code, out, _ = cli(["list", "models", "--zoo", "torchvision"], capsys)
    assert code == 0 and "torchvision:resnet18" in out.splitlines() and "torchvision:vit_b_16" in out.splitlines()
    code, _, err = cli(["list", "data", "--zoo", "timm"], capsys)
    assert code == 2 and "torchsmith list models --zoo timm" in err


def test_timm_run_exports_with_parity_and_predicts(
    tmp_path: Path, images: Path, timm_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnxruntime")
    run = tmp_path / "run"
    flags = [
        "--model",
        "timm:test_efficientnet",
        "--pretrained",
        str(timm_files["test_efficientnet"]),
        "--max-steps",
        "2",
    ]
    assert cli(job(images, run, *flags, "--precision", "bf16"), capsys)[0] == 0
    code, out, err = cli(["export", str(run), "--format", "onnx"], capsys)
    assert code == 0, err
    code, out, err = cli(["predict", str(run), str(images / "test" / "class1" / "000.png")], capsys)
    assert code == 0 and "class" in out
