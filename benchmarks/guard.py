"""Cost of the NaN guard: torchsmith's Trainer with the guard (the default) against the same
Trainer with `nan_guard=False`, on the overhead job (SimpleNet, MNIST in memory, batch 64,
SGD lr 0.01, two epochs), interleaved; the ratio is the median of the per-round ratios.

The same rounds also run the hand-written loop with and without the guard's finite check
alone (one fused pass over the loss and the gradients, nothing else of the Trainer): that
ratio is what any exact check before the optimizer step costs on this job and machine.

    python benchmarks/guard.py --data-dir ../shared/data/mnist --repeats 5
    python benchmarks/guard.py --model convnet --epochs 1 --repeats 3   # a larger step
"""

from __future__ import annotations

import argparse

import torch
from common import DEFAULT_DATA, interleaved, median, paired_ratio
from overhead import MODELS, hand_written, load_mnist, with_trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA / "mnist"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--model", choices=sorted(MODELS), default="simplenet")
    args = parser.parse_args()
    x, y = load_mnist(args.data_dir)
    times = interleaved(
        {
            "guard": lambda: with_trainer(x, y, args.epochs, guard=True, model_name=args.model),
            "no-guard": lambda: with_trainer(x, y, args.epochs, guard=False, model_name=args.model),
            "hand+check": lambda: hand_written(x, y, args.epochs, check=True, model_name=args.model),
            "hand": lambda: hand_written(x, y, args.epochs, model_name=args.model),
        },
        args.repeats,
    )
    print(
        f"{args.model}; torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats} repeats"
    )
    steps = args.epochs * -(-len(x) // 64)
    ratio = paired_ratio(times, "guard", "no-guard")
    extra = median([(a - b) / steps * 1e6 for a, b in zip(times["guard"], times["no-guard"], strict=True)])
    print(f"guard {median(times['guard']):.2f} s, no guard {median(times['no-guard']):.2f} s ({extra:.1f} us per step)")
    floor = paired_ratio(times, "hand+check", "hand")
    print(f"the finite check alone in the hand-written loop: {floor:.3f}")
    print(f"guard cost ratio (with / without) = {ratio:.3f}")


if __name__ == "__main__":
    main()
