"""Metrics as sums on the device: `MetricAccumulator` keeps a loss sum and the task's
statistics, read once per log interval, reduced exactly across batches and ranks."""

from __future__ import annotations

from typing import Any

import torch

from torchsmith.train.tasks import Task


class MetricAccumulator:
    """Sums a loss and task statistics on the device; read once, when `compute` is called.

    A step only keeps references (the detached loss, outputs and targets); the losses are
    summed and the task's hits and statistics counted in chunks, a few kernels for many steps, so a small
    model's step pays for no metric kernel at all.
    """

    CHUNK = 64  # steps per summing pass
    KEEP_BYTES = 8 << 20  # outputs kept for the deferred hits; past this they are counted early

    def __init__(self, task: Task) -> None:
        self.task = task
        self._has_stats = type(task).stats is not Task.stats  # skip the call where it adds nothing
        self.reset()

    def reset(self) -> None:
        self.loss_sum: torch.Tensor | float = 0.0
        self.totals: dict[str, Any] = {}
        self.count = 0
        self._losses: list[torch.Tensor] = []
        self._counts: list[int] = []
        self._kept: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._kept_bytes = 0

    def update(self, loss: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        n = self.task.count(targets)
        self._losses.append(loss.detach())
        self._counts.append(n)
        outputs = outputs.detach()
        if self._kept and (outputs.shape[1:] != self._kept[0][0].shape[1:] or targets.dim() != self._kept[0][1].dim()):
            self._flush_hits()  # batches are joined for counting: only same-shaped ones
        self._kept.append((outputs, targets))
        self._kept_bytes += outputs.numel() * outputs.element_size()
        if self._kept_bytes > self.KEEP_BYTES:
            self._flush_hits()
        self.count += n
        if len(self._losses) >= self.CHUNK:
            self.flush()

    def flush(self) -> None:
        """Fold the kept references into the sums (no host sync)."""
        self._flush_hits()
        if self._losses:
            losses = torch.stack(self._losses).float()
            weights = torch.tensor(self._counts, dtype=losses.dtype).to(losses.device, non_blocking=True)
            self.loss_sum = self.loss_sum + torch.dot(losses, weights)
            self._losses, self._counts = [], []

    def _flush_hits(self) -> None:
        if not self._kept:
            return
        kept, self._kept, self._kept_bytes = self._kept, [], 0
        outputs = kept[0][0] if len(kept) == 1 else torch.cat([o for o, _ in kept])
        targets = kept[0][1] if len(kept) == 1 else torch.cat([t for _, t in kept])
        hits = self.task.hits(outputs, targets)
        found = {"correct": hits.sum()} if hits is not None else {}
        if self._has_stats:  # sums: over the joined batches they are those of the batches added up
            found.update(self.task.stats(outputs, targets))
        for key, value in found.items():
            self.totals[key] = value + self.totals[key] if key in self.totals else value

    def state_dict(self) -> dict[str, Any]:
        """The unfinished interval's sums, so a resumed run logs exactly the same values.

        The losses not yet summed are saved as they are: summing them now would group the
        float additions differently from a run that was never stopped.
        """
        self._flush_hits()  # integer counts: exact in any grouping
        loss_sum = self.loss_sum.detach().cpu() if isinstance(self.loss_sum, torch.Tensor) else self.loss_sum
        return {
            "loss_sum": loss_sum,
            "count": self.count,
            "totals": {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in self.totals.items()},
            "pending_losses": torch.stack(self._losses).cpu() if self._losses else None,
            "pending_counts": list(self._counts),
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        def to(value: Any) -> Any:
            return value.to(device) if isinstance(value, torch.Tensor) else value

        self.reset()
        self.loss_sum, self.count = to(state["loss_sum"]), state["count"]
        self.totals = {k: to(v) for k, v in state["totals"].items()}
        pending = state.get("pending_losses")
        if pending is not None:
            self._losses = list(pending.to(device).unbind())
            self._counts = list(state["pending_counts"])

    def compute(self) -> dict[str, float]:
        if self.count == 0:
            return {}
        self.flush()
        loss_sum = float(self.loss_sum)  # the one host-device sync per log interval
        totals = {k: _host(v) for k, v in self.totals.items()}
        return self.task.summarize(loss_sum / self.count, totals, self.count)


def _host(value: Any) -> Any:
    """A 0-d sum as a float, a larger one as a float64 CPU tensor (histograms, per-class counts)."""
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        return value.detach().to("cpu", torch.float64)
    return float(value)


class TrainMetrics:
    """The training metrics of the current epoch: device-side sums of the open log interval
    (`meter`) and host sums of the intervals already read (`totals`), so `train_*` is the mean
    over the epoch so far; `interval` holds the `train_*` means of the last interval read alone,
    which is what a curve over steps plots (an epoch's running mean drops at every epoch start)."""

    def __init__(self, task: Task) -> None:
        self.meter = MetricAccumulator(task)
        self.totals: dict[str, float] = {}
        self.interval: dict[str, float] = {}

    def update(self, loss: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.meter.update(loss, outputs, targets)

    def read(self, dist: Any = None) -> dict[str, float]:
        """Close the open interval (one sync; under DDP summed over the ranks); its own metrics.
        Its sums join the epoch's, from which `epoch_means` computes the metrics exactly."""
        meter = self.meter
        if dist is not None:
            dist.reduce_meter(meter)
        values = meter.compute()  # flushes: the sums below are complete
        if meter.count:
            epoch = self.totals
            epoch["_count"] = epoch.get("_count", 0) + meter.count
            epoch["_loss_sum"] = epoch.get("_loss_sum", 0.0) + float(meter.loss_sum)
            for key, value in meter.totals.items():
                epoch[key] = epoch[key] + _host(value) if key in epoch else _host(value)
        meter.reset()
        if values:  # an empty interval (an epoch ending on a log step) keeps the last one's means
            self.interval = {f"train_{k}": v for k, v in values.items()}
        return values

    def epoch_means(self) -> dict[str, float]:
        count = int(self.totals.get("_count", 0))
        if not count:
            return {}
        sums = {k: v for k, v in self.totals.items() if not k.startswith("_")}
        values = self.meter.task.summarize(self.totals["_loss_sum"] / count, sums, count)
        return {f"train_{k}": v for k, v in values.items()}

    def end_epoch(self) -> None:
        self.totals = {}

    def state_dict(self, dist: Any, epoch_ended: bool) -> dict[str, Any]:
        """The open interval's sums (of all ranks when `dist` is given: a collective) and the totals."""
        meter = dist.global_meter_state(self.meter) if dist is not None else self.meter.state_dict()
        return {"meter": meter, "epoch_totals": {} if epoch_ended else dict(self.totals)}

    def load_state_dict(self, saved: dict[str, Any], device: torch.device) -> None:
        from torchsmith.io import rank

        self.meter.load_state_dict(saved["meter"], device)
        if not rank.is_writer():
            self.meter.reset()  # the saved sums are those of all ranks: rank 0 alone carries them on
        self.totals = dict(saved["epoch_totals"])
