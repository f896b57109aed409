"""Cost of guarding BatchNorm statistics: the per-step copy of every buffer before the forward
(`BufferSnapshot.take`, one fused copy) against the same training step without it, on ConvBNNet
(conv-BN-ReLU blocks, the built-in `convbn`) with MNIST-shaped batches of 16 (a small step, so the copy weighs more), SGD, interleaved;
the ratio is the median of the per-round ratios.

    python benchmarks/bn_snapshot.py --steps 20 --repeats 5
"""

from __future__ import annotations

import argparse

import torch
from common import interleaved, median, paired_ratio
from torch import nn

from torchsmith.models.vision import ConvBNNet
from torchsmith.train.guard import BufferSnapshot


def runner(model: nn.Module, snapshot: BufferSnapshot | None, steps: int) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(0)
    inputs, targets = torch.randn(16, 1, 28, 28, generator=generator), torch.randint(0, 10, (16,), generator=generator)
    for _ in range(steps):
        if snapshot is not None:
            snapshot.take()
        loss = nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ConvBNNet(input_shape=(1, 28, 28), num_classes=10)
    snapshot = BufferSnapshot(list(model.buffers()))
    times = interleaved(
        {
            "snapshot": lambda: runner(model, snapshot, args.steps),
            "plain": lambda: runner(model, None, args.steps),
        },
        args.repeats,
    )
    count = sum(b.numel() for b in snapshot.buffers)
    extra = median([(a - b) / args.steps * 1e6 for a, b in zip(times["snapshot"], times["plain"], strict=True)])
    print(f"ConvBNNet: {len(snapshot.buffers)} buffers, {count} values; torch {torch.__version__}")
    print(f"{extra:.1f} us per step")
    print(f"snapshot cost ratio (with / without) = {paired_ratio(times, 'snapshot', 'plain'):.3f}")


if __name__ == "__main__":
    main()
