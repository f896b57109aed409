"""Transfer on real data, offline: does starting from your own earlier run beat training from scratch?

CIFAR-10 split in two: `convnet` is pretrained with torchsmith on classes 0-4 (airplane,
automobile, bird, cat, deer), then fine-tuned with `--init-from` and `--finetune` on 50
training images per class of classes 5-9 (dog, frog, horse, ship, truck), against the same
model trained from scratch on the same 250 images. Both are tested on all 5,000 test images
of classes 5-9. Each seed draws other 250 images; the margin (transfer minus scratch test
accuracy, mean over seeds) is printed last.

    python benchmarks/transfer.py --data-dir ../shared/data/cifar10-jpeg

The class-subset folders are trees of symbolic links in a temporary folder. Every run goes
through the `torchsmith train` command, as a user would run it.

Measured with these defaults on a shared, heavily loaded 2-core CPU (torch 2.14.1; 8.5 min of
CPU time, results/transfer-cpu.log): source run 0.638 on classes 0-4; on classes 5-9,
transfer 0.595 / 0.624 / 0.625 against scratch 0.568 / 0.526 / 0.553 for seeds 0 / 1 / 2:
margin +0.066 (smallest +0.027).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DEFAULT_DATA

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PRETRAIN, TARGET = CLASSES[:5], CLASSES[5:]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--data-dir", default=str(DEFAULT_DATA / "cifar10-jpeg"))
    add("--pretrain-per-class", type=int, default=1000, help="training images per class for the source run")
    add("--pretrain-epochs", type=int, default=5)
    add("--per-class", type=int, default=50, help="training images per class for fine-tuning")
    add("--epochs", type=int, default=12, help="epochs of both the fine-tuned and the scratch runs")
    add("--frozen-epochs", type=int, default=3)
    add("--lr-decay", type=float, default=0.5)
    add("--seeds", type=int, nargs="+", default=[0, 1, 2])
    add("--model", default="convnet")
    return parser.parse_args()


def link_tree(target: Path, source: Path, classes: list[str], per_class: int | None, seed: int) -> Path:
    """target/<class>/ holding links to `per_class` images (all when None) drawn with `seed`."""
    for name in classes:
        files = sorted((source / name).iterdir())
        if per_class is not None:
            files = sorted(random.Random(f"{seed}-{name}").sample(files, per_class))
        folder = target / name
        folder.mkdir(parents=True)
        for file in files:
            (folder / file.name).symlink_to(file.resolve())
    return target


def train(run: Path, data: Path, *flags: str, env: dict[str, str]) -> dict:
    """`torchsmith train` in a fresh process; its summary.json."""
    command = [sys.executable, "-m", "torchsmith", "train", "--data", f"imagefolder:{data}", "--device", "cpu"]
    command += ["--run-dir", str(run), "--quiet", *flags]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    summary = json.loads((run / "summary.json").read_text())
    summary["wall_s"] = time.perf_counter() - started
    return summary


def main() -> None:
    args = parse_args()
    data = Path(args.data_dir)
    if not (data / "train" / "dog").is_dir():
        raise SystemExit(f"CIFAR-10 image tree not found at {data} (train/<class>/*.jpg); pass --data-dir")
    with tempfile.TemporaryDirectory(prefix="transfer-") as tmp:
        root = Path(tmp)
        env = {**os.environ, "TORCHSMITH_CACHE": str(root / "cache")}  # decoded images stay in the temp folder
        source = root / "pretrain"
        link_tree(source / "train", data / "train", PRETRAIN, args.pretrain_per_class, seed=0)
        link_tree(source / "test", data / "test", PRETRAIN, None, seed=0)
        common = ["--model", args.model, "--batch-size", "64", "--augment", "crop-flip"]
        pre = train(root / "runs" / "source", source, *common, "--epochs", str(args.pretrain_epochs), env=env)
        print(
            f"source run: {args.model} on classes 0-4, {5 * args.pretrain_per_class} images, "
            f"{args.pretrain_epochs} epochs: test accuracy {pre['test']['accuracy']:.4f} ({pre['wall_s']:.0f} s)",
            flush=True,
        )
        small = ["--model", args.model, "--batch-size", "32", "--augment", "crop-flip", "--val-fraction", "0"]
        small += ["--epochs", str(args.epochs)]
        finetune = ["--init-from", str(root / "runs" / "source"), "--finetune"]
        finetune += ["--set", f"finetune.frozen_epochs={args.frozen_epochs}"]
        finetune += ["--set", f"finetune.lr_decay={args.lr_decay}"]
        scores: dict[str, list[float]] = {"transfer": [], "scratch": []}
        for seed in args.seeds:
            target = root / f"target-{seed}"
            link_tree(target / "train", data / "train", TARGET, args.per_class, seed=seed)
            link_tree(target / "test", data / "test", TARGET, None, seed=seed)
            seeded = [*small, "--seed", str(seed)]
            runs = root / "runs" / str(seed)
            transfer = train(runs / "transfer", target, *seeded, *finetune, env=env)
            scratch = train(runs / "scratch", target, *seeded, env=env)
            scores["transfer"].append(transfer["test"]["accuracy"])
            scores["scratch"].append(scratch["test"]["accuracy"])
            print(
                f"seed {seed}: {5 * args.per_class} images of classes 5-9, test on 5000: transfer "
                f"{scores['transfer'][-1]:.4f} ({transfer['wall_s']:.0f} s)  scratch {scores['scratch'][-1]:.4f} "
                f"({scratch['wall_s']:.0f} s)",
                flush=True,
            )
    margins = [t - s for t, s in zip(scores["transfer"], scores["scratch"], strict=True)]
    print(
        f"mean test accuracy over seeds {args.seeds}: transfer {statistics.mean(scores['transfer']):.4f}, "
        f"scratch {statistics.mean(scores['scratch']):.4f}; smallest margin of a seed {min(margins):+.4f}"
    )
    print(f"margin (transfer - scratch, mean over {len(margins)} seeds): {statistics.mean(margins):+.4f}")


if __name__ == "__main__":
    main()
