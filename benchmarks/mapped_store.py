"""More data than memory: a store mapped from disk against the same store in memory.

From CIFAR-10 JPEG files (linked into a temporary tree) at `--image-size 64`, the store
is built once; then two processes train the same run, one with the store in memory, one
with `data.options.memory_limit` set to a quarter of the store. Each reports its resident
memory (peak, minus the resident memory before the data was loaded: the stated overhead
of torch and the interpreter) through one epoch of batches, before training adds its
activations, the loader's throughput over a training epoch
(gather + random-resized crop + flip + normalise, no model) and a hash of its final
weights. Prints the peak against the limit, the throughput ratio and whether the weights
are bitwise equal last.

    python benchmarks/mapped_store.py --per-class 500
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

from common import DEFAULT_DATA, REPO

KINDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")  # resident memory by kind, /proc/self/status

WORKER = r"""
import hashlib, json, sys, time, torch
from torchsmith import Trainer
from torchsmith.config import DataConfig
from torchsmith.data.loaders import make_batches
from torchsmith.data.registry import load_data
from torchsmith.models.registry import build_model
import torchsmith.data.image_sets, torchsmith.data.mapped, torchvision.io, torchvision.transforms.v2.functional

KINDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")
def status():
    found = {}
    for line in open("/proc/self/status"):
        name = line.split(":")[0]
        if name in KINDS or name == "VmHWM":
            found[name] = int(line.split()[1]) * 1024
    return found
root, limit, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
options = {"image_size": 64} if limit == "none" else {"image_size": 64, "memory_limit": int(limit)}
base = status()
bundle = load_data(DataConfig(name=f"imagefolder:{root}", val_fraction=0.0, options=options), seed=0)
batches = make_batches(bundle.train, batch_size=256, train=True, seed=0, device=torch.device("cpu"))
peak = status()
start = time.perf_counter()
for _ in batches.epoch(0):  # one epoch: gather + random-resized crop + flip + normalise, no model
    now = status()
    peak = {k: max(peak[k], now[k]) for k in KINDS}
loader_rate = len(bundle.train) / (time.perf_counter() - start)
loader = status()
model = build_model("convnet", bundle.info, {})
trainer = Trainer(model, max_epochs=1, max_steps=steps, batch_size=128, progress="none", device="cpu")
trainer.fit(bundle.train)
digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in model.state_dict().values())).hexdigest()
print(json.dumps({"base": base, "peak": peak, "hwm": loader["VmHWM"], "train_hwm": status()["VmHWM"],
                  "loader_rate": loader_rate, "weights": digest, "steps": trainer.state.step,
                  "source": type(bundle.train).__name__, "store": bundle.info.preprocessing["storage"],
                  "samples": len(bundle.train)}))
"""


def link_tree(source: Path, target: Path, per_class: int) -> int:
    count = 0
    for class_dir in sorted(source.iterdir()):
        (target / class_dir.name).mkdir(parents=True)
        for path in sorted(class_dir.iterdir())[:per_class]:
            (target / class_dir.name / path.name).symlink_to(path)
            count += 1
    return count


def run(root: Path, limit: str, steps: int, env: dict[str, str]) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", WORKER, str(root), limit, str(steps)], env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def describe(name: str, r: dict) -> str:
    mib = 1 << 20
    grown = "  ".join(f"{k} {(r['peak'][k] - r['base'][k]) / mib:+.0f}" for k in KINDS)
    return (
        f"{name:9s} ({r['source']}): before data {r['base']['VmRSS'] / mib:.0f} MiB resident (the interpreter and "
        f"torch); growth at the peak, MiB: {grown}; VmHWM {r['hwm'] / mib:.0f} MiB (training "
        f"{r['train_hwm'] / mib:.0f}); loader {r['loader_rate']:.0f} images/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA / "cifar10-jpeg" / "train"))
    parser.add_argument("--per-class", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=40, help="training steps whose weights are compared")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each")
    args = parser.parse_args()
    mib = 1 << 20
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "tree"
        count = link_tree(Path(args.data_dir), root, args.per_class)
        env = dict(os.environ, TORCHSMITH_CACHE=str(Path(tmp) / "cache"), OMP_NUM_THREADS="2")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
        built = run(root, "none", 1, env)  # builds the store (cached for the runs below)
        store_bytes = count * 3 * built["store"][0] * built["store"][1]
        limit = store_bytes // 4
        runs: dict[str, list[dict]] = {"in memory": [], "mapped": []}
        for _ in range(args.repeats):
            runs["in memory"].append(run(root, "none", args.steps, env))
            runs["mapped"].append(run(root, str(limit), args.steps, env))
            for name, results in runs.items():
                print(describe(name, results[-1]), flush=True)
        memory, mapped = runs["in memory"], runs["mapped"]
        grown = max(r["peak"]["VmRSS"] - r["base"]["VmRSS"] for r in mapped) / mib
        # The overhead: what the in-memory run holds beyond the store itself (batches in flight,
        # the augmentation's intermediates, the statistics pass), the same whatever the store's size.
        overhead = max(r["peak"]["VmRSS"] - r["base"]["VmRSS"] for r in memory) / mib - store_bytes / mib
        ratio = statistics.median(m["loader_rate"] / r["loader_rate"] for m, r in zip(mapped, memory, strict=True))
        equal = len({r["weights"] for r in memory + mapped}) == 1
        bound = limit / mib + overhead
        print(
            f"store {store_bytes / mib:.0f} MiB ({count} images at {built['store']}), limit {limit / mib:.0f} MiB, "
            f"overhead {overhead:.0f} MiB (the in-memory run's growth beyond the store): the mapped run grew at "
            f"most {grown:.0f} MiB ({'within' if grown <= bound else 'OVER'} limit + overhead = {bound:.0f} MiB); "
            f"loader throughput mapped/in-memory {ratio:.2f} (median of {args.repeats}); weights after "
            f"{mapped[0]['steps']} steps bitwise equal: {equal}"
        )


if __name__ == "__main__":
    main()
