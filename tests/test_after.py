"""After training: evaluate, predict, export and lr-find on runs trained here on the embedded MNIST sample."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import shared_dataset, write_image_tree
from torch import nn

import torchsmith
from torchsmith.after import export as export_module
from torchsmith.after.evaluate import evaluate_run
from torchsmith.after.export import ExportError, check_parity
from torchsmith.after.lr_find import lr_find, lr_find_run, suggest_lr
from torchsmith.cli.main import main
from torchsmith.config import RunConfig
from torchsmith.data.vision import load_mnist_sample
from torchsmith.errors import UsageError
from torchsmith.models.registry import build_model
from torchsmith.train.trainer import Trainer


def train(run: Path, *extra: str) -> Path:
    assert main(["train", "--max-steps", "60", "--run-dir", str(run), "--quiet", *extra]) == 0
    return run


@pytest.fixture(scope="module")
def simplenet_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tmp_path_factory.mktemp("runs") / "simplenet")


@pytest.fixture(scope="module")
def convnet_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tmp_path_factory.mktemp("runs") / "convnet", "--model", "convnet", "--max-steps", "5")


@pytest.fixture(scope="module")
def test_images() -> torch.Tensor:
    """The embedded sample's test digits, uint8 (2000, 1, 28, 28), in the order evaluate sees them."""
    return load_mnist_sample().test.images


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def copy_run(run: Path, target: Path) -> Path:
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("export", "tb", "plots", "report.html"))
    return target


# ----------------------------------------------------------------- evaluate
def test_evaluate_reproduces_the_test_metrics_of_training(
    simplenet_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = json.loads((simplenet_run / "summary.json").read_text())
    code, out, err = cli(
        ["evaluate", str(simplenet_run), "--checkpoint", "final", "--json", str(tmp_path / "eval.json")], capsys
    )
    assert code == 0, err
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["accuracy"] == summary["test"]["accuracy"]
    assert abs(result["loss"] - summary["test"]["loss"]) < 1e-6
    assert f"accuracy {summary['test']['accuracy']:.4f}" in out and "macro F1" in out
    # the per-class table comes from argmax counts, the accuracy from the Trainer's meter
    confusion = torch.tensor(result["confusion_matrix"])
    assert int(confusion.sum()) == result["num_samples"] == 2000
    assert confusion.trace().item() / 2000 == result["accuracy"]
    assert [row["support"] for row in result["per_class"]] == confusion.sum(dim=1).tolist()
    recall_0 = confusion[0, 0].item() / confusion[0].sum().item()
    assert result["per_class"][0]["recall"] == pytest.approx(recall_0)
    # "last" is written when fit ends, so it holds the final weights; the default is "best"
    last = evaluate_run(simplenet_run, checkpoint="last")
    assert last.metrics["accuracy"] == summary["test"]["accuracy"] and last.checkpoint == "last (step 60)"
    assert evaluate_run(simplenet_run, split="val").num_samples == 1600
    assert evaluate_run(simplenet_run).checkpoint == "best (step 60)"


def test_evaluate_on_full_mnist_agrees_with_the_sample_on_shared_digits(simplenet_run: Path) -> None:
    root = shared_dataset("mnist")
    sample = evaluate_run(simplenet_run, checkpoint="final")
    full = evaluate_run(simplenet_run, checkpoint="final", data="mnist", data_dir=str(root))
    assert full.num_samples == 10000 and full.metrics["accuracy"] > 0.8
    # the sample's test digits are the first 2000 of MNIST's: normalised with the run's own
    # constants, they must get exactly the same predictions
    assert sample.predicted is not None and full.predicted is not None
    assert torch.equal(full.predicted[:2000], sample.predicted)


# ----------------------------------------------------------------- predict
def test_predict_on_png_files_matches_evaluation(
    simplenet_run: Path, test_images: torch.Tensor, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from torchvision.io import write_png

    evaluation = evaluate_run(simplenet_run, checkpoint="final")
    assert evaluation.predicted is not None and evaluation.targets is not None
    wrong = torch.nonzero(evaluation.predicted != evaluation.targets).flatten()[:6]
    indices = torch.cat([torch.arange(6), wrong]).tolist()  # right and wrong predictions alike
    files = []
    for i in indices:
        files.append(str(tmp_path / f"digit{i}.png"))
        write_png(test_images[i], files[-1])
    code, out, err = cli(["predict", str(simplenet_run), *files, "--checkpoint", "final", "--top-k", "3"], capsys)
    assert code == 0, err
    rows = [line.split("\t") for line in out.strip().splitlines()]
    assert [row[0] for row in rows] == files and all(len(row) == 7 for row in rows)
    assert [row[1] for row in rows] == [str(evaluation.predicted[i].item()) for i in indices]
    probabilities = [[float(p) for p in row[2::2]] for row in rows]
    assert all(p[0] >= p[1] >= p[2] for p in probabilities)
    # the same digits as uint8 tensors through the Python API: same labels and probabilities
    predictor = torchsmith.load(simplenet_run, checkpoint="final")
    result = predictor.predict(test_images[indices])
    assert result.labels == [row[1] for row in rows]
    assert torch.allclose(result.confidence, torch.tensor([p[0] for p in probabilities]), atol=1e-4)
    assert torch.allclose(result.probabilities.sum(dim=1), torch.ones(len(indices)))
    code, _, err = cli(["predict", str(simplenet_run), *files[:3], "--output", str(tmp_path / "p.csv")], capsys)
    assert code == 0, err
    with (tmp_path / "p.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["label"] for r in table] == [row[1] for row in rows[:3]]


def test_predict_converts_colour_and_size_to_the_runs(
    simplenet_run: Path, test_images: torch.Tensor, tmp_path: Path
) -> None:
    from torchvision.io import write_jpeg, write_png

    predictor = torchsmith.load(simplenet_run)
    digit = test_images[0]  # (1, 28, 28)
    write_png(digit, str(tmp_path / "gray.png"))
    write_png(digit.expand(3, -1, -1).contiguous(), str(tmp_path / "rgb.png"))
    write_png(digit.repeat_interleave(2, 1).repeat_interleave(2, 2), str(tmp_path / "big.png"))
    write_jpeg(digit.expand(3, -1, -1).contiguous(), str(tmp_path / "rgb.jpg"), quality=95)
    gray, rgb, big, jpeg = predictor.prepare([str(tmp_path / n) for n in ("gray.png", "rgb.png", "big.png", "rgb.jpg")])
    step = 1 / 255 / predictor.preprocessing["std"][0]  # one grey level, normalised
    assert gray.shape == rgb.shape == big.shape == (1, 28, 28)
    assert (rgb - gray).abs().max() <= step * 1.01  # RGB -> grey rounds to within one level
    # 56x56 back to 28x28 blurs a little (antialiasing), far less than another digit differs (~0.4)
    assert (big - gray).abs().mean() < 0.15
    assert (jpeg - gray).abs().mean() < 2 * step
    assert predictor.predict([str(tmp_path / n) for n in ("gray.png", "big.png", "rgb.jpg")]).labels == ["7"] * 3
    prepared = predictor.prepare([str(tmp_path / "gray.png")])
    expected = (digit.float() / 255 - predictor.preprocessing["mean"][0]) / predictor.preprocessing["std"][0]
    assert torch.allclose(prepared[0], expected, atol=1e-6)


# ----------------------------------------------------------------- bad input
def test_a_folder_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["evaluate", str(tmp_path)], ["predict", str(tmp_path), "x.png"], ["export", str(tmp_path)]):
        code, _, err = cli(command, capsys)
        assert code == 2 and "is not a torchsmith run directory: it has no config.yaml" in err, err
    code, _, err = cli(["evaluate", str(tmp_path / "missing")], capsys)
    assert code == 2 and "does not exist" in err


def test_a_run_without_the_asked_checkpoint(
    simplenet_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_run(simplenet_run, tmp_path / "run")
    shutil.rmtree(run / "checkpoints" / "best")
    code, _, err = cli(["evaluate", str(run), "--checkpoint", "best"], capsys)
    assert code == 2 and "has no complete checkpoint 'best'. Available: last, final" in err, err
    assert "Traceback" not in err
    (run / "checkpoints" / "last" / "manifest.json").unlink()  # an incomplete checkpoint
    code, _, err = cli(["predict", str(run), "x.png", "--checkpoint", "last"], capsys)
    assert code == 1 and "incomplete" in err and "Choose another with --checkpoint" in err, err
    (run / "model.safetensors").unlink()  # no best and no final: nothing to load by default
    code, _, err = cli(["evaluate", str(run)], capsys)
    assert code == 2 and "has no weights to load" in err and "--checkpoint last" in err, err


def test_inputs_that_do_not_fit_an_image_run(
    simplenet_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "speech.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    cases = [
        (str(tmp_path / "speech.wav"), "is an audio file, but this run was trained on images"),
        ("a sentence to classify", "is not a file: this run takes images"),
        (str(tmp_path / "broken.png"), "could not decode"),
    ]
    for item, message in cases:
        code, _, err = cli(["predict", str(simplenet_run), item], capsys)
        assert code == 2 and message in err and "Traceback" not in err, err
    predictor = torchsmith.load(simplenet_run)
    for bad, message in [
        (42, "takes file paths, strings or tensors"),
        ([], "no inputs"),
        (torch.zeros(2, 3, 32, 32), "float inputs of shape (N, 1, 28, 28)"),
        ([torch.zeros(1, 28, 28)], "must be uint8"),
    ]:
        with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
            predictor.predict(bad)
    code, _, err = cli(["predict", str(simplenet_run), str(tmp_path / "broken.png"), "--top-k", "11"], capsys)
    assert code == 2


def test_evaluate_and_predict_agree_on_another_dataset_with_the_runs_normalisation(
    simplenet_run: Path, test_images: torch.Tensor, tmp_path: Path
) -> None:
    from torchvision.io import write_png

    labels = load_mnist_sample().test.labels.tolist()
    first_of_each_class = [labels.index(c, 1000) for c in range(10)]
    files = []
    for split, indices in (("train", first_of_each_class), ("test", range(40))):
        for index in indices:
            folder = tmp_path / "digits" / split / str(labels[index])
            folder.mkdir(parents=True, exist_ok=True)
            # brighter than MNIST: this dataset's own mean/std differ from the run's
            write_png(test_images[index] // 2 + 100, str(folder / f"{index:04d}.png"))
            files += [folder / f"{index:04d}.png"] if split == "test" else []
    evaluation = evaluate_run(simplenet_run, data=f"imagefolder:{tmp_path / 'digits'}")
    assert evaluation.num_samples == 40 and evaluation.predicted is not None
    order = sorted(files, key=lambda f: (int(f.parent.name), f.name))  # class folders, then file names
    assert evaluation.predicted.tolist() == torchsmith.load(simplenet_run).predict(order).indices.tolist()


def test_evaluate_on_data_of_another_shape(
    simplenet_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_image_tree(tmp_path / "images", classes=3, per_class=12, size=16)
    code, _, err = cli(["evaluate", str(simplenet_run), "--data", f"imagefolder:{tmp_path / 'images'}"], capsys)
    assert code == 2 and "gives inputs of shape (3, 16, 16) in 3 classes" in err and "(1, 28, 28)" in err, err


def test_export_names_the_pip_command_for_a_missing_package(
    simplenet_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = "onnxruntime_not_installed_here"
    onnx = dataclasses.replace(export_module.FORMATS["onnx"], packages=("onnx", missing))
    monkeypatch.setitem(export_module.FORMATS, "onnx", onnx)
    code, _, err = cli(["export", str(simplenet_run), "--format", "onnx"], capsys)
    assert code == 2 and f"pip install {missing}" in err, err
    assert not (simplenet_run / "export" / "model.onnx").exists()


# ----------------------------------------------------------------- export
@pytest.mark.parametrize("which", ["simplenet", "convnet"])
def test_onnx_export_matches_eager_on_real_digits(
    which: str,
    simplenet_run: Path,
    convnet_run: Path,
    test_images: torch.Tensor,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install onnxscript)")
    run = simplenet_run if which == "simplenet" else convnet_run
    output = tmp_path / "model.onnx"
    code, out, err = cli(["export", str(run), "--format", "onnx", "--output", str(output)], capsys)
    assert code == 0, err
    assert "batch 16:" in out and "batch 5:" in out and "batch 1:" in out
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)  # a symbolic, dynamic batch dimension
    predictor = torchsmith.load(run)
    for start, size in ((100, 16), (300, 7)):  # the export's batch size and another one
        inputs = predictor.prepare(test_images[start : start + size])
        eager = predictor.model(inputs).detach()
        exported = torch.from_numpy(session.run(None, {"input": inputs.numpy()})[0])
        assert exported.shape == eager.shape and (exported - eager).abs().max() < 1e-4
    beside = json.loads(Path(f"{output}.preprocessing.json").read_text())
    saved = json.loads((run / "preprocessing.json").read_text())
    assert beside["class_names"] == saved["class_names"] and beside["preprocessing"] == saved["preprocessing"]
    assert beside["input_shape"] == ["batch", 1, 28, 28]
    if which == "simplenet":  # a tolerance below the real difference must fail
        code, _, err = cli(["export", str(run), "--output", str(output), "--tolerance", "1e-12"], capsys)
        assert code == 1 and "does not match the eager model" in err, err


@pytest.mark.parametrize(
    "format,suffix", [("exported-program", ".pt2"), ("torchscript", ".torchscript.pt"), ("safetensors", ".safetensors")]
)
def test_other_export_formats(
    format: str, suffix: str, simplenet_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(["export", str(simplenet_run), "--format", format], capsys)
    assert code == 0, err
    path = simplenet_run / "export" / f"model{suffix}"
    assert path.is_file() and Path(f"{path}.preprocessing.json").is_file() and str(path) in out
    eager = torchsmith.load(simplenet_run, checkpoint="final").model.eval()  # what the export was made from
    inputs = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    if format == "safetensors":  # the weights themselves
        from safetensors.torch import load_file

        saved = load_file(str(path))
        assert saved.keys() == eager.state_dict().keys()
        assert all(torch.equal(saved[k], v) for k, v in eager.state_dict().items())
        return
    loaded = torch.export.load(str(path)).module() if format == "exported-program" else torch.jit.load(str(path))
    with torch.no_grad():
        assert torch.allclose(loaded(inputs), eager(inputs), atol=1e-5)  # it computes what the model computes


def test_parity_check_catches_a_batch_size_baked_into_the_export() -> None:
    class FixedBatch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) + torch.zeros(int(x.shape[0]), 1)  # int(): a constant to the tracer

    model = FixedBatch().eval()
    batches = [torch.randn(16, 4), torch.randn(5, 4)]
    with pytest.warns(Warning):
        traced = torch.jit.trace(model, batches[0])
    assert check_parity(model, traced, batches[:1]) == {16: 0.0}
    with pytest.raises(ExportError, match="failed on a batch of 5"):
        check_parity(model, traced, batches)


# ----------------------------------------------------------------- lr-find
def test_lr_find_suggestion_is_stable_across_seeds_and_trains_well(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(
        [
            "lr-find",
            "--model",
            "simplenet",
            "--data",
            "mnist-sample",
            "--seed",
            "0",
            "--plot",
            str(tmp_path / "lr.png"),
        ],
        capsys,
    )
    assert code == 0, err
    assert (tmp_path / "lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    suggestions = [float(out.split("suggested lr ")[1].split()[0])]
    for seed in (1, 2):
        config = RunConfig.from_dict({"train": {"seed": seed}})
        suggestions.append(lr_find_run(config).suggestion)
    assert max(suggestions) / min(suggestions) < 3, suggestions
    accuracy: dict[str, list[float]] = {"default": [], "suggested": []}
    for seed, suggestion in enumerate(suggestions):
        bundle = load_mnist_sample(seed=seed)
        for name, lr in (("default", 1e-3), ("suggested", suggestion)):
            config = RunConfig.from_dict(
                {"optim": {"lr": lr}, "train": {"seed": seed, "max_steps": 150, "progress": "none"}}
            )
            torch.manual_seed(seed)
            model = build_model("simplenet", bundle.info)
            trainer = Trainer(model, optimizer="adamw", config=config.train, optim=config.optim)
            trainer.fit(bundle.train)
            accuracy[name].append(trainer.evaluate(bundle.test)["accuracy"])
    assert sum(accuracy["suggested"]) >= sum(accuracy["default"]), accuracy


def test_lr_find_leaves_the_model_alone_and_stops_on_divergence(blobs: tuple[torch.Tensor, torch.Tensor]) -> None:
    torch.manual_seed(0)
    model = nn.Linear(8, 1)  # least squares: SGD diverges once the LR passes 2 / the largest curvature
    inputs = blobs[0]
    data = (inputs, inputs.sum(dim=1, keepdim=True))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sgd = RunConfig.from_dict({"optim": {"name": "sgd"}}).optim
    result = lr_find(model, data, loss="mse", optim=sgd, min_lr=1e-5, max_lr=10.0, steps=200)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result.stop_reason in ("diverged", "non-finite loss") and len(result.lrs) < 200
    assert result.lrs[0] == pytest.approx(1e-5) and result.lrs == sorted(result.lrs)
    assert result.smoothed[-1] > 4 * min(result.smoothed) or result.stop_reason == "non-finite loss"
    assert result.suggestion < result.min_loss_lr < result.lrs[-1]
    with pytest.raises(UsageError, match="--min-lr must be positive and below --max-lr"):
        lr_find(model, data, min_lr=1.0, max_lr=0.1)


def test_suggest_lr_finds_the_steepest_fall() -> None:
    lrs = [10 ** (k / 20 - 5) for k in range(100)]  # 1e-5 .. ~1e0
    losses = [1 + 1 / (1 + math.exp((math.log10(lr) + 2.5) * 4)) for lr in lrs]  # falls fastest at 10^-2.5
    assert math.log10(suggest_lr(lrs, losses)) == pytest.approx(-2.5, abs=0.05)
    rising = losses[:80] + [losses[79] + 0.1 * k for k in range(20)]  # blow-up after the minimum is ignored
    assert math.log10(suggest_lr(lrs, rising)) == pytest.approx(-2.5, abs=0.05)
