"""Seconds per phase of one command: what `torchsmith train --profile-startup` prints.

A `PhaseClock` is handed down by the caller (no global state); each `lap(name)` books the
time since the previous lap under `name`. Work moved off the critical path (a background
thread) is booked with `add(name, seconds)`, apart from the wall-clock laps.

Example:
    >>> clock = PhaseClock()
    >>> clock.lap("config")
    >>> [name for name, _ in clock.laps]
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
    """Wall-clock seconds per phase, in the order they ran."""

    def __init__(self, *, from_process_start: bool = False) -> None:
        self.laps: list[tuple[str, float]] = []
        self.background: list[tuple[str, float]] = []
        self._last = time.perf_counter()
        started = seconds_since_process_start() if from_process_start else None
        if started is not None:
            self.laps.append(("python start", started))

    def lap(self, name: str) -> None:
        """Book the seconds since the last lap (or since the clock started) under `name`."""
        now = time.perf_counter()
        self.laps.append((name, now - self._last))
        self._last = now

    def move(self, source: str, name: str, seconds: float) -> None:
        """Book `seconds` of the last `source` lap under `name` instead (a part timed inside it)."""
        if seconds <= 0 or not self.laps or self.laps[-1][0] != source:
            return
        self.laps[-1] = (source, self.laps[-1][1] - seconds)
        self.laps.append((name, seconds))

    def add(self, name: str, seconds: float) -> None:
        """Book work done off the critical path (in a background thread): shown apart, not summed."""
        self.background.append((name, seconds))

    def total(self) -> float:
        return sum(seconds for _, seconds in self.laps)

    def seconds(self, name: str) -> float:
        return sum(seconds for lap, seconds in self.laps if lap == name)

    def to_text(self, train_time_s: float = 0.0) -> str:
        """The table: one line per phase and its share; the total against the training time
        (`train_time_s`: the Trainer's own clock, the time the result line reports)."""
        total = self.total()
        width = max([len(name) for name, _ in self.laps + self.background] + [5])
        lines = ["startup profile (seconds, in order):"]
        for name, seconds in self.laps:
            lines.append(f"  {name:<{width}}  {seconds:7.3f}  {100 * seconds / total if total else 0:5.1f} %")
        for name, seconds in self.background:
            lines.append(f"  {name:<{width}}  {seconds:7.3f}  (in the background, during the phases after it)")
        ratio = f" = {total / train_time_s:.2f}x the training time ({train_time_s:.3f} s)" if train_time_s else ""
        lines.append(f"  {'total':<{width}}  {total:7.3f}{ratio}")
        return "\n".join(lines)
