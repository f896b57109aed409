"""`--workers N`: N processes of the same sweep command, each running trials of the one study.

Processes rather than threads: a trial is a whole `train_run`, which sets the global seed,
installs signal handlers (main thread only) and owns its device; separate processes keep
trials apart and give each its own CUDA device where there are several.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def worker_environment(index: int, count: int) -> dict[str, str]:
    """The child's environment: its share of the CPU threads, and one CUDA device of several."""
    import torch

    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // count)))
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    devices = visible or [str(i) for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
    if len(devices) > 1:
        env["CUDA_VISIBLE_DEVICES"] = devices[index % len(devices)]
    return env


def run_workers(argv: list[str], count: int, storage: str, folder: Path) -> int:
    """Start `count` worker processes and wait for them; the exit code of the worst one."""
    command = [sys.executable, "-m", "torchsmith", "sweep", *argv]
    command += ["--workers", "1", "--worker", "--storage", storage, "--run-dir", str(folder)]
    processes = [subprocess.Popen(command, env=worker_environment(i, count)) for i in range(count)]
    try:
        codes = [process.wait() for process in processes]
    except KeyboardInterrupt:  # the terminal's Ctrl-C reached the workers too: let them save and leave
        codes = [process.wait() for process in processes]
    interrupted = [code for code in codes if code in (130, 143)]
    return interrupted[0] if interrupted else max(codes)
