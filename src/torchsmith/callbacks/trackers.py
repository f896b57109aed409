"""Experiment trackers (MLflow, Weights & Biases) as a callback: the run, also where people look.

The tracker sends what the run directory already holds: the resolved config as parameters,
each row of `metrics.csv` as the `MetricsLogger` adds it (so it costs no host sync beyond the
logger's own), the NaN doctor's events as tags, and at the end the run's files as artifacts.
Only the writing rank (rank 0) tracks.

Every call to the tracker runs on one background thread, in order. A tracker that fails or
hangs (server down, disk full, quota) never stops or slows training: the first failure prints
one warning, nothing more is tried, and what was not sent is listed in `summary.json`. At the
end the run waits at most `track.timeout_s` for the queue to drain.

Example:
    >>> from torchsmith.config import TrackConfig
    >>> tracker_backend(TrackConfig(backend="mlflow", uri="sqlite:///mlflow.db"), Path("runs/a")).name
    'mlflow'
"""

from __future__ import annotations

import functools
import importlib.util
import json
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchsmith.callbacks.base import Callback
from torchsmith.callbacks.metrics_logger import MetricsLogger
from torchsmith.callbacks.tracker_backends import Backend, MLflowBackend, WandbBackend
from torchsmith.config import RunConfig, TrackConfig
from torchsmith.errors import UsageError
from torchsmith.io import rank
from torchsmith.io.files import write_json

if TYPE_CHECKING:
    from torchsmith.train.trainer import Trainer

TRACKING_FILE = "tracking.json"  # the tracker's run id, so that --resume continues the same run
ARTIFACTS = ("report.html", "config.yaml", "summary.json", "doctor.json", "model_summary.txt", "metrics.csv")
PACKAGES = {"mlflow": "mlflow", "wandb": "wandb"}


def require(backend: str, packages: dict[str, str] = PACKAGES) -> None:
    """Stop before training with the pip command when the tracker's package is not installed."""
    package = packages.get(backend)
    if package and importlib.util.find_spec(package) is None:
        raise UsageError(
            f"--track {backend} needs the {package} package, which is not installed: "
            f"pip install 'torchsmith[{backend}]'"
        )


def tracker_backend(config: TrackConfig, run_dir: Path) -> Backend:
    run_name = config.run_name or run_dir.name
    if config.backend == "mlflow":
        return MLflowBackend(config.uri, config.experiment, run_name)
    if config.backend == "wandb":
        return WandbBackend(config.experiment, run_name, run_dir, offline=config.offline, timeout_s=config.timeout_s)
    raise UsageError(f"track.backend must be one of none, mlflow, wandb, got '{config.backend}'")


def flat_params(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}: the resolved config as tracker parameters."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(flat_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class Tracker(Callback):
    """Logs the run to `backend` from a background thread; see the module's docstring.

    Place it after the `MetricsLogger` whose rows it sends.
    """

    def __init__(
        self,
        backend: Backend,
        logger: MetricsLogger,
        config: RunConfig,
        run_dir: Path,
        *,
        resume: bool = False,
        timeout_s: float = 10.0,
    ) -> None:
        self.backend, self.logger, self.config = backend, logger, config
        self.run_dir, self.resume, self.timeout_s = Path(run_dir), resume, timeout_s
        self.rows_sent = 0
        self.events_sent = 0
        self.run_id: str | None = None
        self.failure = ""
        self._not_sent: list[str] = []
        self._queue: queue.Queue[tuple[str, Callable[[], Any]] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._current = ""  # what the thread is sending now
        self._lock = threading.Lock()

    # ------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: Trainer) -> None:
        if self._thread is not None or not rank.is_writer():
            return
        self.backend.prepare()
        self._thread = threading.Thread(target=self._work, name=f"torchsmith-{self.backend.name}", daemon=True)
        self._thread.start()
        previous = self._previous_run_id() if self.resume else None
        self._put("run start", lambda: self._start(previous))
        if previous is None:
            params = flat_params(self.config.to_dict())
            self._put("parameters", lambda: self.backend.log_params(params))
        self.on_step_end(trainer)

    def on_step_end(self, trainer: Trainer) -> None:
        # Two length checks per step: the rows are the logger's, already plain floats.
        if self._thread is None:
            return
        rows = self.logger.rows
        if len(rows) > self.rows_sent:
            new = [dict(row) for row in rows[self.rows_sent :]]
            self.rows_sent = len(rows)
            self._put(_describe_rows(new), lambda: self.backend.log_metrics(new, time.time()))
        events = trainer.state.nan_events
        if len(events) > self.events_sent:
            new_events = list(enumerate(events))[self.events_sent :]
            tags = {f"nan_event_{i + 1}": json.dumps(event, default=str) for i, event in new_events}
            self.events_sent = len(events)
            self._put(f"tags {', '.join(tags)}", lambda: self.backend.set_tags(tags))

    def on_epoch_end(self, trainer: Trainer) -> None:
        self.on_step_end(trainer)

    def on_fit_end(self, trainer: Trainer) -> None:
        self.on_step_end(trainer)

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        self.on_step_end(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"rows_sent": self.rows_sent, "events_sent": self.events_sent}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows_sent = int(state.get("rows_sent", 0))
        self.events_sent = int(state.get("events_sent", 0))

    # ------------------------------------------------------------- end
    def finish(self, status: str) -> dict[str, Any]:
        """Send the run directory's files, end the tracker's run and wait at most `timeout_s`.

        Returns what `summary.json` records under "tracking": backend, run id, and what was
        not sent (empty when everything arrived).
        """
        if self._thread is None:
            return {}
        for name in ARTIFACTS:
            path = self.run_dir / name
            if path.is_file():
                self._put(f"artifact {name}", functools.partial(self.backend.log_artifact, path))
        self._put("run end", lambda: self.backend.end(status))
        self._queue.put(None)
        self._thread.join(self.timeout_s)
        if self._thread.is_alive():
            self._fail(f"no answer within track.timeout_s={self.timeout_s:g} s")
            self._skip(self._current)
            self._drain()
        with self._lock:
            not_sent = list(self._not_sent)
        record: dict[str, Any] = {"backend": self.backend.name, "run_id": self.run_id, "not_sent": not_sent}
        if self.failure:
            record["error"] = self.failure
        location = self.backend.location()
        if location:
            record["location"] = location
        return record

    # ------------------------------------------------------------- the thread
    def _put(self, description: str, call: Callable[[], Any]) -> None:
        self._queue.put((description, call))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            description, call = item
            if self.failure:
                self._skip(description)
                continue
            self._current = description
            try:
                call()
            except Exception as error:  # any tracker error: the run goes on without it
                self._fail(f"{type(error).__name__}: {error}")
                self._skip(description)

    def _start(self, previous: str | None) -> None:
        self.run_id = self.backend.start(previous, flat_params(self.config.to_dict()))
        record = {"backend": self.backend.name, "run_id": self.run_id, "location": self.backend.location()}
        write_json(self.run_dir / TRACKING_FILE, record)

    def _previous_run_id(self) -> str | None:
        path = self.run_dir / TRACKING_FILE
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record.get("run_id") if record.get("backend") == self.backend.name else None

    def _fail(self, reason: str) -> None:
        with self._lock:
            if self.failure:
                return
            self.failure = reason
        print(
            f"warning: {self.backend.name} tracking failed ({reason}); training goes on, and what was not "
            f"sent is listed in summary.json",
            file=sys.stderr,
        )

    def _skip(self, description: str) -> None:
        with self._lock:
            self._not_sent.append(description)

    def _drain(self) -> None:
        """After a timeout: whatever is still queued is not going to be sent."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._skip(item[0])


def _describe_rows(rows: list[dict[str, Any]]) -> str:
    steps = [int(row["step"]) for row in rows]
    if len(steps) == 1:
        return f"metrics at step {steps[0]}"
    return f"metrics: {len(steps)} rows, steps {steps[0]}-{steps[-1]}"


def make_tracker(config: RunConfig, logger: MetricsLogger, run_dir: Path, resume: bool) -> Tracker:
    require(config.track.backend)
    backend = tracker_backend(config.track, run_dir)
    return Tracker(backend, logger, config, run_dir, resume=resume, timeout_s=config.track.timeout_s)
