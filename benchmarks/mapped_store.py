"""More data than memory: a store read from disk against the same store in memory.

From CIFAR-10 JPEG files (linked into a temporary tree) at `--image-size 64`, the store
is built once; then processes train the same run, interleaved, one with the store in
memory, one with `data.options.memory_limit` set to a quarter of the store. Each reports
its resident memory by kind (/proc/self/status: RssAnon, RssFile, RssShmem; the growth from
just before the data is loaded, everything imported, to the peak sampled after every batch)
through one epoch of batches at 256, before training adds its activations; the loader's
throughput over that epoch (gather + random-resized crop + flip + normalise, no model,
the OS file cache warm); and a hash of its weights after `--steps` training steps. The
overhead is what the in-memory run holds beyond the store itself (batches in flight, the
augmentation's intermediates, the statistics pass); the mapped run must stay within
limit + overhead. Prints the throughput ratio and whether the weights are bitwise equal last.

    python benchmarks/mapped_store.py --per-class 2000 --repeats 1 --steps 20
    python benchmarks/mapped_store.py --per-class 4000 --repeats 2 --steps 20

Measured on a quiet 2-core CPU, `--per-class 4000 --repeats 2 --steps 20`
(benchmarks/results/mapped-store-cpu.log): store 627 MiB, limit 157 MiB, overhead 130 MiB;
from disk the run grew at most 172 MiB (RssFile +14), within limit + overhead (286 MiB); loader
throughput from disk / in memory 1.04 (median of 2); weights bitwise equal: True.

Measured on a 2-core CPU shared with other jobs (throughput figures are noisy there):

- `--per-class 4000 --repeats 2 --steps 20`: store 627 MiB (40,000 images at 74x74),
  limit 157 MiB. In memory: +765 / +763 MiB (RssAnon +751 / +749, RssFile +14), so the
  overhead is 138 MiB. Read from disk: +159 / +181 MiB (RssAnon +146 / +167, RssFile +14,
  RssShmem 0), within limit + overhead (295 MiB) and in fact about the overhead alone:
  nothing of the store stays resident. Loader mapped/in-memory 702/989 and 1117/934
  images/s (median ratio 0.95). Weights after 20 steps bitwise equal: True.
- `--per-class 2000 --repeats 1 --steps 20`: store 313 MiB, limit 78 MiB; in memory
  +443 MiB (overhead 130), from disk +156 MiB (RssAnon +142, RssFile +14): the same
  growth as with twice the store, so it is bounded by the batches, not the store. Loader
  ratio 1.77 (one sample). Weights bitwise equal: True.
- Before (the store read through a memory map, madvise(MADV_DONTNEED) every quarter of
  the limit), `--per-class 2000`: from disk +548 MiB, RssFile +302 against +91 in the
  in-memory run of the same benchmark: about 210 MiB of mapped store pages stayed resident
  against a 78 MiB limit (pages a map has touched count as resident until the kernel
  reclaims them).
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
        count = link_tree(Path(args.data_dir).resolve(), root, args.per_class)
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
