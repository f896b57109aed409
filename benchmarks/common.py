"""Shared helpers for the benchmarks: data paths, interleaved repeats, medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def interleaved(
    runners: dict[str, Callable[[], object]], repeats: int, clock: Callable[[], float] = time.perf_counter
) -> dict[str, list[float]]:
    """Run each runner once per round, rounds `repeats` times; seconds per run, per runner.

    Interleaving spreads machine noise (other processes, thermal state) over all runners.
    `clock`: wall time by default; `time.process_time` counts this process's CPU seconds alone
    (on a machine shared with other jobs, wall time measures the neighbours too).
    """
    times: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(repeats):
        for name, runner in runners.items():
            start = clock()
            runner()
            _synchronize()
            times[name].append(clock() - start)
        summary = "  ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items())
        print(f"round {round_index + 1}/{repeats}: {summary}", flush=True)
    return times


def _synchronize() -> None:
    # GPU work is asynchronous: a runner's time ends when its kernels have finished.
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratio(times: dict[str, list[float]], name: str, baseline: str) -> float:
    """Median over rounds of name's time / baseline's time in the same round.

    Pairing each run with the baseline run next to it cancels the slow drifts of a shared
    machine (a neighbour's load, frequency changes) that a ratio of two medians still carries.
    """
    return statistics.median(a / b for a, b in zip(times[name], times[baseline], strict=True))


def device_name(device: str) -> str:
    """What the benchmark ran on, for its report line: the GPU's name, or the CPU thread count."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU, {torch.get_num_threads()} threads"
