"""Multi-label CIFAR-10: every image carries two labels, its class and "vehicle" or "animal"
(12 labels in all), trained with binary cross entropy per label through the Python API; prints
the test split's per-label F1 (threshold 0.5), macro/micro F1 and mAP, computed from the
Trainer's summed statistics.

    python benchmarks/multilabel_cifar.py --data-dir PATH/TO/cifar10-jpeg --epochs 4
    python benchmarks/multilabel_cifar.py --epochs 3 --train-samples 20000   # a few minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from common import DEFAULT_DATA, device_name

from torchsmith import Trainer
from torchsmith.data.memory import ImageTensors
from torchsmith.data.vision import load_cifar10
from torchsmith.models.vision import ConvBNNet
from torchsmith.train.multilabel import MultiLabel

VEHICLES = ("airplane", "automobile", "ship", "truck")


class TwoLabels:
    """CIFAR-10 images with multi-hot targets (B, 12): the class, then vehicle / animal."""

    def __init__(self, images: ImageTensors, class_names: list[str]) -> None:
        self.images = images
        self.vehicle = torch.tensor([name in VEHICLES for name in class_names])
        self.augment = images.augment

    def __len__(self) -> int:
        return len(self.images)

    def get_batch(
        self, indices: torch.Tensor, generator: torch.Generator | None, train: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, labels = self.images.get_batch(indices, generator, train)
        vehicle = self.vehicle.to(labels.device)[labels]
        targets = torch.cat(
            [torch.nn.functional.one_hot(labels, 10), vehicle[:, None], ~vehicle[:, None]], dim=1
        )  # (B, 12)
        return x, targets.float()

    def to(self, device: torch.device) -> TwoLabels:
        self.images = self.images.to(device)
        self.vehicle = self.vehicle.to(device)
        return self


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA / "cifar10-jpeg"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train-samples", type=int, default=None, help="train on the first N images only")
    args = parser.parse_args()
    bundle = load_cifar10(args.data_dir, val_fraction=0.1, seed=0, augment="flip")
    names = [*bundle.info.class_names, "vehicle", "animal"]
    # a seeded random subset: the image tree's split is in class order
    chosen = torch.randperm(len(bundle.train), generator=torch.Generator().manual_seed(0))[: args.train_samples]
    images = bundle.train if args.train_samples is None else bundle.train.subset(chosen.sort().values)
    train, test = TwoLabels(images, names[:10]), TwoLabels(bundle.test, names[:10])
    torch.manual_seed(0)
    model = ConvBNNet(input_shape=(3, 32, 32), num_classes=12, widths=(32, 64, 128))
    trainer = Trainer(
        model,
        task=MultiLabel(names=names, threshold=0.5),
        max_epochs=args.epochs,
        batch_size=128,
        device=args.device,
        progress="lines",
        metrics="f1_macro,f1_micro,f1_per_label,map,exact_match",
    )
    start = time.perf_counter()
    trainer.fit(train)
    seconds = time.perf_counter() - start
    metrics = trainer.evaluate(test)
    print(json.dumps({k: round(v, 4) for k, v in metrics.items()}, indent=1))
    print(f"device {device_name(str(trainer.device))}, {args.epochs} epochs in {seconds:.0f} s")
    per_label = ", ".join(f"{name} {metrics[f'f1_{name}']:.3f}" for name in names)
    print(f"per-label F1: {per_label}")
    print(f"test mAP {metrics['map']:.4f}  macro F1 {metrics['f1_macro']:.4f}  micro F1 {metrics['f1_micro']:.4f}")


if __name__ == "__main__":
    main()
