"""The run directory's metric files: metrics.csv and TensorBoard events.

Only the writing rank writes (rank 0 under torch.distributed); others keep nothing.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchsmith.callbacks.base import Callback
from torchsmith.io import rank
from torchsmith.io.files import atomic_write_text

if TYPE_CHECKING:
    from torchsmith.train.trainer import Trainer

STEP_KEYS = ("train_loss", "train_accuracy", "train_perplexity", "lr", "grad_norm", "samples_per_s")


class MetricsLogger(Callback):
    """Appends a row per log point and per epoch to `metrics.csv`, and the same scalars to `tb/`;
    `train_*` there is the mean over each log interval (an epoch's row: since the last log point).

    Rows are kept in memory and the CSV is rewritten atomically at each epoch end, so
    columns that first appear later (val_*) get a header without breaking readers.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True, rows: list[dict[str, Any]] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.rows: list[dict[str, Any]] = rows or []
        self.tensorboard = tensorboard
        self.writer: Any = None
        self._written: set[str] = set()
        self._written_step = -1
        self.tensorboard_s = 0.0  # seconds spent in TensorBoard's writer (`--profile-startup` shows them)

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.tensorboard and self.writer is None and rank.is_writer():
            start = time.perf_counter()
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"))
            self.tensorboard_s += time.perf_counter() - start

    def on_step_end(self, trainer: Trainer) -> None:
        state = trainer.state
        if state.metrics_updated:
            if state.train_time_s > 0:
                state.metrics["samples_per_s"] = state.samples_seen / state.train_time_s
            self._add(
                self._with_interval({k: state.metrics[k] for k in STEP_KEYS if k in state.metrics}, trainer), trainer
            )
        if state.evaluated:  # a mid-epoch evaluation (train.eval_every): its own row of val_* values
            self._add({k: v for k, v in state.metrics.items() if k.startswith("val_")}, trainer)

    def on_epoch_end(self, trainer: Trainer) -> None:
        metrics = {k: v for k, v in trainer.state.metrics.items() if k != "epoch_time_s"}
        self._add(self._with_interval(metrics, trainer), trainer)
        self.flush()

    @staticmethod
    def _with_interval(metrics: dict[str, float], trainer: Trainer) -> dict[str, float]:
        """`train_*` as the mean over the log interval that just ended, not the epoch's running mean
        (`state.metrics`, which the epoch lines and summary.json report), so the curve does not
        drop at each epoch boundary."""
        return {**metrics, **trainer.train_metrics.interval}

    def on_fit_end(self, trainer: Trainer) -> None:
        self.flush()
        if self.writer is not None:
            start = time.perf_counter()
            self.writer.close()
            self.writer = None
            self.tensorboard_s += time.perf_counter() - start

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        self.on_fit_end(trainer)

    def _add(self, metrics: dict[str, float], trainer: Trainer) -> None:
        state = trainer.state
        self.rows.append({"epoch": state.epoch + 1, "step": state.step, **metrics})
        if self.writer is not None:
            start = time.perf_counter()
            # One point per scalar and step: an epoch's end that is also a log step adds
            # only what the log point did not already write.
            written = self._written if self._written_step == state.step else set()
            for key, value in metrics.items():
                if key not in written:
                    self.writer.add_scalar(key, value, state.step)
            self._written, self._written_step = written | set(metrics), state.step
            self.tensorboard_s += time.perf_counter() - start

    def flush(self) -> None:
        if not rank.is_writer():
            return
        columns: list[str] = ["epoch", "step"]
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.run_dir / "metrics.csv", buffer.getvalue())
        if self.writer is not None:
            start = time.perf_counter()
            self.writer.flush()
            self.tensorboard_s += time.perf_counter() - start

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = list(state["rows"])
