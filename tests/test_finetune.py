"""Fine-tuning (head first, then discriminative learning rates) and starting from another run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_image_tree
from helpers import tiny_image_splits as data
from safetensors.torch import load_file
from torch import nn

from torchsmith import Trainer
from torchsmith.after.lr_find import lr_find
from torchsmith.callbacks.base import Callback
from torchsmith.callbacks.checkpointer import Checkpointer
from torchsmith.callbacks.finetune import FineTune
from torchsmith.cli.main import main
from torchsmith.config import OptimConfig

STEPS_PER_EPOCH = 6  # 90 samples, batch 16


def model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("stem", nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()))
    net.add_module("body", nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.2)))
    net.add_module("flat", nn.Flatten())
    net.add_module("fc", nn.Linear(256, 3))
    return net


class Snapshot(Callback):
    """The weights and buffers at each epoch's end, and the optimizer's group count at each step."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.epochs: list[dict[str, torch.Tensor]] = []
        self.groups: set[int] = set()
        self.losses: list[float] = []
        self.stop_at = stop_at

    def on_step_end(self, trainer: Trainer) -> None:
        assert trainer.optimizer is not None
        self.groups.add(len(trainer.optimizer.state_dict()["param_groups"]))
        self.losses.append(trainer.state.last_loss)
        if trainer.state.step == self.stop_at:
            trainer.state.request_stop("test stop")

    def on_epoch_end(self, trainer: Trainer) -> None:
        self.epochs.append({k: v.clone() for k, v in trainer.model.state_dict().items()})


def fit(run_dir: Path, snapshot: Snapshot, resume: bool = False, frozen_epochs: int = 1) -> Trainer:
    train, val = data()
    net = model()
    finetune = FineTune(head=["fc"], frozen_epochs=frozen_epochs, lr_decay=0.5)
    groups = finetune.param_groups(net, lr=0.01)
    trainer = Trainer(
        net,
        optimizer=lambda params: torch.optim.AdamW(groups),
        optim=OptimConfig(lr=0.01, scheduler="cosine", warmup_steps=3),
        max_epochs=3,
        batch_size=16,
        log_every=1,
        progress="none",
        callbacks=[Checkpointer(run_dir, {}), finetune, snapshot],
    )
    trainer.fit(train, val, resume=resume)
    return trainer


def test_the_head_trains_alone_then_everything_at_per_group_rates(tmp_path: Path) -> None:
    start = {k: v.clone() for k, v in model().state_dict().items()}
    snapshot = Snapshot()
    trainer = fit(tmp_path, snapshot)
    after_frozen, after_unfrozen = snapshot.epochs[0], snapshot.epochs[1]
    body = [k for k in start if not k.startswith("fc.")]
    # epoch 1: the body, BatchNorm statistics included, is exactly as it started; the head trained
    assert all(torch.equal(after_frozen[k], start[k]) for k in body)
    assert not torch.equal(after_frozen["fc.weight"], start["fc.weight"])
    # epoch 2: everything trains, the running statistics move again
    for key in ("stem.0.weight", "body.0.weight", "stem.1.running_mean", "body.1.running_var"):
        assert not torch.equal(after_unfrozen[key], after_frozen[key]), key
    assert trainer.optimizer is not None
    groups = trainer.optimizer.param_groups
    assert [g["layer_group"] for g in groups] == ["fc", "body", "stem"]
    assert [g["initial_lr"] for g in groups] == pytest.approx([0.01, 0.005, 0.0025])
    assert snapshot.groups == {3}  # the optimizer's state has one shape throughout


def test_without_the_freeze_the_body_moves_in_the_first_epoch(tmp_path: Path) -> None:
    """Negative control: the same run with frozen_epochs=0 changes the body at once."""
    start = model().state_dict()
    snapshot = Snapshot()
    fit(tmp_path, snapshot, frozen_epochs=0)
    assert not torch.equal(snapshot.epochs[0]["body.0.weight"], start["body.0.weight"])
    assert not torch.equal(snapshot.epochs[0]["body.1.running_mean"], start["body.1.running_mean"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[float], dict[str, torch.Tensor]]:
    snapshot = Snapshot()
    trainer = fit(tmp_path_factory.mktemp("reference"), snapshot)
    return snapshot.losses, {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize(
    "stop_at", [3, STEPS_PER_EPOCH, STEPS_PER_EPOCH + 2], ids=["frozen", "at-the-unfreeze", "unfrozen"]
)
def test_resume_across_the_unfreeze_is_exact(tmp_path: Path, reference, stop_at: int) -> None:
    expected_losses, expected_weights = reference
    first = Snapshot(stop_at=stop_at)
    fit(tmp_path, first)
    second = Snapshot()
    resumed = fit(tmp_path, second, resume=True)
    assert first.losses + second.losses == expected_losses  # bitwise, every step
    weights = resumed.model.state_dict()
    assert all(torch.equal(weights[k], expected_weights[k]) for k in expected_weights)


def test_lr_find_sweeps_the_head_while_the_body_is_frozen() -> None:
    train, _ = data()
    net = model()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    head = sum(p.numel() for p in net.fc.parameters())
    options = {"steps": 12, "min_lr": 1e-4, "max_lr": 1e-2}
    frozen = lr_find(net, train, finetune=FineTune(["fc"], frozen_epochs=1), **options)
    assert frozen.trained == head
    everything = lr_find(net, train, finetune=FineTune(["fc"], frozen_epochs=0), **options)
    assert everything.trained == sum(p.numel() for p in net.parameters())
    assert all(torch.equal(net.state_dict()[k], before[k]) for k in before)  # the model itself is untouched


# ----------------------------------------------------------------- --init-from
@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trees")
    write_image_tree(root / "a", classes=3, per_class=16, size=16)
    write_image_tree(root / "b", classes=4, per_class=16, size=16)  # another class set
    return root


def train(data_dir: Path, run: Path, *extra: str) -> int:
    common = ["--data", f"imagefolder:{data_dir}", "--batch-size", "8", "--device", "cpu", "--quiet"]
    return main(["train", *common, "--run-dir", str(run), *extra])


@pytest.fixture(scope="module")
def source_run(trees: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of a user's model file, which marks each import of it."""
    folder = tmp_path_factory.mktemp("source")
    (folder / "nets.py").write_text(
        "import pathlib, torch\nfrom torch import nn\n"
        f"pathlib.Path({str(folder / 'imported')!r}).open('a').write('x')\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, num_classes=3):\n"
        "        super().__init__()\n"
        "        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),"
        " nn.AdaptiveAvgPool2d(1), nn.Flatten())\n"
        "        self.fc = nn.Linear(8, num_classes)\n"
        "    def forward(self, x):\n"
        "        return self.fc(self.features(x))\n"
    )
    run = folder / "run"
    assert train(trees / "a", run, "--model", f"{folder / 'nets.py'}:Net", "--epochs", "2") == 0
    return run


def test_init_from_another_run_never_imports_its_model_file(
    source_run: Path, trees: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = source_run.parent / "imported"
    assert marker.read_text() == "x"
    copy = tmp_path / "mine.py"
    copy.write_text((source_run.parent / "nets.py").read_text().replace(str(marker), str(tmp_path / "mine")))
    (source_run.parent / "nets.py").write_text("raise SystemExit('the source run's model file was imported')\n")
    run = tmp_path / "run"
    flags = ["--model", f"{copy}:Net", "--model-args", '{"num_classes": 4}', "--init-from", str(source_run)]
    assert train(trees / "b", run, *flags, "--finetune", "--epochs", "2") == 0, capsys.readouterr().err
    assert marker.read_text() == "x"  # the source's file was never imported again
    source = load_file(str(source_run / "checkpoints" / "best" / "model.safetensors"))
    start = json.loads((run / "summary.json").read_text())["start"]
    assert start["fresh_head"] == ["fc.weight", "fc.bias"] and start["loaded"] == len(source) - 2
    # The first epoch trained the new head alone: the body is the source's, bit for bit.
    first_epoch = sorted((run / "checkpoints").glob("step-*"))[0]
    first = load_file(str(first_epoch / "model.safetensors"))
    assert all(torch.equal(first[k], source[k]) for k in source if not k.startswith("fc."))
    preprocessing = json.loads((run / "preprocessing.json").read_text())["preprocessing"]
    assert preprocessing["mean"] == json.loads((source_run / "preprocessing.json").read_text())["preprocessing"]["mean"]


def test_init_from_keeps_the_head_for_the_same_classes(
    source_run: Path, trees: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    flags = ["--model", f"{source_run.parent / 'mine.py'}:Net"]
    (source_run.parent / "mine.py").write_text(
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, num_classes=3):\n"
        "        super().__init__()\n"
        "        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),"
        " nn.AdaptiveAvgPool2d(1), nn.Flatten())\n"
        "        self.fc = nn.Linear(8, num_classes)\n"
        "    def forward(self, x):\n"
        "        return self.fc(self.features(x))\n"
    )
    assert train(trees / "a", run, *flags, "--init-from", str(source_run), "--max-steps", "1") == 0
    start = json.loads((run / "summary.json").read_text())["start"]
    assert start["fresh_head"] == [] and start["loaded"] == len(load_file(str(run / "model.safetensors")))


def test_init_from_a_run_of_another_model_is_refused(
    source_run: Path, trees: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = train(trees / "a", tmp_path / "r", "--model", "convnet", "--init-from", str(source_run))
    err = capsys.readouterr().err
    assert code == 2 and "another architecture" in err and "features.conv1.weight" in err, err
    assert "features.0.bias" in err
    code = train(trees / "a", tmp_path / "r", "--model", "convnet", "--init-from", str(tmp_path / "nowhere"))
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_init_from_a_text_run_needs_its_vocabulary(tmp_path: Path) -> None:
    from torchsmith.after.run_dir import Run
    from torchsmith.after.transfer import _check_same_inputs
    from torchsmith.config import RunConfig
    from torchsmith.data.bundle import DataBundle, DataInfo
    from torchsmith.errors import UsageError

    def info(words: list[str]) -> DataInfo:
        return DataInfo("text", 2, (8,), preprocessing={"kind": "words", "tokenizer": {"words": words}})

    source = Run(tmp_path, RunConfig(), info(["a", "b"]), info(["a", "b"]).preprocessing)
    _check_same_inputs(source, DataBundle(None, None, None, info(["a", "b"])))  # the same: fine
    with pytest.raises(UsageError, match="another vocabulary"):
        _check_same_inputs(source, DataBundle(None, None, None, info(["b", "a"])))
    image = DataInfo("image", 2, (1, 8, 8), preprocessing={"kind": "image"})
    with pytest.raises(UsageError, match="same kind of inputs"):
        _check_same_inputs(source, DataBundle(None, None, None, image))


@pytest.mark.slow
def test_fine_tuning_through_torch_compile(tmp_path: Path) -> None:
    """The unfreeze changes requires_grad under torch.compile: it recompiles, and the body trains."""
    pytest.importorskip("torch._dynamo")
    train_data, val = data()
    net = model()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    finetune = FineTune(head=["fc"], frozen_epochs=1)
    groups = finetune.param_groups(net, lr=0.01)
    snapshot = Snapshot()
    trainer = Trainer(
        net,
        optimizer=lambda params: torch.optim.AdamW(groups),
        max_epochs=2,
        batch_size=16,
        compile=True,
        progress="none",
        callbacks=[finetune, snapshot],
    )
    trainer.fit(train_data, val)
    assert torch.equal(snapshot.epochs[0]["body.0.weight"], start["body.0.weight"])
    assert torch.equal(snapshot.epochs[0]["body.1.running_mean"], start["body.1.running_mean"])
    assert not torch.equal(snapshot.epochs[1]["body.0.weight"], start["body.0.weight"])
