"""Training throughput of 2 processes (DDP over gloo) against 1 process, on this machine's CPUs.

The job: `torchsmith train` on the embedded MNIST sample, global batch 64, `--steps` optimizer
steps, no validation split. Throughput is the samples/s of each run's summary.json, which counts
training time only (not process start-up, data loading or the final test). torchrun gives each of
the 2 processes one thread; the single process runs once with one thread and once with the
threads torch picks, and the faster of the two is the baseline. Rounds are interleaved; medians.

    python benchmarks/distributed.py --model simplenet --steps 600 --repeats 3
    python benchmarks/distributed.py --model convnet --steps 150 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train(processes: int, threads: int | None, model: str, steps: int, run_dir: Path) -> float:
    """Samples per second of one training run."""
    command = [
        sys.executable,
        "-m",
        "torchsmith",
        "train",
        "--model",
        model,
        "--max-steps",
        str(steps),
        "--batch-size",
        "64",
        "--val-fraction",
        "0",
        "--device",
        "cpu",
        "--quiet",
        "--run-dir",
        str(run_dir),
    ]
    if processes > 1:
        command += ["--nproc-per-node", str(processes)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(command, env=env, timeout=1800, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["processes"] == processes and summary["steps"] == steps, summary
    return float(summary["samples_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="simplenet")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = {"1 process, 1 thread": (1, 1), "1 process, default threads": (1, None), "2 processes": (2, None)}
    rates: dict[str, list[float]] = {name: [] for name in runs}
    with tempfile.TemporaryDirectory() as folder:
        for round_index in range(args.repeats):
            for index, (name, (processes, threads)) in enumerate(runs.items()):
                run_dir = Path(folder) / f"{round_index}-{index}"
                rates[name].append(train(processes, threads, args.model, args.steps, run_dir))
            print(
                f"round {round_index + 1}/{args.repeats}: "
                + "  ".join(f"{n} {r[-1]:,.0f}/s" for n, r in rates.items()),
                flush=True,
            )
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(f"cpus: {os.cpu_count()}, model: {args.model}, global batch 64, {args.steps} steps; median samples/s:")
    for name, value in medians.items():
        print(f"  {name:<28} {value:>10,.0f}")
    baseline = max(medians["1 process, 1 thread"], medians["1 process, default threads"])
    print(f"2 processes / best single process: {medians['2 processes'] / baseline:.2f}")


if __name__ == "__main__":
    main()
