"""The after-training commands: evaluate, predict, export and lr-find.

Each takes the parsed arguments, calls the library and prints; the heavy imports happen
inside, so `torchsmith --help` stays fast.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from torchsmith.errors import UsageError


def command_evaluate(args: argparse.Namespace) -> int:
    from torchsmith.evaluation import evaluate_run
    from torchsmith.tracking import write_json

    result = evaluate_run(
        args.run_dir,
        checkpoint=args.checkpoint,
        data=args.data,
        data_dir=args.data_dir,
        split=args.split,
        device=args.device,
    )
    print(result.to_text())
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, result.to_dict())
        print(f"wrote {path}", file=sys.stderr)
    return 0


def command_predict(args: argparse.Namespace) -> int:
    """One line per input: INPUT, then LABEL and PROBABILITY `--top-k` times, tab-separated."""
    from torchsmith.predictor import load

    if args.top_k < 1:
        raise UsageError(f"--top-k must be a positive integer, got {args.top_k}")
    predictor = load(args.run_dir, args.checkpoint)
    rows = predictor.predict(list(args.inputs)).top_k(args.top_k)
    names = list(args.inputs)
    if predictor.preprocessing.get("kind") == "words":
        from torchsmith.text_audio_predict import expand_text_inputs

        names = expand_text_inputs(names)  # a .txt file stands for its lines
    if args.output:
        write_predictions_csv(Path(args.output), names, rows)
        print(f"wrote {len(rows)} predictions to {args.output} (checkpoint {predictor.checkpoint})", file=sys.stderr)
        return 0
    for name, row in zip(names, rows, strict=True):
        print("\t".join([name, *(f"{label}\t{probability:.4f}" for label, probability in row)]))
    return 0


def write_predictions_csv(path: Path, inputs: list[str], rows: list[list[tuple[str, float]]]) -> None:
    """Columns input, label, probability, then label_2, probability_2, ... for top-k."""
    k = len(rows[0]) if rows else 1
    header = ["input", "label", "probability"]
    for rank in range(2, k + 1):
        header += [f"label_{rank}", f"probability_{rank}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for name, row in zip(inputs, rows, strict=True):
            writer.writerow([name, *(value for label, p in row for value in (label, f"{p:.6f}"))])


def command_export(args: argparse.Namespace) -> int:
    from torchsmith.export import CHECK_BATCHES, export_run

    result = export_run(
        args.run_dir,
        args.format,
        args.output,
        checkpoint=args.checkpoint,
        tolerance=args.tolerance,
        data=args.data,
        data_dir=args.data_dir,
    )
    size_mb = result.path.stat().st_size / 2**20
    print(f"exported {result.format} ({result.checkpoint}): {result.path} ({size_mb:.2f} MB)")
    checks = ", ".join(f"batch {b}: {result.differences[b]:.3g}" for b in CHECK_BATCHES)
    print(
        f"parity with the eager model on real inputs, max abs difference: {checks} (tolerance {result.tolerance:g}) ok"
    )
    print(f"preprocessing: {result.preprocessing_path}")
    if result.format == "torchscript":
        print("note: TorchScript is deprecated in PyTorch; prefer --format exported-program or onnx", file=sys.stderr)
    return 0


def command_lr_find(args: argparse.Namespace) -> int:
    from torchsmith.cli import config_from_args
    from torchsmith.lrfind import lr_find_run

    config = config_from_args(args)
    result = lr_find_run(config, min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps)
    print(result.to_text())
    if args.plot:
        print(f"plot: {result.plot(args.plot)}", file=sys.stderr)
    print(f"train with: --optimizer {config.optim.name} --lr {result.suggestion:.3g}")
    return 0


def command_generate(args: argparse.Namespace) -> int:
    """Print text sampled from a character-level language model run."""
    from torchsmith.predictor import load
    from torchsmith.text_audio_predict import generate_text

    predictor = load(args.run_dir, args.checkpoint)
    print(generate_text(predictor, args.prompt, args.length, args.temperature, args.top_k, args.seed))
    return 0
