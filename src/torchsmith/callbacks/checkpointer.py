"""`Checkpointer`: saves the whole training state, atomically, so a run goes on exactly.

A checkpoint holds the unwrapped model's weights and `Trainer.state_dict()`: optimizer,
scheduler, counters `(epoch, position, step)`, the device-side metric sums of the
unfinished log interval, callback states and RNG states. Batch order, augmentation and
dropout are derived from counters, so restoring the counters restores them.
"""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from torchsmith.callbacks.base import Callback
from torchsmith.io import rank
from torchsmith.io.checkpoint import Checkpoint, checkpoint_name, find_resumable, save_checkpoint
from torchsmith.state import lower_is_better

if TYPE_CHECKING:
    from torchsmith.train.trainer import Trainer


class Checkpointer(Callback):
    """Writes `checkpoints/step-NNNNNN` every N steps or at each epoch's end, and `last`
    when training ends, stops or fails; `best` when the monitored metric improves. With
    `keep_best` K > 1 the K best by the monitored metric are kept too, as `best-step-NNNNNN`
    (`best` is always the top one)."""

    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        every_steps: int | None = None,
        keep_last: int = 2,
        monitor: str = "val_loss",
        keep_best: int = 1,
    ) -> None:
        self.folder = Path(run_dir) / "checkpoints"
        self.config, self.every_steps, self.keep_last = config, every_steps, keep_last
        self.monitor = monitor
        self.best: float | None = None
        self.keep_best = keep_best
        self.top: list[tuple[float, str]] = []  # (value, folder) of the kept best-step-N, best first

    def save(self, trainer: Trainer, name: str, all_ranks: bool = True) -> Path | None:
        """Rank 0 writes. Under DDP every rank calls this and waits until the checkpoint is complete,
        except with `all_ranks=False` (after an error, when the other ranks cannot be relied on)."""
        state = trainer.state
        training = trainer.state_dict(all_ranks)
        path = None
        bad = nonfinite_entries(trainer.model.state_dict()) if rank.is_writer() else []
        if bad:  # never replace a good checkpoint with poisoned weights or running statistics
            print(f"warning: checkpoint '{name}' not saved: non-finite values in {', '.join(bad[:5])}", file=sys.stderr)
        elif rank.is_writer():
            with trainer.inference_weights():  # the weights evaluation uses (a weight average, if kept)
                path = save_checkpoint(
                    self.folder,
                    name,
                    model_state={k: v.detach() for k, v in trainer.model.state_dict().items()},
                    training_state=training,
                    config=self.config,
                    meta={"step": state.step, "epoch": state.epoch},
                    keep_last=self.keep_last if name.startswith("step-") else None,
                )
        if all_ranks:
            rank.barrier()
        return path

    def on_step_end(self, trainer: Trainer) -> None:
        if self.every_steps and trainer.state.step % self.every_steps == 0:
            self.save(trainer, checkpoint_name(trainer.state.step))
        if trainer.state.evaluated:  # a mid-epoch evaluation (train.eval_every)
            self.consider(trainer)

    def on_epoch_end(self, trainer: Trainer) -> None:
        if not self.every_steps:
            self.save(trainer, checkpoint_name(trainer.state.step))
        self.consider(trainer)

    def consider(self, trainer: Trainer) -> None:
        """Save `best` when the monitored metric improved, and keep the top `keep_best` of them."""
        value = trainer.state.metrics.get(self.monitor)
        if value is None:
            return
        lower = lower_is_better(self.monitor)
        if self.best is None or (value < self.best if lower else value > self.best):
            self.best = value
            self.save(trainer, "best")
        if self.keep_best > 1:
            self.keep_top(trainer, value, lower)

    def keep_top(self, trainer: Trainer, value: float, lower: bool) -> None:
        ranked = sorted([*self.top, (value, "")], key=lambda item: item[0], reverse=not lower)
        if ranked.index((value, "")) >= self.keep_best:
            return  # not among the K best
        name = f"best-{checkpoint_name(trainer.state.step)}"
        self.save(trainer, name)
        self.top = [(v, n or name) for v, n in ranked]
        for _, dropped in self.top[self.keep_best :]:
            if rank.is_writer():
                shutil.rmtree(self.folder / dropped, ignore_errors=True)
        self.top = self.top[: self.keep_best]

    def on_fit_end(self, trainer: Trainer) -> None:
        self.save(trainer, "last")

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        # The NaN guard stops before the weights change, so they are still the last good ones.
        # An immediate exit (second Ctrl-C) must not write anything.
        if isinstance(error, (SystemExit, KeyboardInterrupt)):
            return
        if trainer.optimizer is not None:  # `save` refuses non-finite parameters or buffers
            self.save(trainer, "last", all_ranks=False)

    def latest(self) -> Checkpoint:
        """The newest complete checkpoint; under DDP rank 0 reads it and sends it to the others."""
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            return rank.from_writer(lambda: find_resumable(self.folder))

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "top": [list(item) for item in self.top]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.top = [(float(v), str(n)) for v, n in state.get("top", [])]


def nonfinite_entries(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """The names of floating tensors (parameters and buffers) holding NaN or Inf."""
    return [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
