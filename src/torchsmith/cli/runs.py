"""The commands that use a finished run: evaluate, predict, export and generate.

Each takes the parsed arguments, calls the library and prints; the heavy imports happen
inside, so `torchsmith --help` stays fast.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

from torchsmith.cli.flags import CHECKPOINT_FLAG, TRUST_HELP
from torchsmith.errors import UsageError


def add_parsers(sub: Any) -> None:
    """Register evaluate, predict, generate and export on the CLI's subparsers."""
    generate = sub.add_parser("generate", help="sample text from a language model run (characters or BPE pieces)")
    generate.add_argument("run_dir", metavar="RUN", help="a run directory written by train")
    generate.add_argument("--prompt", default="\n", help="text to continue (default: a new line)")
    generate.add_argument(
        "--length", type=int, default=300, help="tokens to sample: characters, or pieces for a BPE model"
    )
    generate.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (0: greedy)")
    generate.add_argument("--top-k", type=int, default=None, help="sample only among the k likeliest tokens")
    generate.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same text")
    generate.add_argument("--checkpoint", **CHECKPOINT_FLAG)
    evaluate = sub.add_parser("evaluate", help="loss, accuracy and per-class metrics of a run on a data split")
    evaluate.add_argument("run_dir", metavar="RUN", help="a run directory written by train")
    evaluate.add_argument("--data", default=None, help="another dataset (default: the run's)")
    evaluate.add_argument("--data-dir", default=None, help="folder holding the dataset (default: the run's)")
    evaluate.add_argument("--split", default="test", choices=["test", "val", "train"])
    evaluate.add_argument("--checkpoint", **CHECKPOINT_FLAG)
    evaluate.add_argument("--device", default=None, help="auto, cpu, cuda, ... (default: the run's)")
    evaluate.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    predict = sub.add_parser(
        "predict", help="class labels and probabilities (values for regression) for input files or table rows"
    )
    predict.add_argument("run_dir", metavar="RUN", help="a run directory written by train")
    predict.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files (PNG, JPEG), texts or a .txt file with one per line, or WAV files",
    )
    predict.add_argument("--top-k", type=int, default=1, help="label/probability pairs per input")
    predict.add_argument("--checkpoint", **CHECKPOINT_FLAG)
    predict.add_argument("--output", default=None, metavar="FILE.csv", help="write a CSV file instead of printing")
    add_export_parser(sub)
    for command in (evaluate, predict):
        command.add_argument("--debug", action="store_true", help="show tracebacks")
    for command in (evaluate, predict, generate):
        command.add_argument("--trust-model-code", action="store_true", help=TRUST_HELP)


def add_export_parser(sub: Any) -> None:
    export = sub.add_parser("export", help="export a run's model and check it against the eager model")
    export.add_argument("run_dir", metavar="RUN", help="a run directory written by train")
    export.add_argument("--format", default="onnx", choices=["onnx", "exported-program", "torchscript", "safetensors"])
    export.add_argument("--output", default=None, metavar="FILE", help="default RUN/export/model.<suffix>")
    export.add_argument("--checkpoint", **CHECKPOINT_FLAG)
    export.add_argument("--tolerance", type=float, default=1e-4, help="largest max-abs difference accepted")
    export.add_argument("--data", default=None, help="dataset for the parity inputs (default: the run's)")
    export.add_argument("--data-dir", default=None, help="folder holding that dataset (default: the run's)")
    export.add_argument("--debug", action="store_true", help="show tracebacks")
    export.add_argument("--trust-model-code", action="store_true", help=TRUST_HELP)


def command_evaluate(args: argparse.Namespace) -> int:
    from torchsmith.after.evaluate import evaluate_run
    from torchsmith.io.files import write_json

    result = evaluate_run(
        args.run_dir,
        checkpoint=args.checkpoint,
        data=args.data,
        data_dir=args.data_dir,
        split=args.split,
        device=args.device,
        trust_model_code=args.trust_model_code,
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
    from torchsmith.after.predictor import load

    if args.top_k < 1:
        raise UsageError(f"--top-k must be a positive integer, got {args.top_k}")
    predictor = load(args.run_dir, args.checkpoint, trust_model_code=args.trust_model_code)
    rows = predictor.predict(list(args.inputs)).top_k(args.top_k)
    names = list(args.inputs)
    if predictor.preprocessing.get("kind") == "words":
        from torchsmith.after.preparers import expand_text_inputs

        names = expand_text_inputs(names)  # a .txt file stands for its lines
    elif predictor.preprocessing.get("kind") == "table":
        from torchsmith.after.preparers import table_rows

        names = table_rows(names)[0]  # a CSV file stands for its rows
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
    from torchsmith.after.export import CHECK_BATCHES, export_run

    result = export_run(
        args.run_dir,
        args.format,
        args.output,
        checkpoint=args.checkpoint,
        tolerance=args.tolerance,
        data=args.data,
        data_dir=args.data_dir,
        trust_model_code=args.trust_model_code,
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


def command_generate(args: argparse.Namespace) -> int:
    """Print text sampled from a character-level language model run."""
    from torchsmith.after.generate import generate_text
    from torchsmith.after.predictor import load

    predictor = load(args.run_dir, args.checkpoint, trust_model_code=args.trust_model_code)
    print(generate_text(predictor, args.prompt, args.length, args.temperature, args.top_k, args.seed))
    return 0


COMMANDS = {
    "evaluate": command_evaluate,
    "predict": command_predict,
    "export": command_export,
    "generate": command_generate,
}
