"""torchsmith sweep: the search syntax, a sweep's files, failed and pruned trials, two processes
sharing one SQLite study without running a trial twice, and a killed sweep resuming."""

from __future__ import annotations

import csv
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from torchsmith.cli.main import main
from torchsmith.errors import UsageError
from torchsmith.sweep.space import SearchParam, as_set_value, parse_search, parse_space

optuna = pytest.importorskip("optuna")
SRC = Path(__file__).resolve().parents[1] / "src"


def base(mnist_root: Path, epochs: int = 3) -> list[str]:
    """A tiny MNIST (600 images): 9 steps per epoch with a tenth held out."""
    return ["--data", "mnist", "--data-dir", str(mnist_root), "--epochs", str(epochs), "--val-fraction", "0.1"]


def read_trials(folder: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((folder / "trials.csv").open()))


def test_search_syntax() -> None:
    assert parse_search("optim.lr=log(1e-4, 1e-1)") == SearchParam("optim.lr", "log", 1e-4, 0.1)
    assert parse_search("model.args.width=int(32,256,32)") == SearchParam("model.args.width", "int", 32, 256, 32)
    assert parse_search("train.batch_size=[64,128]").choices == (64, 128)
    channels = parse_search("model.args.channels=[[8,16],[16,32]]")
    assert channels.grid() == ["[8, 16]", "[16, 32]"] and channels.base_value([16, 32]) == "[16, 32]"
    assert parse_search("optim.lr=log(1e-3,1e-1)").base_value(0.5) is None
    assert as_set_value([8, 16]) == "[8, 16]" and as_set_value(0.1) == "0.1"
    for text, message in [
        ("optim.lr", "KEY=SPACE"),
        ("optim.lr=log(0,1)", "positive low end"),
        ("optim.lr=float(1,0.1)", "low < high"),
        ("optim.lr=exp(1,2)", "cannot read"),
        ("train.batch_size=[64,64]", "twice"),
        ("train.batch_size=int(1.5,4)", "whole numbers"),
    ]:
        with pytest.raises(UsageError, match=message):
            parse_search(text)
    with pytest.raises(UsageError, match="more than once"):
        parse_space(["optim.lr=log(1e-3,1e-1)", "optim.lr=[0.1]"])
    with pytest.raises(UsageError, match="continuous"):
        parse_search("optim.lr=log(1e-3,1e-1)").grid()


def test_mistakes_are_usage_errors_before_any_trial(mnist_root: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "s"
    assert main(["sweep", *base(mnist_root), "--run-dir", str(folder), "--search", "optim.lrr=log(1e-3,1)"]) == 2
    assert "Did you mean 'lr'" in capsys.readouterr().err
    assert main(["sweep", "--data", "mnist-sample", "--search", "optim.lr=[0.1]", "--val-fraction", "0"]) == 2
    assert "needs a validation split" in capsys.readouterr().err
    assert not folder.exists()


def test_sweep_writes_trials_pages_and_records_failures(mnist_root: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "sweep"
    args = ["sweep", *base(mnist_root), "--run-dir", str(folder), "--metric", "val_accuracy", "--sampler", "grid"]
    args += ["--search", "optim.lr=[0.003,0.03]", "--search", "model.args.hidden_dim=[32,-4]", "--trials", "4"]
    assert main(args) == 0
    out = capsys.readouterr()
    rows = read_trials(folder)
    assert len(rows) == 4 and {r["optim.lr"] for r in rows} == {"0.003", "0.03"}
    failed = [r for r in rows if r["state"] == "failed"]
    assert [r["model.args.hidden_dim"] for r in failed] == ["-4", "-4"]
    assert all("hidden_dim" in r["reason"] or "negative" in r["reason"] for r in failed), failed
    done = [r for r in rows if r["state"] in ("completed", "pruned")]
    assert len(done) == 2
    for row in done:  # every trial is an ordinary run directory with its own settings
        config = yaml.safe_load((Path(row["run_dir"]) / "config.yaml").read_text())
        assert config["optim"]["lr"] == float(row["optim.lr"]) and config["model"]["args"]["hidden_dim"] == 32
        assert (Path(row["run_dir"]) / "report.html").is_file()
    best = max((r for r in done if r["state"] == "completed"), key=lambda r: float(r["val_accuracy"]))
    command = out.out.strip().splitlines()[-1]
    assert command.startswith("torchsmith train ") and f"optim.lr={best['optim.lr']}" in command
    words = shlex.split(command)[2:]
    words[words.index("--run-dir") + 1] = str(tmp_path / "again")
    assert main(["train", *words, "--quiet"]) == 0  # the printed command reproduces the best trial
    again = yaml.safe_load((tmp_path / "again" / "config.yaml").read_text())
    assert again["optim"]["lr"] == float(best["optim.lr"]) and again["model"]["args"]["hidden_dim"] == 32
    page = (folder / "sweep.html").read_text()
    assert all(f"id='{section}'" in page for section in ("best", "settings", "history", "failed"))
    assert page.count("<svg") == 3  # one chart per setting, and the history


def test_grid_sweep_runs_each_point_once_with_the_base_among_them(mnist_root: Path, tmp_path: Path) -> None:
    # The base config's lr lies on the grid: queuing it as well used to run it twice and skip a point.
    folder = tmp_path / "grid"
    args = ["sweep", *base(mnist_root, epochs=1), "--lr", "0.01", "--run-dir", str(folder), "--sampler", "grid"]
    assert main([*args, "--search", "optim.lr=[0.003,0.01,0.03]", "--trials", "3", "--pruner", "none"]) == 0
    assert sorted(float(row["optim.lr"]) for row in read_trials(folder)) == [0.003, 0.01, 0.03]


def sweep_command(mnist_root: Path, folder: Path, storage: str, trials: int, epochs: int = 2) -> list[str]:
    command = [sys.executable, "-m", "torchsmith", "sweep", *base(mnist_root, epochs), "--run-dir", str(folder)]
    command += ["--storage", storage, "--trials", str(trials), "--sampler", "random", "--pruner", "none"]
    return [*command, "--search", "optim.lr=log(1e-3,1e-1)", "--metric", "val_accuracy"]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}


def study_trials(storage: str, folder: Path) -> list[object]:
    return optuna.load_study(study_name=folder.name, storage=storage).get_trials()


def test_two_processes_share_one_sqlite_study_without_running_a_trial_twice(mnist_root: Path, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    folder = tmp_path / "shared"
    command = sweep_command(mnist_root, folder, storage, trials=4, epochs=1)
    processes = [
        subprocess.Popen(command, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    trials = study_trials(storage, folder)
    workers = [t.user_attrs["worker"] for t in trials]
    assert len(set(workers)) == 2  # both processes ran trials of the one study
    assert 4 <= len(trials) <= 5  # --trials counts every process; two may start the last one together
    assert len({t.number for t in trials}) == len(trials) == len({t.params["optim.lr"] for t in trials})
    assert all(t.state.name == "COMPLETE" for t in trials)
    run_dirs = sorted(p.name for p in folder.glob("trial-*"))
    assert run_dirs == [f"trial-{t.number:04d}" for t in sorted(trials, key=lambda t: t.number)]
    for trial in trials:  # each trial trained once: one run directory, one summary, its own lr
        config = yaml.safe_load((folder / f"trial-{trial.number:04d}" / "config.yaml").read_text())
        assert config["optim"]["lr"] == trial.params["optim.lr"]


@pytest.mark.slow  # two sweeps of 40-epoch trials: about a minute alone, several on a busy machine
def test_a_killed_sweep_resumes_and_reruns_the_interrupted_trial(mnist_root: Path, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'resume.db'}"
    folder = tmp_path / "resume"
    command = sweep_command(mnist_root, folder, storage, trials=3, epochs=40)
    first = subprocess.Popen(command, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (folder / "trial-0001" / "config.yaml").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode in (130, 143), err
    before = study_trials(storage, folder)
    assert [t.state.name for t in before][:2] == ["COMPLETE", "FAIL"] and before[1].user_attrs["interrupted"]
    assert before[-1].state.name == "WAITING" and before[-1].user_attrs["rerun_of"] == 1
    second = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    after = study_trials(storage, folder)
    states = [t.state.name for t in after]
    assert states.count("COMPLETE") == 3 and states.count("FAIL") == 1  # the interrupted one, run again
    rerun = next(t for t in after if t.user_attrs.get("rerun_of") == 1)
    assert rerun.state.name == "COMPLETE" and rerun.params == before[1].params
    rows = read_trials(folder)
    assert [r["state"] for r in rows].count("interrupted") == 1
