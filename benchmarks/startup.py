"""The whole command against its training time: what a user waits for beyond the training itself.

Runs, as separate processes, in interleaved rounds:
- `torchsmith train --recipe mnist-fast --data-dir DIR` (real MNIST),
- `torchsmith train` (the embedded default: SimpleNet on the bundled MNIST sample),
- `torchsmith --help` and `torchsmith train --help` (they must not import torch).

For each training command it prints the median whole-command time, the median training time
(`train_time_s` of the run's summary.json, the time the result line reports), and the median
over rounds of their ratio; with `--profile-startup` support, the median seconds of each phase.
`--baseline-src OTHER/src` runs every command under another source tree as well, alternating
with this one in every round, and prints the paired ratio (this tree / that tree).

    python benchmarks/startup.py --data-dir ../shared/data/mnist --repeats 5
    python benchmarks/startup.py --repeats 5 --baseline-src /path/to/old/checkout/src
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DEFAULT_DATA, REPO

PHASES_HEADER = "startup profile (seconds, in order):"


def run_once(argv: list[str], src: str, run_dir: Path | None) -> dict[str, float]:
    """One command in a fresh process: its wall time, its training time, its phases."""
    env = {**os.environ, "PYTHONPATH": src}
    command = [sys.executable, "-m", "torchsmith", *argv]
    if run_dir is not None:
        command += ["--run-dir", str(run_dir)]
        train_cli = Path(src) / "torchsmith" / "cli" / "train.py"  # a tree from before the cli/ package has none
        if train_cli.is_file() and "profile-startup" in train_cli.read_text():
            command.append("--profile-startup")
    start, used = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    # CPU seconds of the whole command (user + system, all its threads): what it costs whatever
    # else the machine runs, where wall time also measures the neighbours.
    result = {"whole": seconds, "whole_cpu": after.ru_utime + after.ru_stime - used.ru_utime - used.ru_stime}
    if run_dir is not None:
        result["training"] = json.loads((run_dir / "summary.json").read_text())["train_time_s"]
        result.update(parse_phases(done.stderr))
    return result


def parse_phases(stderr: str) -> dict[str, float]:
    """The `--profile-startup` table as {phase: seconds} (empty when the tree has no such flag)."""
    if PHASES_HEADER not in stderr:
        return {}
    phases: dict[str, float] = {}
    for line in stderr.split(PHASES_HEADER, 1)[1].splitlines()[2:]:
        words = line.split()
        index = next(i for i, word in enumerate(words) if word[:1].isdigit())  # names hold no digits
        name = " ".join(words[:index])
        phases[f"phase {name}"], phases[f"cpu {name}"] = float(words[index]), float(words[index + 1])
        if name == "total":
            break
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA / "mnist"), help="real MNIST (its MNIST/raw/ files)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--src", default=str(REPO / "src"), help="the source tree measured")
    parser.add_argument("--baseline-src", default=None, help="another source tree, run alternately")
    parser.add_argument("--skip-mnist-fast", action="store_true", help="only the default run and --help")
    args = parser.parse_args()
    commands: dict[str, list[str]] = {
        "torchsmith --help": ["--help"],
        "torchsmith train --help": ["train", "--help"],
        "torchsmith train": ["train"],
    }
    if not args.skip_mnist_fast:
        commands["train --recipe mnist-fast"] = ["train", "--recipe", "mnist-fast", "--data-dir", args.data_dir]
    trees = {"new": args.src, **({"old": args.baseline_src} if args.baseline_src else {})}
    folder = Path(tempfile.mkdtemp(prefix="startup-"))
    results: dict[tuple[str, str], list[dict[str, float]]] = {(c, t): [] for c in commands for t in trees}
    for round_index in range(args.repeats):
        for name, argv in commands.items():
            for tree, src in trees.items():
                run_dir = folder / f"{tree}-{round_index}-{len(results[name, tree])}-{name.split()[-1]}"
                trains = argv[0] == "train" and "--help" not in argv
                results[name, tree].append(run_once(argv, src, run_dir if trains else None))
        print(f"round {round_index + 1}/{args.repeats} done", flush=True)
    report(commands, trees, results, args.repeats)


def report(
    commands: dict[str, list[str]],
    trees: dict[str, str],
    results: dict[tuple[str, str], list[dict[str, float]]],
    repeats: int,
) -> None:
    median = statistics.median
    print(f"medians of {repeats} interleaved rounds, each command a fresh process")
    for name in commands:
        for tree in trees:
            runs = results[name, tree]
            line = f"{name:28s} [{tree}] whole {median(r['whole'] for r in runs):6.2f} s"
            line += f" ({median(r['whole_cpu'] for r in runs):6.2f} CPU s)"
            if "training" in runs[0]:
                ratio = median(r["whole"] / r["training"] for r in runs)
                line += f"   training {median(r['training'] for r in runs):6.2f} s   whole/training {ratio:.2f}x"
            print(line)
            for kind in ("phase", "cpu"):
                keys = [key for key in runs[0] if key.startswith(kind + " ")]
                if keys:
                    clock = "wall" if kind == "phase" else "CPU"
                    shown = ", ".join(f"{k.split(' ', 1)[1]} {median(r[k] for r in runs):.2f}" for k in keys)
                    print(f"    {clock} seconds: {shown}")
            if "cpu training" in runs[0]:
                cpu = median(r["cpu total"] / r["cpu training"] for r in runs)
                print(f"    CPU seconds, whole command / training phase: {cpu:.2f}x")
        if "old" in trees:
            pairs = zip(results[name, "new"], results[name, "old"], strict=True)
            paired = median(n["whole"] / o["whole"] for n, o in pairs)
            pairs = zip(results[name, "new"], results[name, "old"], strict=True)
            paired_cpu = median(n["whole_cpu"] / o["whole_cpu"] for n, o in pairs)
            print(f"{name:28s} whole command new/old (paired, median): wall {paired:.3f}, CPU {paired_cpu:.3f}")
    for name in ("torchsmith train", "train --recipe mnist-fast"):
        runs = results.get((name, "new"), [])
        if runs:
            line = f"{name}: whole/training wall {median(r['whole'] / r['training'] for r in runs):.2f}x"
            if "cpu training" in runs[0]:
                line += f", CPU {median(r['whole_cpu'] / r['cpu training'] for r in runs):.2f}x (whole command's"
                line += " CPU seconds / the training phase's)"
            print(line)


if __name__ == "__main__":
    main()
