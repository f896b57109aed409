"""Seconds per phase of one command: what `torchsmith train --profile-startup` prints.

A `PhaseClock` is handed down by the caller (no global state); each `lap(name)` books the
time since the previous lap under `name`.

Example:
    >>> clock = PhaseClock()
    >>> clock.lap("config")
    >>> [name for name, _, _ in clock.laps]
    ['config']
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def seconds_since_process_start() -> float | None:
    """How long this process has run (interpreter start included); None where /proc is absent.

    Read from /proc (Linux): the process's start tick against the machine's uptime, to 10 ms.
    """
    try:
        fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - int(fields[19]) / ticks)  # field 22 of stat: starttime


class PhaseClock:
    """Seconds per phase, in the order they ran: wall-clock, and this process's CPU seconds
    (all its threads; on a machine busy with other work, CPU seconds still say what a phase costs)."""

    def __init__(self, *, from_process_start: bool = False) -> None:
        self.laps: list[tuple[str, float, float]] = []  # (phase, wall seconds, CPU seconds)
        self._last = (time.perf_counter(), time.process_time())
        started = seconds_since_process_start() if from_process_start else None
        if started is not None:
            self.laps.append(("python start", started, self._last[1]))

    def lap(self, name: str) -> None:
        """Book the seconds since the last lap (or since the clock started) under `name`."""
        now = (time.perf_counter(), time.process_time())
        self.laps.append((name, now[0] - self._last[0], now[1] - self._last[1]))
        self._last = now

    def move(self, source: str, name: str, seconds: float) -> None:
        """Book `seconds` of the last `source` lap under `name` instead (a part timed inside it,
        by the wall clock: its CPU seconds are taken to be the same)."""
        if seconds <= 0 or not self.laps or self.laps[-1][0] != source:
            return
        _, wall, cpu = self.laps[-1]
        self.laps[-1] = (source, wall - seconds, max(0.0, cpu - seconds))
        self.laps.append((name, seconds, min(seconds, cpu)))

    def total(self, cpu: bool = False) -> float:
        return sum(lap[2] if cpu else lap[1] for lap in self.laps)

    def seconds(self, name: str, cpu: bool = False) -> float:
        return sum(lap[2] if cpu else lap[1] for lap in self.laps if lap[0] == name)

    def to_text(self, train_time_s: float = 0.0) -> str:
        """The table: one line per phase, its wall and CPU seconds and its share of the wall time;
        the totals against the training time (`train_time_s`: the Trainer's own clock, the time the
        result line reports) and against the training phase's CPU seconds."""
        total, total_cpu = self.total(), self.total(cpu=True)
        width = max([len(lap[0]) for lap in self.laps] + [5])
        lines = ["startup profile (seconds, in order):", f"  {'phase':<{width}}     wall      cpu   share"]
        for name, wall, cpu in self.laps:
            lines.append(f"  {name:<{width}}  {wall:7.3f}  {cpu:7.3f}  {100 * wall / total if total else 0:5.1f} %")
        lines.append(f"  {'total':<{width}}  {total:7.3f}  {total_cpu:7.3f}")
        if train_time_s:
            lines.append(f"  wall: {total / train_time_s:.2f}x the training time ({train_time_s:.3f} s)")
        if training_cpu := self.seconds("training", cpu=True):
            lines.append(f"  cpu: {total_cpu / training_cpu:.2f}x the training phase's CPU seconds")
        return "\n".join(lines)
