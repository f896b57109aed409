"""Experiment trackers: MLflow read back with its own client, W&B offline files, a tracker
that fails or hangs leaving training alone, resume continuing the same tracker run."""

from __future__ import annotations

import csv
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import tiny_mlp

from torchsmith.callbacks.metrics_logger import MetricsLogger
from torchsmith.callbacks.trackers import Tracker, flat_params, require
from torchsmith.cli.main import main
from torchsmith.config import OptimConfig, RunConfig
from torchsmith.errors import UsageError
from torchsmith.train.trainer import Trainer

TRAIN = ["train", "--epochs", "1", "--lr", "0.002", "--quiet", "--set", "train.log_every=40"]


def read_summary(run: Path) -> dict[str, Any]:
    return json.loads((run / "summary.json").read_text())


class Recording:
    """A backend that keeps every call, to check what the Tracker sends and when."""

    name = "recording"

    def __init__(self, fail_on: str = "") -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail_on = fail_on

    def _record(self, what: str, value: Any) -> None:
        if what == self.fail_on:
            raise OSError("disk full")
        self.calls.append((what, value))

    def prepare(self) -> None: ...
    def start(self, run_id: str | None, params: dict[str, Any]) -> str:
        self._record("start", run_id)
        return run_id or "run-1"

    def log_params(self, params: dict[str, Any]) -> None:
        self._record("params", params)

    def log_metrics(self, rows: list[dict[str, Any]], timestamp: float) -> None:
        self._record("metrics", rows)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._record("tags", tags)

    def log_artifact(self, path: Path) -> None:
        self._record("artifact", path.name)

    def end(self, status: str) -> None:
        self._record("end", status)

    def location(self) -> str:
        return ""


def fit_tracked(backend: Recording, tmp_path: Path, data: Any) -> tuple[Trainer, MetricsLogger, dict[str, Any]]:
    logger = MetricsLogger(tmp_path, tensorboard=False)
    tracker = Tracker(backend, logger, RunConfig(), tmp_path, timeout_s=5)  # type: ignore[arg-type]
    trainer = Trainer(
        tiny_mlp(),
        optimizer="adamw",
        optim=OptimConfig(lr=0.02, scheduler="none"),
        max_epochs=2,
        batch_size=32,
        progress="none",
        on_nan="skip",
        callbacks=[logger, tracker],
        log_every=3,
    )
    trainer.fit(data)
    return trainer, logger, tracker.finish("completed")


def test_tracker_sends_every_logged_row_and_nan_events_as_tags(blobs, tmp_path: Path) -> None:
    x, y = blobs
    x = x.clone()
    x[7] = float("nan")  # one poisoned sample: one skipped step per epoch
    backend = Recording()
    trainer, logger, record = fit_tracked(backend, tmp_path, (x, y))
    sent = [row for what, rows in backend.calls if what == "metrics" for row in rows]
    assert sent == logger.rows and len(sent) == 4 + 2  # 14 steps (2 skipped): 4 log points, 2 epoch rows
    tags = {k: v for what, t in backend.calls if what == "tags" for k, v in t.items()}
    assert len(tags) == len(trainer.state.nan_events) == 2
    assert json.loads(tags["nan_event_1"])["step"] == trainer.state.nan_events[0]["step"]
    params = next(p for what, p in backend.calls if what == "params")
    assert params["optim.lr"] == RunConfig().optim.lr and params["train.batch_size"] == 64
    assert backend.calls[0][0] == "start" and backend.calls[-1] == ("end", "completed")
    assert record == {"backend": "recording", "run_id": "run-1", "not_sent": []}


def test_a_failing_tracker_stops_sending_and_lists_what_was_not_sent(blobs, tmp_path: Path, capsys) -> None:
    backend = Recording(fail_on="params")
    trainer, logger, record = fit_tracked(backend, tmp_path, blobs)
    assert trainer.state.status == "completed" and len(logger.rows) == 5 + 2  # steps 3..15, two epochs
    assert [c[0] for c in backend.calls] == ["start"]
    assert record["not_sent"][0] == "parameters" and record["not_sent"][-1] == "run end"
    assert any(item.startswith("metrics") for item in record["not_sent"])
    assert record["error"] == "OSError: disk full"
    assert capsys.readouterr().err.count("warning: recording tracking failed") == 1


def test_flat_params_and_missing_package_message() -> None:
    assert flat_params({"optim": {"lr": 0.1}, "model": {"args": {}}, "loss": "nll"}) == {
        "optim.lr": 0.1,
        "model.args": {},
        "loss": "nll",
    }
    with pytest.raises(UsageError, match=r"pip install 'torchsmith\[mlflow\]'"):
        require("mlflow", {"mlflow": "no_such_package_torchsmith"})
    assert main([*TRAIN, "--track", "comet"]) == 2


def test_mlflow_local_store_read_back_with_mlflows_client(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)  # MLflow keeps a SQLite store's artifacts in ./mlruns
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = tmp_path / "run"
    common = [*TRAIN, "--run-dir", str(run), "--track", "mlflow", "--set", f"track.uri={uri}"]
    assert main(common) == 0
    summary = read_summary(run)
    run_id = summary["tracking"]["run_id"]
    assert summary["tracking"]["not_sent"] == []
    client = MlflowClient(tracking_uri=uri)
    logged = client.get_run(run_id)
    assert logged.data.params["optim.lr"] == "0.002" and logged.data.params["model.name"] == "simplenet"
    assert logged.info.status == "FINISHED"
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    history = client.get_metric_history(run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(int(r["step"]), float(r["train_loss"])) for r in rows]
    assert [m.step for m in history] == [40, 80, 120, 160, 200, 225]  # log points, then the epoch's row
    (val,) = client.get_metric_history(run_id, "val_accuracy")
    assert val.value == pytest.approx(summary["val"]["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.html", "config.yaml", "summary.json", "model_summary.txt", "metrics.csv"} <= artifacts

    # --resume continues the same MLflow run: one run in the experiment, points from both epochs
    assert main([*common[:2], "2", *common[3:], "--resume"]) == 0
    assert read_summary(run)["tracking"]["run_id"] == run_id
    epochs = client.get_metric_history(run_id, "val_accuracy")
    assert [m.step for m in epochs] == [225, 450]
    runs = client.search_runs([logged.info.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]


def test_unreachable_tracking_uri_leaves_training_and_exit_code_unchanged(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own retries, not ours to wait for
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    assert main([*TRAIN, "--run-dir", str(tmp_path / "plain")]) == 0
    tracked = [*TRAIN, "--run-dir", str(tmp_path / "down"), "--track", "mlflow"]
    assert main([*tracked, "--set", "track.uri=http://127.0.0.1:9", "--set", "track.timeout_s=5"]) == 0
    plain, down = read_summary(tmp_path / "plain"), read_summary(tmp_path / "down")
    assert down["status"] == plain["status"] == "completed"
    assert down["test"] == plain["test"] and down["steps"] == plain["steps"]
    assert down["tracking"]["not_sent"][0] == "run start" and "artifact report.html" in down["tracking"]["not_sent"]


def test_a_tracker_that_never_answers_delays_the_end_by_timeout_only(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    with socket.socket() as server:  # accepts connections (backlog) but never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        start = time.perf_counter()
        tracked = [*TRAIN, "--run-dir", str(tmp_path / "hang"), "--track", "mlflow"]
        assert main([*tracked, "--set", f"track.uri=http://127.0.0.1:{port}", "--set", "track.timeout_s=1"]) == 0
        elapsed = time.perf_counter() - start
    tracking = read_summary(tmp_path / "hang")["tracking"]
    assert tracking["error"] == "no answer within track.timeout_s=1 s"
    assert tracking["not_sent"][0] == "run start" and tracking["not_sent"][-1] == "run end"
    assert elapsed < 60  # the run itself takes a few seconds; MLflow alone would wait minutes


def test_wandb_offline_writes_its_files(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    assert main([*TRAIN, "--run-dir", str(run), "--track", "wandb", "--set", "track.offline=true"]) == 0
    tracking = read_summary(run)["tracking"]
    assert tracking["not_sent"] == [], tracking
    (folder,) = (run / "wandb").glob("offline-run-*")
    assert folder.name.endswith(tracking["run_id"])
    assert (folder / f"run-{tracking['run_id']}.wandb").stat().st_size > 1000
    assert (folder / "files" / "report.html").is_file() and (folder / "files" / "config.yaml").is_file()
