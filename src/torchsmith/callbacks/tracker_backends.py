"""The tracker backends: each turns the same five calls into one library's API.

`Tracker` (callbacks/trackers.py) calls them from its background thread, in order:
`start`, `log_params`, `log_metrics` (many), `set_tags`, `log_artifact` (one per file), `end`.
The libraries are imported in `prepare`, on the training thread before the first step (an
import on the background thread would hold the interpreter while training runs), so a run
without tracking never imports them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

END_STATUS = {"completed": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}  # MLflow's run statuses


class Backend(Protocol):
    name: str

    def prepare(self) -> None: ...
    def start(self, run_id: str | None, params: dict[str, Any]) -> str: ...
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, rows: list[dict[str, Any]], timestamp: float) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_artifact(self, path: Path) -> None: ...
    def end(self, status: str) -> None: ...
    def location(self) -> str: ...


class MLflowBackend:
    """MLflow through its `MlflowClient` (no global active run, so several runs can share a process).

    Example:
        >>> MLflowBackend("sqlite:///mlflow.db", "torchsmith", "a").location()
        'sqlite:///mlflow.db'
    """

    name = "mlflow"
    BATCH = 1000  # MLflow's log_batch limit is 1000 metrics / 100 params per request

    def __init__(self, uri: str | None, experiment: str, run_name: str) -> None:
        self.uri = uri or ""  # empty: MLflow's own default (MLFLOW_TRACKING_URI, else a local store)
        self.experiment, self.run_name = experiment, run_name
        self.client: Any = None
        self.run_id = ""

    def prepare(self) -> None:
        import mlflow.entities
        import mlflow.tracking  # noqa: F401

    def start(self, run_id: str | None, params: dict[str, Any]) -> str:
        import mlflow
        from mlflow.tracking import MlflowClient

        # MLflow's default: MLFLOW_TRACKING_URI, else ./mlruns where it holds runs, else ./mlflow.db
        # (a SQLite store; MLflow 3 keeps the ./mlruns file store only for existing data).
        self.uri = self.uri or mlflow.get_tracking_uri()
        self.client = MlflowClient(tracking_uri=self.uri)
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            return run_id
        experiment = self.client.get_experiment_by_name(self.experiment)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(self.experiment)
        run = self.client.create_run(experiment_id, run_name=self.run_name, tags={"torchsmith": "train"})
        self.run_id = run.info.run_id
        return self.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, str(value)[:6000]) for key, value in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, rows: list[dict[str, Any]], timestamp: float) -> None:
        from mlflow.entities import Metric

        milliseconds = int(timestamp * 1000)
        items = [
            Metric(key, float(value), milliseconds, int(row["step"]))
            for row in rows
            for key, value in row.items()
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value)
        ]
        for start in range(0, len(items), self.BATCH):
            self.client.log_batch(self.run_id, metrics=items[start : start + self.BATCH])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(key, value[:8000]) for key, value in tags.items()])

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=END_STATUS.get(status, "FINISHED"))

    def location(self) -> str:
        return self.uri


class WandbBackend:
    """Weights & Biases: online, or offline (files under the run directory's `wandb/`, `wandb sync` later).

    Offline mode also follows W&B's own `WANDB_MODE=offline`.
    """

    name = "wandb"

    def __init__(self, project: str, run_name: str, run_dir: Path, *, offline: bool, timeout_s: float) -> None:
        self.project, self.run_name, self.run_dir = project, run_name, run_dir
        self.offline, self.timeout_s = offline, timeout_s
        self.run: Any = None
        self.step = -1

    def prepare(self) -> None:
        import wandb  # noqa: F401

    def start(self, run_id: str | None, params: dict[str, Any]) -> str:
        import wandb

        self.run = wandb.init(
            project=self.project,
            name=self.run_name,
            id=run_id,
            resume="allow" if run_id else None,
            dir=str(self.run_dir),
            mode="offline" if self.offline else None,
            config=params,
            reinit="create_new",  # a run object of its own: several runs (sweep trials) in one process
            settings=wandb.Settings(init_timeout=self.timeout_s, silent=True, console="off"),
        )
        return str(self.run.id)

    def log_params(self, params: dict[str, Any]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def log_metrics(self, rows: list[dict[str, Any]], timestamp: float) -> None:
        # W&B needs increasing steps: rows of one step (a log point that is also an epoch's end) merge.
        merged: dict[int, dict[str, Any]] = {}
        for row in rows:
            merged.setdefault(int(row["step"]), {}).update({k: v for k, v in row.items() if k != "step"})
        for step, values in sorted(merged.items()):
            if step >= self.step:
                self.run.log(values, step=step)
                self.step = step

    def set_tags(self, tags: dict[str, str]) -> None:
        self.run.tags = (*self.run.tags, *(f"nan:{key}" for key in tags))
        for key, value in tags.items():
            self.run.summary[key] = value

    def log_artifact(self, path: Path) -> None:
        self.run.save(str(path), base_path=str(path.parent), policy="now")

    def end(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "completed" else 1)

    def location(self) -> str:
        return str(self.run.dir) if self.run is not None else ""
