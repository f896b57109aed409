"""A run directory holds one run: replaying a config never writes into the run it came from, a
directory in use or already used is refused, and evaluate reads a checkpoint being replaced."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from helpers import run_cli, run_process

from torchsmith.io.run_lock import RunLock, claim_new_run_dir

TRAIN = ["train", "--max-steps", "4", "--checkpoint-every", "2", "--quiet"]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def first_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    run = tmp_path / "runs" / "a"
    code, _, err = run_cli([*TRAIN, "--run-dir", str(run)], capsys)
    assert code == 0, err
    assert (run / "checkpoints" / "step-000004").is_dir()
    return run


def test_replaying_a_config_writes_a_new_run_and_leaves_the_old_one_alone(
    first_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = tree(first_run)
    monkeypatch.chdir(tmp_path)  # the default run directory is runs/<model>-<data>-<time> here
    code, _, err = run_cli(["train", "--config", str(first_run / "config.yaml"), "--max-steps", "2", "--quiet"], capsys)
    assert code == 0, err
    assert tree(first_run) == before  # not one byte of run a changed
    new_runs = [p for p in (tmp_path / "runs").iterdir() if p != first_run]
    assert len(new_runs) == 1 and (new_runs[0] / "model.safetensors").is_file()


def test_a_used_run_directory_is_refused_without_resume_or_overwrite(
    first_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tree(first_run)
    code, _, err = run_cli([*TRAIN, "--run-dir", str(first_run)], capsys)
    assert code == 2
    assert "is not empty" in err and "--resume" in err and "--overwrite" in err
    assert tree(first_run) == before


def test_overwrite_deletes_the_old_run_first(first_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["train", "--max-steps", "2", "--quiet", "--run-dir", str(first_run), "--overwrite"], capsys)
    assert code == 0, err
    checkpoints = sorted(p.name for p in (first_run / "checkpoints").iterdir() if p.is_dir())
    assert "step-000004" not in checkpoints and "step-000002" in checkpoints  # the old run's later one is gone


def test_overwrite_never_deletes_a_folder_that_is_no_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    code, _, err = run_cli([*TRAIN, "--run-dir", str(folder), "--overwrite"], capsys)
    assert code == 2 and "not a torchsmith run directory" in err
    assert (folder / "thesis.tex").read_text() == "precious"


def test_resume_from_a_runs_config_continues_that_run(first_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "--config", str(first_run / "config.yaml"), "--resume", "--max-steps", "6", "--quiet"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert (first_run / "checkpoints" / "step-000006").is_dir()


def test_a_config_files_run_dir_is_ignored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "mine.yaml"
    target = tmp_path / "from-file"
    config.write_text(f"run_dir: {target}\ntrain: {{max_steps: 1}}\n")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["train", "--config", str(config), "--quiet"], capsys)
    assert code == 0, err
    assert not target.exists() and len(list((tmp_path / "runs").iterdir())) == 1


def test_a_second_process_on_a_run_directory_in_use_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "busy"
    holder = RunLock()
    holder.acquire(run)  # as a training process holds it
    try:
        result = run_process([*TRAIN, "--run-dir", str(run)])
    finally:
        holder.release()
    assert result.returncode == 2, result.stderr
    assert f"run directory {run} is in use" in result.stderr and f"pid {os.getpid()}" in result.stderr
    assert "Traceback" not in result.stderr


def test_evaluate_reads_a_checkpoint_while_training_replaces_it(
    first_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    last = first_run / "checkpoints" / "last"
    aside = last.with_name(".tmp-last-1-old")
    holder = RunLock()
    holder.acquire(first_run)  # a trainer is at work here...
    os.rename(last, aside)  # ...between the two renames of replacing `last`

    def finish_the_save() -> None:
        time.sleep(0.3)
        os.rename(aside, last)
        holder.release()

    saver = threading.Thread(target=finish_the_save)
    saver.start()
    try:
        code, out, err = run_cli(["evaluate", str(first_run), "--checkpoint", "last"], capsys)
    finally:
        saver.join()
    assert code == 0, err
    assert "accuracy" in out


def test_runs_started_in_the_same_second_get_their_own_default_directories(tmp_path: Path) -> None:
    base = tmp_path / "runs" / "Net-mnist-20261203-211019"
    first, second = RunLock(), RunLock()
    taken = claim_new_run_dir(base, first)
    other = claim_new_run_dir(base, second)  # the first still holds its lock: the next name
    assert (taken, other) == (base, base.with_name(base.name + "-2"))
    first.release()
    second.release()
    (base / "config.yaml").parent.mkdir(parents=True)
    (base / "config.yaml").write_text("a finished run\n")
    third = RunLock()
    assert claim_new_run_dir(base, third) == base.with_name(base.name + "-2")  # never into a used one
    third.release()
