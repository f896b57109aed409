"""`torchsmith train` as a function: config -> data -> model -> pre-flight -> fit -> run directory."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from torchsmith.after.transfer import start_model
from torchsmith.callbacks.base import Callback
from torchsmith.callbacks.checkpointer import Checkpointer
from torchsmith.callbacks.early_stopping import EarlyStopping
from torchsmith.callbacks.metrics_logger import MetricsLogger
from torchsmith.callbacks.signals import StopOnSignal
from torchsmith.callbacks.trackers import Tracker, make_tracker
from torchsmith.callbacks.trackers import require as require_tracker
from torchsmith.config import RunConfig, save_yaml
from torchsmith.data.bundle import DataBundle, MemorySource
from torchsmith.data.registry import load_data
from torchsmith.errors import (
    Interrupted,
    TorchsmithError,
    TrainingFailure,
    UsageError,
    signal_exit_code,
)
from torchsmith.io import rank
from torchsmith.io.files import write_json
from torchsmith.io.run_lock import RunLock, claim_new_run_dir, claim_run_dir
from torchsmith.models import trust
from torchsmith.phases import PhaseClock
from torchsmith.report.html import write_report
from torchsmith.report.model_summary import summary as model_summary
from torchsmith.report.predictions import most_confident_mistakes, save_predictions
from torchsmith.report.regression import save_test_regression
from torchsmith.run_summary import base_summary, finish
from torchsmith.train import distributed
from torchsmith.train.capture import decide as decide_capture
from torchsmith.train.tasks import task_for_data
from torchsmith.train.trainer import Trainer


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    trainer: Trainer


def default_run_dir(config: RunConfig) -> Path:
    model = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.model.name.rpartition(":")[2] or config.model.name)
    data = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.data.name.partition(":")[0])
    return Path("runs") / f"{model}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"


def train_run(
    config: RunConfig,
    *,
    quiet: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
    clock: PhaseClock | None = None,
) -> RunResult:
    """Train as the config says and write the run directory; returns its summary.

    A run directory holds one run: one that is not empty is refused unless `resume` (continue
    from its newest complete checkpoint) or `overwrite` (delete the old run first), and a lock
    held while training refuses a second process. Under torchrun every process runs this; rank 0
    alone writes the run directory. `callbacks` are added after the built-in ones (a sweep's
    pruning callback, for one). `clock` books each phase's seconds (`--profile-startup`).
    """
    if config.track.backend != "none":
        require_tracker(config.track.backend)  # before any work: the pip command when it is missing
    distributed.setup(config.train)  # under torchrun: join the process group first
    lock = RunLock()  # taken by rank 0 alone, in claim_run_dir
    if config.run_dir or resume:
        folder = Path(config.run_dir) if config.run_dir else default_run_dir(config)
        run_dir, resume = rank.from_writer(lambda: claim_run_dir(folder, resume, overwrite, lock))
    else:  # a new default name: the next free one if another run took this second's
        run_dir = rank.from_writer(lambda: claim_new_run_dir(default_run_dir(config), lock))
    try:
        return train_in(config, run_dir, resume=resume, quiet=quiet, callbacks=callbacks, clock=clock)
    finally:
        lock.release()


def train_in(
    config: RunConfig,
    run_dir: Path,
    *,
    resume: bool,
    quiet: bool,
    callbacks: Sequence[Callback] = (),
    clock: PhaseClock | None = None,
) -> RunResult:
    """The body of `train_run` once the run directory is claimed."""
    writer = rank.is_writer()
    clock = clock or PhaseClock()
    clock.lap("run directory")
    bundle = load_data(config.data, config.train.seed)
    clock.lap("data load")
    if writer and not quiet:
        report_data_notes(bundle)
    choice = bundle.info.preprocessing.get("tokenizer_choice")
    if choice and not quiet and writer:
        print(f"tokenizer: {choice}", file=sys.stderr)
    check_monitor(config.train.monitor, bundle)
    torch.manual_seed(config.train.seed)
    start = start_model(config, bundle)  # the model, with starting weights if asked for
    model = start.model
    if config.model.init == "whitening":
        whitening_init(model, bundle)
    if quiet:
        config.train.progress = "none"
    for line in start.notes if writer and not quiet else ():
        print(line, file=sys.stderr)
    trainer = Trainer(
        model,
        loss=config.loss,
        optimizer=start.optimizer or config.optim.name,
        task=task_for_data(bundle.info),
        model_output=config.model.output,
        config=config.train,
        optim=config.optim,
        callbacks=[
            *make_callbacks(config, run_dir, resume=resume),
            *([start.finetune] if start.finetune else []),
            *callbacks,
        ],
    )
    capture = decide_capture(
        config.train,
        device=trainer.device,
        optimizer=start.optimizer or config.optim.name,
        in_memory=isinstance(bundle.train, MemorySource),
    )
    if writer and not quiet and trainer.device.type == "cuda":  # on the CPU it is off, and obviously so
        print(capture.to_text(), file=sys.stderr)
    clock.lap("model build")
    batch = first_batch(trainer, bundle)
    findings = preflight(trainer, bundle, batch, start.findings)
    clock.lap("pre-flight")
    config.run_dir = str(run_dir)
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(config, run_dir / "config.yaml")
        write_json(run_dir / "preprocessing.json", info_dict(bundle))
        if (source := trust.source_record(config.model.name)) is not None:
            write_json(run_dir / trust.SOURCE_FILE, source)  # the hash replays compare against
        write_model_summary(trainer, batch[0], run_dir, quiet)
    clock.lap("model summary")
    summary = base_summary(config, trainer)
    if bundle.info.problems:
        summary["skipped_files"] = bundle.info.problems  # also in doctor.json
    if findings:
        summary["preflight"] = [f.to_dict() for f in findings]
    if start.report is not None:
        summary["start"] = start.summary()
    summary["capture"] = capture.to_text()
    try:
        trainer.fit(bundle.train, bundle.val, resume=resume)
    except TorchsmithError as error:  # NaN guard, checkpoints: under DDP, the same on every rank
        finish(run_dir, trainer, summary, "failed", error=str(error))
        end_tracking(trainer, run_dir, summary, "failed")
        rank.settle()
        raise
    except Exception as error:  # an error inside the user's model or loss, or a lost process
        finish(run_dir, trainer, summary, "failed", error=f"{type(error).__name__}: {error}")
        end_tracking(trainer, run_dir, summary, "failed")
        raise TrainingFailure(
            f"training failed at step {trainer.state.step}: {type(error).__name__}: {error}"
        ) from error
    clock.lap("training")
    clock.move("training", "tensorboard", tensorboard_seconds(trainer))
    stop_signal = trainer.state.stop_signal  # under DDP: agreed, the same on every rank
    if stop_signal:
        finish(run_dir, trainer, summary, "stopped")
        end_tracking(trainer, run_dir, summary, "stopped")
        rank.settle()
        rank.shutdown()
        raise Interrupted(stop_signal, signal_exit_code(stop_signal), step=trainer.state.step)
    if bundle.test is not None:
        summary["test"] = test_and_save_predictions(trainer, bundle, run_dir)
    clock.lap("test evaluation")
    finish(run_dir, trainer, summary, trainer.state.status)
    clock.lap("summary and weights")
    if writer:
        write_report(run_dir)
    clock.lap("report")
    end_tracking(trainer, run_dir, summary, trainer.state.status)
    rank.settle()
    rank.shutdown()
    return RunResult(run_dir, summary, trainer)


def tensorboard_seconds(trainer: Trainer) -> float:
    """Seconds the run's MetricsLogger spent writing TensorBoard events (inside `fit`)."""
    logger = next((c for c in trainer.callbacks if isinstance(c, MetricsLogger)), None)
    return logger.tensorboard_s if logger is not None else 0.0


def report_data_notes(bundle: DataBundle) -> None:
    """What the data reader decided or skipped: the size it chose, the files it could not read."""
    preprocessing, problems = bundle.info.preprocessing, bundle.info.problems
    if preprocessing.get("size_note"):
        print(f"note: {preprocessing['size_note']}", file=sys.stderr)
    if problems:
        shown = ", ".join(Path(p["file"]).name for p in problems[:3])
        print(
            f"warning: skipped {len(problems)} file(s) that could not be read as images ({shown}"
            f"{', ...' if len(problems) > 3 else ''}); all are listed in doctor.json",
            file=sys.stderr,
        )


def check_monitor(monitor: str, bundle: DataBundle) -> None:
    """A val_ metric needs a validation split: said now, not after the first epoch (the Trainer
    checks that the name is one of the task's metrics)."""
    if monitor.startswith("val_") and monitor != "val_loss" and bundle.val is None:
        raise UsageError(
            f"train.monitor '{monitor}' names no metric this run logs: this data has no validation split "
            f"(data.val_fraction is 0). Monitor a train_ metric (e.g. --set train.monitor=train_loss) "
            f"or keep a validation split."
        )


def test_and_save_predictions(trainer: Trainer, bundle: DataBundle, run_dir: Path) -> dict[str, float]:
    """Evaluate the test split once; keep its class probabilities for the report."""
    collected: list[tuple[torch.Tensor, torch.Tensor]] = []
    metrics = trainer.evaluate(bundle.test, collect=collected)
    if rank.is_writer() and collected and bundle.info.task == "regression":
        save_test_regression(run_dir, collected, bundle.info)
    if not rank.is_writer() or bundle.info.task != "classification" or not collected or collected[0][0].dim() != 2:
        return metrics
    targets = torch.cat([t for _, t in collected])
    probabilities = torch.cat([o for o, _ in collected]).softmax(dim=1)
    indices = most_confident_mistakes(targets, probabilities, k=16)
    describe = getattr(bundle.test, "examples", None)
    extra = describe(indices) if describe is not None and len(indices) else {}
    save_predictions(
        run_dir,
        targets,
        probabilities,
        bundle.info.class_names,
        bundle.info.modality,
        example_indices=indices if extra else None,
        **extra,
    )
    return metrics


def whitening_init(model: torch.nn.Module, bundle: DataBundle) -> None:
    """Set SpeedNet's first conv from the covariance of the training images' patches."""
    from torchsmith.models.speednet import init_whitening

    images = getattr(bundle.train, "images", None)
    if images is None or not hasattr(model, "whiten"):
        raise UsageError("model.init=whitening needs image data held in memory and a model with a `whiten` conv")
    preprocessing = bundle.info.preprocessing
    init_whitening(model, images[:5000], mean=preprocessing["mean"], std=preprocessing["std"])


def first_batch(trainer: Trainer, bundle: DataBundle) -> tuple[Any, Any]:
    """The first training batch, unaugmented: what pre-flight and the model summary look at.

    At the training batch size, not evaluation's (often 1,000 rows): pre-flight's two forward
    passes on an evaluation batch cost as much as ten training steps of a convnet on 64x64 photos."""
    first = trainer.batches(bundle.train, train=False, size=trainer.config.batch_size)
    inputs, targets, _ = next(iter(first.epoch(0)))
    return inputs, targets


def preflight(trainer: Trainer, bundle: DataBundle, batch: tuple[Any, Any], earlier: Sequence[Any] = ()) -> list[Any]:
    """Check one batch before the first step; stop with a clear message when it cannot train.
    `earlier`: findings made while building the model (e.g. images far smaller than a backbone's)."""
    from torchsmith.doctor.preflight import preflight as run_preflight
    from torchsmith.doctor.preflight import raise_for_errors

    inputs, targets = batch
    trainer.setup(for_training=False)
    findings = list(earlier) + run_preflight(
        trainer.model,
        trainer.to_device(inputs),
        trainer.to_device(targets),
        task=bundle.info.task,
        num_classes=bundle.info.num_classes,
        loss_fn=trainer.output_loss,
        select=lambda raw: trainer.select_output(raw)[0],
    )
    for finding in findings if rank.is_writer() else ():
        if finding.level == "warning":
            print(f"warning: {finding.message}", file=sys.stderr)
    raise_for_errors(findings)
    return findings


def write_model_summary(trainer: Trainer, inputs: Any, run_dir: Path, quiet: bool) -> None:
    """The layer table: saved in full to the run directory, printed in short form."""
    table = model_summary(trainer.model, trainer.to_device(inputs[:2]), batch_size=trainer.config.batch_size)
    (run_dir / "model_summary.txt").write_text(table.to_text() + "\n", encoding="utf-8")
    if not quiet:
        print(table.to_text(short=True), file=sys.stderr)


def make_callbacks(config: RunConfig, run_dir: Path, resume: bool = False) -> list[Callback]:
    train = config.train
    logger = MetricsLogger(run_dir)
    callbacks: list[Callback] = [
        logger,
        Checkpointer(
            run_dir, config.to_dict(), train.checkpoint_every, train.keep_last, train.monitor, train.keep_best
        ),
        StopOnSignal(),
    ]
    if train.ema_decay is not None:
        from torchsmith.callbacks.ema import EMACallback

        # First: a checkpoint saved in the same hook then holds this step's average.
        callbacks.insert(
            0,
            EMACallback(
                train.ema_decay, train.ema_every, lookahead=train.ema_lookahead, warmup_power=train.ema_warmup_power
            ),
        )
    if train.freeze_whitening_bias_after is not None:
        from torchsmith.callbacks.whitening import WhitenBiasFreeze

        callbacks.append(WhitenBiasFreeze(train.freeze_whitening_bias_after))
    if config.train.early_stopping_patience:
        callbacks.append(EarlyStopping(config.train.monitor, config.train.early_stopping_patience))
    if config.track.backend != "none":
        callbacks.append(make_tracker(config, logger, run_dir, resume))  # sends the logger's rows
    return callbacks


def end_tracking(trainer: Trainer, run_dir: Path, summary: dict[str, Any], status: str) -> None:
    """Send the run's files to the tracker and record in summary.json what did not arrive."""
    tracker = next((c for c in trainer.callbacks if isinstance(c, Tracker)), None)
    record = tracker.finish(status) if tracker is not None else {}
    if record and rank.is_writer():
        summary["tracking"] = record
        write_json(run_dir / "summary.json", summary)


def info_dict(bundle: DataBundle) -> dict[str, Any]:
    info = bundle.info
    return {
        "modality": info.modality,
        "task": info.task,
        "num_classes": info.num_classes,
        "class_names": info.class_names,
        "input_shape": list(info.input_shape),
        "preprocessing": info.preprocessing,
    }
