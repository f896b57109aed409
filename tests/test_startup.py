"""What a training command imports: torch.compile's machinery and matplotlib only when used."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import sys
    import torch
    from torchsmith import Trainer
    from torchsmith.report.model_summary import summary

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    trainer = Trainer(model, optimizer="adamw", max_epochs=2, batch_size=16, progress="none")
    trainer.fit((x, y))
    state = trainer.optimizer.state_dict()
    trainer.optimizer.load_state_dict(state)
    trainer.optimizer.zero_grad()
    summary(model, (1, 4))  # counts FLOPs under a dispatch mode
    loaded = sorted(m for m in ("torch._dynamo", "matplotlib") if m in sys.modules)
    print("loaded:", ",".join(loaded) or "-")

    import torch._dynamo  # once it is loaded, torch's own mark is installed on the next call
    trainer.optimizer.zero_grad()
    mark = getattr(torch.optim.Optimizer.zero_grad.__wrapped__, "__dynamo_disable")
    print("mark:", getattr(mark, "__qualname__", type(mark).__name__))
    """
)


def test_training_imports_neither_the_compiler_nor_matplotlib() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert lines["loaded"] == "-"
    assert "_until_dynamo_loads" not in lines["mark"]  # replaced by torch._dynamo.disable's wrapper


def test_deferral_leaves_unknown_decorators_alone() -> None:
    from torchsmith.train.defer_compiler import defer_dynamo_import

    def plain(value: int) -> int:
        return value + 1

    defer_dynamo_import(plain, None, print)  # not torch's decorator: nothing changes, nothing fails
    assert not hasattr(plain, "__dynamo_disable") and plain(1) == 2


@pytest.mark.parametrize("method", ["add_param_group", "zero_grad", "state_dict", "load_state_dict"])
def test_optimizer_methods_are_still_torch_decorated(method: str) -> None:
    # The deferral relies on torch's decorator shape; if torch changes it, this says so
    # (the deferral then does nothing, and building an optimizer imports torch._dynamo again).
    import torch

    inner = getattr(torch.optim.Optimizer, method)
    assert inner.__code__.co_freevars == ("fn", "recursive") and hasattr(inner, "__wrapped__")


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["evaluate", "--help"], ["--version"]])
def test_help_and_version_do_not_import_torch(argv: list[str]) -> None:
    # The command line must answer --help at once: importing torch alone takes seconds.
    probe = (
        "import sys\nfrom torchsmith.cli.main import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('imported:', sorted(m for m in ('torch', 'numpy', 'torchvision') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "imported: []", done.stdout


def test_phase_clock_books_laps_in_order_and_moves_a_part() -> None:
    from torchsmith.phases import PhaseClock

    clock = PhaseClock()
    clock.lap("imports")
    clock.laps[-1] = ("imports", 2.0, 1.5)  # fixed numbers: the arithmetic is what is checked
    clock.laps.append(("training", 5.0, 4.0))
    clock.move("training", "tensorboard", 0.5)
    clock.move("imports", "nothing", 1.0)  # not the last lap: left alone
    assert clock.laps == [("imports", 2.0, 1.5), ("training", 4.5, 3.5), ("tensorboard", 0.5, 0.5)]
    assert clock.total() == 7.0 and clock.total(cpu=True) == 5.5
    text = clock.to_text(train_time_s=3.5)
    assert "wall: 2.00x the training time (3.500 s)" in text
    assert f"cpu: {5.5 / 3.5:.2f}x the training phase's CPU seconds" in text


def test_profile_startup_prints_every_phase(tmp_path) -> None:
    argv = ["train", "--epochs", "1", "--max-steps", "3", "--quiet", "--profile-startup"]
    done = subprocess.run(
        [sys.executable, "-m", "torchsmith", *argv, "--run-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    table = done.stderr.split("startup profile (seconds, in order):", 1)[1].splitlines()[2:]
    seconds = {line[:24].strip(): float(line[24:].split()[0]) for line in table if line.endswith("%")}
    phases = ["imports", "data load", "model build", "pre-flight", "model summary", "training"]
    phases += ["tensorboard", "test evaluation", "report", "exit"]
    assert all(name in seconds for name in phases), seconds
    total = next(float(line.split()[1]) for line in table if line.split()[0] == "total")
    assert abs(sum(seconds.values()) - total) < 0.01
    assert seconds["training"] > 0 and seconds["imports"] > 0


def test_mnist_from_idx_files_does_not_import_torchvision(mnist_root) -> None:
    # `import torchvision` imports torch._dynamo (1.5 s or more); IDX files on disk need neither.
    probe = (
        "import sys\nfrom torchsmith.data.vision import load_torchvision_digits\n"
        f"bundle = load_torchvision_digits('mnist', {str(mnist_root)!r}, val_fraction=0.0)\n"
        "loaded = sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules)\n"
        "print(len(bundle.train), len(bundle.test), loaded)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["600", "200", "[]"]


def test_process_entry_freezes_the_heap_before_the_interpreter_shuts_down() -> None:
    # What lives at the end dies with the process: frozen, the shutdown's collections skip it.
    probe = (
        "import gc, sys\nfrom torchsmith.cli.main import run\n"
        "sys.argv = ['torchsmith', 'list', 'recipes']\ncode = run()\n"
        "print('code', code, 'frozen', gc.get_freeze_count() > 0)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "code 0 frozen True"
