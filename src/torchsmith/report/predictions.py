"""Test-split predictions of a run: writing and reading them, confusion matrix, per-class metrics.

Files (in a run directory R): `predictions.safetensors` with `targets` int64 (N,),
`probabilities` float32 (N, C), optionally `examples` (K, ...) and `example_indices` (K,);
`predictions.json` with `class_names`, `modality` and the examples' texts or file names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from torchsmith.errors import UsageError
from torchsmith.io.files import read_json

MODALITIES = ("image", "text", "audio", "table")


@dataclass
class Predictions:
    targets: torch.Tensor  # (N,) int64
    probabilities: torch.Tensor  # (N, C) float32
    class_names: list[str]
    modality: str = "image"
    examples: torch.Tensor | None = None  # (K, ...)
    indices: torch.Tensor | None = None  # (K,) int64
    texts: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def save_predictions(
    run_dir: str | Path,
    targets: torch.Tensor,
    probabilities: torch.Tensor,
    class_names: list[str],
    modality: str,
    examples: torch.Tensor | None = None,
    example_indices: torch.Tensor | None = None,
    example_texts: list[str] | None = None,
    example_names: list[str] | None = None,
) -> Path:
    """Write `predictions.safetensors` and `predictions.json` for the report.

    Example:
        >>> wrong = most_confident_mistakes(targets, probabilities)
        >>> save_predictions("runs/a", targets, probabilities, names, "image",
        ...                  examples=test_images[wrong], example_indices=wrong)
    """
    run = Path(run_dir)
    preds = Predictions(
        targets.detach().cpu().long().reshape(-1),
        probabilities.detach().cpu().float(),
        [str(name) for name in class_names],
        modality,
        None if examples is None else examples.detach().cpu().contiguous(),
        None if example_indices is None else example_indices.detach().cpu().long(),
        [str(text) for text in example_texts or []],
        [str(name) for name in example_names or []],
    )
    _check(preds, "save_predictions")
    tensors = {"targets": preds.targets, "probabilities": preds.probabilities}
    if preds.examples is not None:
        tensors["examples"] = preds.examples
    if preds.indices is not None:
        tensors["example_indices"] = preds.indices
    run.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, run / "predictions.safetensors")
    meta = {"class_names": preds.class_names, "modality": modality}
    meta |= {"example_texts": preds.texts, "example_names": preds.names}
    (run / "predictions.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return run / "predictions.safetensors"


def most_confident_mistakes(targets: torch.Tensor, probabilities: torch.Tensor, k: int = 16) -> torch.Tensor:
    """Indices (int64) of the at most `k` wrong predictions with the highest confidence.

    Example:
        >>> probabilities = torch.tensor([[0.2, 0.8], [0.1, 0.9], [0.4, 0.6]])
        >>> most_confident_mistakes(torch.tensor([0, 1, 0]), probabilities)
        tensor([0, 2])
    """
    confidence, predicted = probabilities.max(dim=1)
    wrong = torch.nonzero(predicted != targets).flatten()
    order = torch.sort(confidence[wrong], descending=True, stable=True).indices
    return wrong[order[:k]].long()


MAX_TABLE_CLASSES = 1000  # past this the (C, C) matrix and the per-class tables are skipped


def class_table_note(num_classes: int) -> str | None:
    """Why the confusion matrix and per-class table are left out, or None when they fit: past
    MAX_TABLE_CLASSES classes the matrix alone would take C x C x 8 bytes (80 GB at 100,000)."""
    if num_classes <= MAX_TABLE_CLASSES:
        return None
    return (
        f"{num_classes:,} classes: the confusion matrix and per-class table are skipped "
        f"(more than {MAX_TABLE_CLASSES:,} classes; they would take {num_classes**2 * 8:,} bytes)"
    )


def confusion_matrix(targets: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64 counts: row = true class, column = predicted class.

    Example:
        >>> confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 2)
        tensor([[1, 0],
                [1, 1]])
    """
    # One bincount over (true, predicted) pairs: exact counts, no metric objects.
    pairs = targets.long() * num_classes + predicted.long()
    counts = torch.bincount(pairs, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def per_class_metrics(confusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """Precision, recall, F1 (0 where undefined) and support per class.

    Example:
        >>> per_class_metrics(torch.tensor([[1, 0], [1, 1]]))["recall"]
        tensor([1.0000, 0.5000], dtype=torch.float64)
    """
    hits = confusion.diag().double()
    support = confusion.sum(dim=1)
    precision = hits / confusion.sum(dim=0).clamp(min=1)
    recall = hits / support.clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def read_predictions(run: Path) -> Predictions | None:
    path = run / "predictions.safetensors"
    if not path.is_file():
        return None
    tensors, meta = load_file(path), read_json(run / "predictions.json")
    if "targets" not in tensors or "probabilities" not in tensors:
        raise UsageError(f"{path} lacks 'targets' or 'probabilities': {sorted(tensors)}.")
    probabilities = tensors["probabilities"].float()
    names = meta.get("class_names") or range(probabilities.shape[-1])
    preds = Predictions(
        tensors["targets"].long(), probabilities, [str(n) for n in names],
        meta.get("modality", "image"), tensors.get("examples"),
        tensors.get("example_indices"), list(meta.get("example_texts") or []),
        list(meta.get("example_names") or []),
    )  # fmt: skip
    _check(preds, str(path))
    return preds


def _check(p: Predictions, where: str) -> None:
    """Raise one UsageError listing every inconsistency in `p`."""
    n, probs, problems = len(p.targets), p.probabilities, []
    if probs.dim() != 2 or len(probs) != n:
        problems.append(f"probabilities must be (N={n}, C), got {tuple(probs.shape)}")
    elif (probs < 0).any() or not torch.allclose(probs.sum(1), torch.ones(n), atol=1e-3):
        problems.append("probability rows must be >= 0 and sum to 1 (softmax the logits)")
    else:
        if len(p.class_names) != probs.shape[1]:
            problems.append(f"{len(p.class_names)} class names for {probs.shape[1]} classes")
        if n and (p.targets.min() < 0 or p.targets.max() >= probs.shape[1]):
            problems.append(f"targets must lie in [0, {probs.shape[1]})")
    if p.modality not in MODALITIES:
        problems.append(f"modality must be one of {MODALITIES}, got {p.modality!r}")
    k = None if p.indices is None else len(p.indices)
    if p.examples is not None and len(p.examples) != k:
        problems.append("examples need example_indices of the same length")
    if k and p.indices is not None and (p.indices.min() < 0 or p.indices.max() >= n):
        problems.append(f"example_indices must lie in [0, {n})")
    for name, items in (("example_texts", p.texts), ("example_names", p.names)):
        if items and len(items) != k:
            problems.append(f"{name} has {len(items)} entries for {k} example_indices")
    if problems:
        raise UsageError(f"{where}: " + "; ".join(problems) + ".")
