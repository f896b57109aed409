"""Commands that look at models, data and runs: summary, report, compare, doctor data."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchsmith.config import DataConfig, parse_model_args

if TYPE_CHECKING:
    import torch


def add_parsers(sub: Any) -> None:
    """Register the subcommands on the CLI's subparsers."""
    summary = sub.add_parser("summary", help="layer table: output shapes, parameters, FLOPs, memory")
    summary.add_argument("--model", default="simplenet", help="built-in name or path/to/file.py:ClassName")
    summary.add_argument("--model-args", default=None, help="constructor arguments as JSON")
    summary.add_argument("--data", default=None, help="size the model from this dataset (default mnist-sample)")
    summary.add_argument("--data-dir", default=None, help="local copy of the dataset")
    summary.add_argument("--input-shape", default=None, help="one sample's shape instead of data, e.g. 3x32x32")
    summary.add_argument("--num-classes", type=int, default=10, help="with --input-shape: the number of classes")
    summary.add_argument("--batch-size", type=int, default=64, help="batch size for the memory estimate")
    report = sub.add_parser("report", help="write R/report.html for a run directory")
    report.add_argument("run_dir", help="a run directory")
    compare = sub.add_parser("compare", help="compare runs: final metrics, config differences, curves")
    compare.add_argument("run_dirs", nargs="+", help="two or more run directories")
    compare.add_argument("--output", default="compare.html", help="the HTML file to write")
    doctor = sub.add_parser("doctor", help="scan a dataset for problems before training")
    doctor.add_argument("what", choices=["data"], help="what to examine")
    doctor.add_argument("--data", default="mnist-sample", help="dataset name or kind:PATH")
    doctor.add_argument("--data-dir", default=None, help="local copy of the dataset")
    doctor.add_argument("--split", default="train", choices=["train", "val", "test"])


def command_summary(args: argparse.Namespace) -> int:
    import torch

    from torchsmith.data.bundle import DataInfo
    from torchsmith.models.registry import build_model
    from torchsmith.report.model_summary import parse_shape, summary

    model_args = parse_model_args(args.model_args)
    if args.input_shape:
        shape = parse_shape(args.input_shape)
        info = DataInfo(
            modality="image" if len(shape) == 3 else "tensor", num_classes=args.num_classes, input_shape=shape
        )
        example = torch.zeros(2, *shape)
    else:
        from torchsmith.data.registry import load_data

        bundle = load_data(DataConfig(name=args.data or "mnist-sample", dir=args.data_dir), seed=0)
        info = bundle.info
        example = bundle.train.get_batch(torch.arange(2), None, train=False)[0]
    model = build_model(args.model, info, model_args)
    print(summary(model, example, batch_size=args.batch_size).to_text())
    return 0


def command_report(args: argparse.Namespace) -> int:
    from torchsmith.report.html import write_report

    print(write_report(Path(args.run_dir)))
    return 0


def command_compare(args: argparse.Namespace) -> int:
    from torchsmith.report.html import write_comparison

    print(write_comparison([Path(p) for p in args.run_dirs], Path(args.output)))
    return 0


def command_doctor(args: argparse.Namespace) -> int:
    from torchsmith.data.registry import load_data
    from torchsmith.doctor.data_scan import scan_data
    from torchsmith.errors import UsageError

    kind, _, path = args.data.partition(":")
    if kind in ("imagefolder", "imagecsv") and path:
        from torchsmith.doctor.image_scan import scan_image_files

        files = image_files_of(kind, path)
        print(f"{args.data}: files")
        print(scan_image_files(files).to_text())
    bundle = load_data(DataConfig(name=args.data, dir=args.data_dir), seed=0)
    source = getattr(bundle, args.split)
    if source is None:
        raise UsageError(f"dataset '{args.data}' has no {args.split} split")
    inputs, targets = split_tensors(source)
    num_classes = bundle.info.num_classes if bundle.info.task == "classification" else None
    report = scan_data(inputs, targets, num_classes)
    print(f"{args.data} ({args.split} split)")
    print(report.to_text())
    return 1 if report.has_errors else 0


def image_files_of(kind: str, path: str) -> list[str]:
    """The image files an imagefolder tree or an imagecsv table names."""
    from torchsmith.data.image_files import list_image_files
    from torchsmith.data.image_table import read_table

    if kind == "imagecsv":
        return read_table(Path(path), {})[0]
    return list_image_files(Path(path))


def split_tensors(source: Any) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    """All of a split's inputs and targets: raw uint8 images when held, else built batches."""
    if hasattr(source, "images") and hasattr(source, "labels") and not hasattr(source, "store"):
        return source.images, source.labels
    batches = [source.get_batch(chunk, None, False) for chunk in torch.arange(len(source)).split(4096)]
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


COMMANDS = {
    "summary": command_summary,
    "report": command_report,
    "compare": command_compare,
    "doctor": command_doctor,
}
