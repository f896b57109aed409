"""A full disk is a clear error (exit 1, "no space left ... bytes needed"), and leaves no debris.

The disk is "full" through RLIMIT_FSIZE in a child process: a write past the limit fails with
EFBIG (SIGXFSZ ignored), as a write to a full disk fails with ENOSPC.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import torchsmith

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
LIMIT = 64 * 1024  # bytes: the small files of a run fit, SimpleNet's 400 KB of weights do not


def limited() -> None:  # runs in the child before exec: its files may not grow past LIMIT
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def run_limited(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(torchsmith.__file__).parents[1])}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, preexec_fn=limited, timeout=300
    )


def debris(folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.startswith(".tmp")]


def test_a_full_disk_during_training_exits_1_with_a_clear_message(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_limited(["-m", "torchsmith", "train", "--max-steps", "2", "--run-dir", str(run), "--quiet"], tmp_path)
    assert result.returncode == 1, result.stderr
    assert "no space left on" in result.stderr and "bytes needed" in result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert debris(run) == []
    assert not (run / "model.safetensors").exists()  # no half-written final weights
    assert '"status": "failed"' in (run / "summary.json").read_text()


def test_final_weights_are_written_atomically(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"the old weights")
    script = (
        "import sys, torch\n"
        "from torchsmith.io.files import DiskFull, save_safetensors\n"
        "try:\n"
        f"    save_safetensors({{'w': torch.zeros(100_000)}}, {str(target)!r})\n"
        "except DiskFull as error:\n"
        "    print(error); sys.exit(1)\n"
    )
    result = run_limited(["-c", script], tmp_path)
    assert result.returncode == 1, result.stderr
    assert "no space left on" in result.stdout and "400000 bytes needed" in result.stdout
    assert target.read_bytes() == b"the old weights"  # the old file as it was
    assert debris(tmp_path) == []
