"""Running a sweep's trials: an Optuna study in a database, trials as ordinary runs.

Each trial is `app.train_run` in this process, with the base config and the trial's
settings, writing its own run directory under the sweep's folder. In-process, because a
trial then costs no interpreter start and no second copy of the data's import; separate
processes come from `--workers N` (one study, several processes: see sweep/workers.py).

The study lives in a database (`--storage`, by default SQLite in the sweep's folder), so
that several processes and machines share it and a killed sweep resumes:

- Optuna hands each trial to one process (a waiting trial is taken atomically), so no
  trial runs twice;
- a trial stopped by SIGINT/SIGTERM is marked failed and queued again at once; a trial
  whose process died without a word (kill -9, a lost machine) stops sending heartbeats and
  is queued again by the next process that starts a trial after the grace period;
- `--trials N` is the study's total over every process: finished, pruned, failed (with a
  reason), running and queued trials count; interrupted ones do not, their re-runs do.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchsmith.app import train_run
from torchsmith.callbacks.base import Callback
from torchsmith.config import RunConfig
from torchsmith.errors import Interrupted, TorchsmithError, UsageError
from torchsmith.sweep.space import SearchParam, assign, lookup

HEARTBEAT_S, GRACE_S = 20, 60  # a trial with no heartbeat for GRACE_S seconds is queued again


class TrialFailed(Exception):
    """A trial that could not finish (NaN stop, a bad combination): recorded, the sweep goes on."""


@dataclass
class SweepPlan:
    base: dict[str, Any]  # the resolved base config
    space: list[SearchParam]
    folder: Path
    metric: str = "val_loss"
    direction: str = "minimize"
    trials: int = 20
    sampler: str = "tpe"
    pruner: str = "median"
    storage: str = ""
    study_name: str = ""
    sampler_seed: int | None = None  # None: each process samples differently (a fixed seed would repeat)
    printed: list[int] = field(default_factory=list)

    def trial_config(self, values: dict[str, Any], run_dir: Path) -> RunConfig:
        tree = dict(self.base)
        for key, value in values.items():
            tree = assign(tree, key, value)
        tree["run_dir"] = str(run_dir)
        return RunConfig.from_dict(tree)


def make_plan(base: RunConfig, space: list[SearchParam], folder: Path, **options: Any) -> SweepPlan:
    """Check everything before the first trial: the searched keys, the metric, the counts."""
    values = base.to_dict()
    plan = SweepPlan(values, space, folder, **options)
    plan.storage = plan.storage or f"sqlite:///{(folder / 'study.db').resolve()}"
    plan.study_name = plan.study_name or folder.name
    if plan.trials <= 0:
        raise UsageError(f"--trials must be a positive integer, got {plan.trials}")
    split = plan.metric.partition("_")[0]
    if split not in ("val", "test", "train"):
        raise UsageError(f"--metric must name a val_, test_ or train_ metric (e.g. val_accuracy), got {plan.metric}")
    if split == "val" and not values["data"]["val_fraction"]:
        raise UsageError(f"--metric {plan.metric} needs a validation split: add --val-fraction 0.1")
    for param in space:  # unknown keys and wrong types, with the config's own messages
        sample = param.choices[0] if param.kind == "choice" else param.low
        plan.trial_config({param.key: int(sample) if param.kind == "int" else sample}, folder)
    return plan


def open_study(plan: SweepPlan) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trials are reported by print_trial
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=plan.sampler_seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=plan.sampler_seed),
        "grid": lambda: optuna.samplers.GridSampler({p.key: p.grid() for p in plan.space}, seed=plan.sampler_seed),
    }
    epochs = plan.base["train"]["max_epochs"]
    pruners = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs),
        "none": lambda: optuna.pruners.NopPruner(),
    }
    engine = {"connect_args": {"timeout": 60}} if plan.storage.startswith("sqlite") else None
    plan.folder.mkdir(parents=True, exist_ok=True)
    sampler, pruner = samplers[plan.sampler](), pruners[plan.pruner]()
    direction = optuna.study.StudyDirection[plan.direction.upper()]

    def create_or_join() -> Any:  # the process that creates the study queues the base trial; the others join it
        storage = _open_storage(plan.storage, engine)
        try:
            study = optuna.create_study(
                storage=storage, study_name=plan.study_name, sampler=sampler, pruner=pruner, direction=direction
            )
        except optuna.exceptions.DuplicatedStudyError:
            return optuna.load_study(storage=storage, study_name=plan.study_name, sampler=sampler, pruner=pruner)
        enqueue_base(study, plan)
        return study

    return _retry_while_racing(create_or_join)


def _open_storage(url: str, engine: dict[str, Any] | None) -> Any:
    """Optuna's RDB storage, with the heartbeats that find trials of killed processes."""
    import optuna

    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.8; we rely on them
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
        )
    if url.startswith("sqlite"):
        serialize_sqlite(storage.engine)
    return storage


def serialize_sqlite(engine: Any) -> None:
    """Make each SQLite transaction take the database's write lock when it begins.

    Python's sqlite3 opens a transaction only at its first write, so Optuna's "take a waiting
    trial" (read its state, then set RUNNING where it is still WAITING) is no atomic step there: two
    processes could both take the queued base trial and run it twice, the second failing the first.
    `BEGIN IMMEDIATE` (SQLAlchemy's recipe for pysqlite) makes the read and the write one step;
    PostgreSQL and MySQL lock the row themselves.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _connect(connection: Any, record: Any) -> None:
        connection.isolation_level = None  # let the listener below say when a transaction begins

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners: closed, the next ones get them


def _retry_while_racing(step: Callable[[], Any], attempts: int = 8) -> Any:
    """Processes that start on one new database at the same moment race to create its tables and
    its study ("table studies already exists", "database is locked"): the loser waits and tries
    again, and then finds them made."""
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            return step()
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def enqueue_base(study: Any, plan: SweepPlan) -> None:
    """The base config's own settings run first (once per study), when they lie inside the space:
    the sweep then starts from what it is meant to beat. Not with the grid sampler: the grid holds
    the base's point already, and Optuna's grid does not count a queued trial as visiting it, so
    that point would run twice and another not at all."""
    if plan.sampler == "grid":
        return
    values = {p.key: p.base_value(lookup(plan.base, p.key)) for p in plan.space}
    if all(value is not None for value in values.values()):
        study.enqueue_trial(values, user_attrs={"base": True}, skip_if_exists=True)


def counted(study: Any) -> int:
    """Trials that count toward --trials: all but the interrupted ones (their re-runs count)."""
    from optuna.trial import TrialState

    return sum(
        1
        for trial in study.get_trials(deepcopy=False)
        if trial.state != TrialState.FAIL or "fail_reason" in trial.user_attrs
    )


def run_worker(study: Any, plan: SweepPlan) -> None:
    """Run trials until the study holds `plan.trials` of them; Interrupted leaves at once."""
    while counted(study) < plan.trials:
        study.optimize(
            lambda trial: objective(trial, plan),
            n_trials=1,
            catch=(TrialFailed,),
            callbacks=[lambda _, trial: print_trial(trial, plan)],
        )


def objective(trial: Any, plan: SweepPlan) -> float:
    import optuna

    values = {param.key: param.suggest(trial) for param in plan.space}
    run_dir = plan.folder / f"trial-{trial.number:04d}"
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    pruning = PruneOnEpoch(trial, plan.metric)
    try:
        config = plan.trial_config(values, run_dir)
        result = train_run(config, quiet=True, callbacks=[pruning])
    except (Interrupted, KeyboardInterrupt):  # SIGINT/SIGTERM: this trial runs again, first, on resume
        trial.set_user_attr("interrupted", True)
        trial.study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number})
        raise
    except TorchsmithError as error:
        trial.set_user_attr("fail_reason", str(error))
        raise TrialFailed(str(error)) from error
    except Exception as error:  # a bug in the user's model for these settings: recorded, the sweep goes on
        trial.set_user_attr("fail_reason", f"{type(error).__name__}: {error}")
        raise TrialFailed(str(error)) from error
    trial.set_user_attr("epochs", result.summary.get("epochs"))
    if pruning.pruned_at:
        raise optuna.TrialPruned(f"pruned after epoch {pruning.pruned_at}")
    value = metric_value(result.summary, plan.metric)
    if value is None:
        reason = f"the run has no finite {plan.metric} (status {result.summary.get('status')})"
        trial.set_user_attr("fail_reason", reason)
        raise TrialFailed(reason)
    return value


def metric_value(summary: dict[str, Any], metric: str) -> float | None:
    """val_accuracy -> summary["val"]["accuracy"]; None when absent or not finite."""
    split, _, name = metric.partition("_")
    value = (summary.get(split) or {}).get(name)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


class PruneOnEpoch(Callback):
    """Reports the metric to Optuna after each epoch's validation and stops a trial the pruner drops."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self.pruned_at = 0

    def on_epoch_end(self, trainer: Any) -> None:
        value = trainer.state.metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        state = trainer.state
        epoch = state.epoch + 1
        self.trial.report(float(value), epoch)
        last = epoch >= state.max_epochs or (state.max_steps is not None and state.step >= state.max_steps)
        if not last and self.trial.should_prune():  # a trial that ran to its end is not pruned
            self.pruned_at = epoch
            trainer.state.request_stop(f"pruned by the sweep after epoch {epoch}")


def print_trial(trial: Any, plan: SweepPlan) -> None:
    settings = "  ".join(f"{key.rpartition('.')[2]}={value}" for key, value in trial.params.items())
    if trial.state.name == "COMPLETE":
        outcome = f"{plan.metric} {trial.value:.4f}"
    elif trial.state.name == "PRUNED":
        outcome = f"pruned after epoch {max(trial.intermediate_values, default=0)}"
    else:
        outcome = f"failed: {trial.user_attrs.get('fail_reason', 'interrupted')}"
    print(f"trial {trial.number}: {outcome}  {settings}", file=sys.stderr, flush=True)
