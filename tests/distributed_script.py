"""Run by tests/test_distributed.py under torchrun with 2 CPU processes: the collectives the
Trainer relies on, each checked against what one process computes.

    python -m torch.distributed.run --nproc-per-node 2 tests/distributed_script.py OUT_DIR

Each rank writes OUT_DIR/rank<R>.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from torchsmith import Trainer
from torchsmith.errors import UsageError
from torchsmith.io.rank import writer_first
from torchsmith.state import TrainState
from torchsmith.train.metrics import MetricAccumulator

TIMEOUT_S = 3.0


def main(out: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    trainer = Trainer(
        model, optimizer="sgd", device="cpu", progress="none", eval_batch_size=500, dist_timeout_s=TIMEOUT_S
    )
    context = trainer.dist
    assert context is not None, "not started by torchrun with several processes"
    results: dict = {"rank": context.rank, "world_size": context.world_size}

    # Rank 1 alone asks to stop (a SIGTERM) and alone finds a non-finite gradient.
    state = TrainState()
    if context.rank == 1:
        state.request_stop("received SIGTERM", signal="SIGTERM")
    found_inf = torch.tensor([1.0 if context.rank == 1 else 0.0])
    results["finite"] = context.agree_step(state, found_inf)
    results["stop"] = [context.stop_agreed, state.stop_requested, state.stop_signal]

    # A checkpoint holds the unfinished log interval's sums of all ranks; each meter keeps its own.
    meter = MetricAccumulator(trainer.task)
    meter.update(torch.tensor(1.0 + context.rank), torch.zeros(3, 4), torch.zeros(3, dtype=torch.long))
    saved = context.global_meter_state(meter)
    meter.flush()  # this rank's own sums, folded from the kept per-step values
    results["pending"] = [
        float(saved["loss_sum"]),
        saved["count"],
        float(saved["totals"]["correct"]),
        float(meter.loss_sum),
        meter.count,
    ]

    # 1001 samples in eval batches of 500: the last batch holds one sample and rank 1 gets none of it.
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(1001, 8, generator=generator)
    targets = torch.randint(0, 4, (1001,), generator=generator)
    collected: list = []
    metrics = trainer.evaluate((inputs, targets), collect=collected)
    with torch.no_grad():
        outputs = model(inputs)
    results["accuracy"] = [metrics["accuracy"], int((outputs.argmax(1) == targets).sum()) / 1001]
    results["loss"] = [metrics["loss"], nn.functional.cross_entropy(outputs, targets).item()]
    merged_outputs, merged_targets = collected[0]
    results["collected_in_order"] = (
        len(collected) == 1
        and torch.equal(merged_targets, targets)
        and torch.allclose(merged_outputs, outputs, atol=1e-6)
    )

    # Vector sums (confusion counts, score histograms, per-output error sums) reduce exactly: each
    # task's metrics on two processes equal one process's over the whole data at once.
    results["task_metrics"] = task_metrics(inputs, targets)

    # Data is prepared once: rank 0 first while rank 1 waits (longer than TIMEOUT_S), then rank 1
    # reads what rank 0 wrote; an error on rank 0 is raised on both without rank 1 computing.
    marker = out / "prepared.txt"

    def prepare() -> bool:
        if context.rank == 0:
            time.sleep(TIMEOUT_S + 1)
            marker.write_text("built by rank 0")
        return marker.exists()

    results["prepared_first"] = writer_first(prepare)

    def refuse() -> int:
        if context.rank == 0:
            raise UsageError("no data on rank 0")
        return 1

    try:
        results["prepare_error"] = writer_first(refuse)
    except UsageError as error:
        results["prepare_error"] = str(error)

    # Rank 1 stops answering: rank 0's next collective must fail within the configured timeout.
    if context.rank == 0:
        start = time.perf_counter()
        try:
            torch.distributed.all_reduce(torch.ones(1))
            results["failed_after_s"] = None
        except Exception:  # gloo's timeout error
            results["failed_after_s"] = time.perf_counter() - start
    else:
        time.sleep(TIMEOUT_S + 5)
    (out / f"rank{context.rank}.json").write_text(json.dumps(results))
    os._exit(0)  # rank 0's process group is broken: leave without tearing it down


def task_metrics(inputs: torch.Tensor, labels: torch.Tensor) -> list[list[dict[str, float]]]:
    """[two-process metrics, one-process metrics] for classification, multi-label and regression."""
    cases = [
        ("classification", labels, "accuracy,f1_macro,auroc,top5"),
        ("multilabel", (inputs[:, :4] > 0).float(), "f1_macro,f1_micro,f1_per_label,map,auroc,exact_match"),
        ("regression", inputs[:, :4].sum(dim=1, keepdim=True).repeat(1, 4) * torch.arange(1.0, 5.0), "mae,rmse,r2"),
    ]
    found = []
    for task, targets, metrics in cases:
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        options = {"device": "cpu", "progress": "none", "eval_batch_size": 250, "dist_timeout_s": 60.0}
        trainer = Trainer(model, task=task, metrics=metrics, **options)
        spread = trainer.evaluate((inputs, targets))
        single = MetricAccumulator(trainer.task)
        with torch.no_grad():
            outputs = model(inputs)
            single.update(trainer.task_loss(outputs, targets), outputs, targets)
        found.append([spread, single.compute()])
    return found


if __name__ == "__main__":
    main(Path(sys.argv[1]))
