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
import subprocess
import sys
import tempfile
from pathlib import Path

from common import DEFAULT_DATA, REPO

WORKER = r"""
import hashlib, json, sys, time, torch
from torchsmith import Trainer
from torchsmith.config import DataConfig
from torchsmith.data.loaders import make_batches
from torchsmith.data.registry import load_data
from torchsmith.models.registry import build_model

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
root, limit, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
options = {"image_size": 64} if limit == "none" else {"image_size": 64, "memory_limit": int(limit)}
base = rss("VmRSS")
bundle = load_data(DataConfig(name=f"imagefolder:{root}", val_fraction=0.0, options=options), seed=0)
batches = make_batches(bundle.train, batch_size=256, train=True, seed=0, device=torch.device("cpu"))
start = time.perf_counter()
for _ in batches.epoch(0):
    pass
loader_rate = len(bundle.train) / (time.perf_counter() - start)
loader_peak = rss("VmHWM")  # data loaded and one epoch of batches built; training's activations come after
model = build_model("convnet", bundle.info, {})
trainer = Trainer(model, max_epochs=epochs, batch_size=128, progress="none", device="cpu")
trainer.fit(bundle.train)
digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in model.state_dict().values())).hexdigest()
print(json.dumps({"base": base, "peak": loader_peak, "train_peak": rss("VmHWM"), "loader_rate": loader_rate,
                  "weights": digest,
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


def run(root: Path, limit: str, epochs: int, env: dict[str, str]) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", WORKER, str(root), limit, str(epochs)], env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA / "cifar10-jpeg" / "train"))
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    mib = 1 << 20
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "tree"
        count = link_tree(Path(args.data_dir), root, args.per_class)
        env = dict(os.environ, TORCHSMITH_CACHE=str(Path(tmp) / "cache"), OMP_NUM_THREADS="2")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
        memory = run(root, "none", args.epochs, env)  # also builds the store (cached for the next run)
        memory = run(root, "none", args.epochs, env)
        store_bytes = count * 3 * memory["store"][0] * memory["store"][1]
        limit = store_bytes // 4
        mapped = run(root, str(limit), args.epochs, env)
        for name, r in (("in memory", memory), ("mapped", mapped)):
            print(
                f"{name:9s} ({r['source']}): resident before data {r['base'] / mib:.0f} MiB (the overhead), "
                f"peak {r['peak'] / mib:.0f} MiB, peak minus overhead {(r['peak'] - r['base']) / mib:.0f} MiB; "
                f"loader {r['loader_rate']:.0f} images/s"
            )
        grown = (mapped["peak"] - mapped["base"]) / mib
        print(
            f"store {store_bytes / mib:.0f} MiB ({count} images at {memory['store']}), limit {limit / mib:.0f} MiB: "
            f"mapped run grew {grown:.0f} MiB over its overhead ({'within' if grown <= limit / mib else 'OVER'} the "
            f"limit); loader throughput mapped/in-memory {mapped['loader_rate'] / memory['loader_rate']:.2f}; "
            f"weights bitwise equal: {mapped['weights'] == memory['weights']}"
        )


if __name__ == "__main__":
    main()
