"""`torchsmith evaluate`: a run's weights on a split of its data (or another dataset).

The data is loaded with the run's config and seed, so the splits are the ones training
used, and normalised with the run's saved constants.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from torchsmith.after.run_dir import Run, data_split
from torchsmith.report.predictions import class_table_note, confusion_matrix, per_class_metrics
from torchsmith.train.tasks import task_for_data
from torchsmith.train.trainer import Trainer


@dataclass
class Evaluation:
    """Loss, accuracy and per-class metrics of one run on one split.

    Example:
        >>> result = evaluate_run("runs/a", split="test", checkpoint="final")  # doctest: +SKIP
        >>> result.metrics["accuracy"]  # doctest: +SKIP
        0.847
    """

    run: Path
    checkpoint: str
    data: str
    split: str
    num_samples: int
    metrics: dict[str, float]
    class_names: list[str] = field(default_factory=list)
    targets: torch.Tensor | None = None  # (N,) int64, classification only
    predicted: torch.Tensor | None = None  # (N,) int64 argmax of the outputs

    @property
    def confusion(self) -> torch.Tensor | None:
        """(C, C) counts, row = true class, column = predicted."""
        if self.targets is None or self.predicted is None or class_table_note(len(self.class_names)):
            return None  # past MAX_TABLE_CLASSES classes: skipped, with a note (to_dict, to_text)
        return confusion_matrix(self.targets, self.predicted, len(self.class_names))

    def per_class(self) -> list[dict[str, Any]]:
        confusion = self.confusion
        if confusion is None:
            return []
        values = per_class_metrics(confusion)
        return [
            {
                "class": name,
                "precision": float(values["precision"][i]),
                "recall": float(values["recall"][i]),
                "f1": float(values["f1"][i]),
                "support": int(values["support"][i]),
            }
            for i, name in enumerate(self.class_names)
        ]

    def to_dict(self) -> dict[str, Any]:
        rows = self.per_class()
        out: dict[str, Any] = {
            "run": str(self.run),
            "checkpoint": self.checkpoint,
            "data": self.data,
            "split": self.split,
            "num_samples": self.num_samples,
            **self.metrics,
        }
        if rows:
            out["macro_f1"] = sum(r["f1"] for r in rows) / len(rows)
            out["per_class"] = rows
            confusion = self.confusion
            assert confusion is not None
            out["confusion_matrix"] = confusion.tolist()
        elif self.targets is not None and (note := class_table_note(len(self.class_names))):
            out["per_class_note"] = note
        return out

    def to_text(self) -> str:
        head = (
            f"run {self.run}  checkpoint {self.checkpoint}  data {self.data}  "
            f"split {self.split} ({self.num_samples} samples)"
        )
        lines = [head, "  ".join(f"{k} {v:.4f}" for k, v in self.metrics.items())]
        rows = self.per_class()
        if rows:
            width = max(5, *(len(r["class"]) for r in rows))
            lines.append(f"{'class':<{width}}  precision  recall      f1  support")
            for r in rows:
                lines.append(
                    f"{r['class']:<{width}}  {r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1']:6.4f}"
                    f"  {r['support']:7d}"
                )
            macro = sum(r["f1"] for r in rows) / len(rows)
            lines.append(f"{'macro F1':<{width}}  {'':9}  {'':6}  {macro:6.4f}")
        elif self.targets is not None and (note := class_table_note(len(self.class_names))):
            lines.append(note)
        return "\n".join(lines)


def evaluate_run(
    run_dir: str | Path,
    *,
    checkpoint: str | None = None,
    data: str | None = None,
    data_dir: str | None = None,
    split: str = "test",
    device: str | None = None,
    trust_model_code: bool = False,
) -> Evaluation:
    """Evaluate a run's weights (best by default, else final) on a split of its data."""
    run = Run.open(run_dir)
    model, label = run.build_model(checkpoint, trust_model_code)
    bundle = run.load_data(data, data_dir)
    source = data_split(bundle, split)
    train_config = dataclasses.replace(
        run.config.train, progress="none", compile=False, device=device or run.config.train.device
    )
    trainer = Trainer(
        model,
        loss=run.config.loss,
        task=task_for_data(run.info),
        model_output=run.config.model.output,
        config=train_config,
        optim=run.config.optim,
    )
    collected: list[tuple[torch.Tensor, torch.Tensor]] = []
    metrics = trainer.evaluate(source, collect=collected)
    result = Evaluation(
        run.path, label, data or run.config.data.name, split, len(source), metrics, run.info.class_names
    )
    outputs = torch.cat([o for o, _ in collected]) if collected else torch.empty(0)
    if run.info.task == "classification" and outputs.dim() == 2:
        result.targets = torch.cat([t for _, t in collected]).long()
        result.predicted = outputs.argmax(dim=1)
    return result
