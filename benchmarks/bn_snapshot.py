"""Cost of guarding BatchNorm statistics: the per-step copy of every buffer before the forward
(`BufferSnapshot.take`, one fused copy) against one training step of the same model, ConvBNNet
(conv-BN-ReLU blocks, the built-in `convbn`) on MNIST-shaped batches of 16 (a small step, so
the copy weighs more than usual), SGD. Rounds interleave 200 copies and 5 steps; medians.

    python benchmarks/bn_snapshot.py --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from torchsmith.models.vision import ConvBNNet
from torchsmith.train.guard import BufferSnapshot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ConvBNNet(input_shape=(1, 28, 28), num_classes=10)
    snapshot = BufferSnapshot(list(model.buffers()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    inputs, targets = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))

    def step() -> None:
        nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()  # warm-up
    copies, steps = [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for _ in range(200):
            snapshot.take()
        copies.append((time.perf_counter() - start) / 200)
        start = time.perf_counter()
        for _ in range(5):
            step()
        steps.append((time.perf_counter() - start) / 5)
    copy, one_step = statistics.median(copies), statistics.median(steps)
    print(f"ConvBNNet: {len(snapshot.buffers)} buffers, {sum(b.numel() for b in snapshot.buffers)} values")
    print(f"copy {copy * 1e6:.1f} us, step {one_step * 1e6:.0f} us; torch {torch.__version__}")
    print(f"snapshot cost ratio (copy / step) = {copy / one_step:.4f}")


if __name__ == "__main__":
    main()
