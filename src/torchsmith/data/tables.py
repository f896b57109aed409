"""Tables: `table:PATH.csv` with numeric and categorical feature columns and a target column.

- the target is `data.options.target` (one name, or several joined by commas for a multi-output
  regression), else a column named `target` or `label`, else the last column;
- the task follows the target: numbers -> regression, names -> classification
  (`data.options.task` decides where numbers are class codes);
- numeric features are standardised with the training split's mean and std (a missing value
  becomes the mean, 0 after standardising); categorical ones are one-hot over the values the
  training split holds, with one more slot for a value it never saw (or a missing one);
- a regression target is standardised too (`data.options.standardize_target`, on by default): the
  metrics and `predict` undo it, so they are in the target's own units;
- the test split is `data.options.test` (another CSV) or `data.options.test_fraction` of the rows
  (0.2 by default), the validation split `data.val_fraction` of the rest.

All of it is saved in `preprocessing.json`, so `predict` and `export` encode rows as training did.
The reader is Python's csv module: no extra dependency (Parquet would need pyarrow or pandas).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import torch

from torchsmith.data.bundle import DataBundle, DataInfo
from torchsmith.data.memory import TensorPairs, split_indices
from torchsmith.data.unicode import check_read_size
from torchsmith.errors import UsageError

TARGET_NAMES = ("target", "label")
Rows = list[dict[str, str]]


def read_rows(path: str | Path) -> tuple[list[str], Rows]:
    """The header and rows of a CSV file (UTF-8, a BOM allowed)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"table file {path} does not exist: --data table:PATH names a CSV file")
    if path.suffix.lower() not in (".csv", ".txt"):
        raise UsageError(f"{path}: tables are read from CSV files (.csv); convert other formats to CSV first")
    check_read_size(path)
    with path.open(encoding="utf-8-sig", newline="") as file:
        reader = csv.DictReader(file)
        columns = list(reader.fieldnames or [])
        rows = [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    if not columns or not rows:
        raise UsageError(f"{path} holds no rows under a header line; a table needs both")
    return columns, rows


def target_columns(columns: list[str], option: Any) -> list[str]:
    if option:
        names = [name.strip() for name in str(option).split(",") if name.strip()]
        missing = [name for name in names if name not in columns]
        if missing:
            raise UsageError(
                f"data.options.target names '{missing[0]}', which is no column; columns: {', '.join(columns)}"
            )
        return names
    lower = {name.lower(): name for name in columns}
    return [next((lower[n] for n in TARGET_NAMES if n in lower), columns[-1])]


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _numeric(values: list[str]) -> bool:
    present = [v for v in values if v != ""]
    return bool(present) and all(_number(v) is not None for v in present)


def describe_columns(rows: Rows, features: list[str]) -> list[dict[str, Any]]:
    """Per feature column, its encoding from the training rows: numeric (mean, std) or categorical (values)."""
    described = []
    for name in features:
        values = [row.get(name, "") for row in rows]
        if _numeric(values):
            numbers = torch.tensor([_number(v) for v in values if v != ""], dtype=torch.float64)
            std = float(numbers.std()) if numbers.numel() > 1 else 0.0
            described.append({"name": name, "type": "numeric", "mean": float(numbers.mean()), "std": std or 1.0})
        else:
            described.append({"name": name, "type": "categorical", "values": sorted({v for v in values if v != ""})})
    return described


def encode_rows(rows: Rows, columns: list[dict[str, Any]]) -> torch.Tensor:
    """Rows -> float32 features (N, F) as `columns` (from preprocessing.json) describe them."""
    parts = []
    for column in columns:
        name = column["name"]
        if column["type"] == "numeric":
            numbers = [_number(row.get(name, "") or "") for row in rows]
            mean, std = column["mean"], column["std"]
            parts.append(torch.tensor([[0.0 if v is None else (v - mean) / std] for v in numbers], dtype=torch.float64))
        else:
            index = {value: i + 1 for i, value in enumerate(column["values"])}  # 0: unknown or missing
            ids = torch.tensor([index.get(row.get(name, ""), 0) for row in rows])
            parts.append(torch.nn.functional.one_hot(ids, len(index) + 1).double())
    return torch.cat(parts, dim=1).float()


def feature_width(columns: list[dict[str, Any]]) -> int:
    return sum(1 if c["type"] == "numeric" else len(c["values"]) + 1 for c in columns)


def _target(rows: Rows, names: list[str], task: str, target: dict[str, Any]) -> torch.Tensor:
    if task == "classification":
        index = {value: i for i, value in enumerate(target["classes"])}
        return torch.tensor([index[row[names[0]]] for row in rows], dtype=torch.int64)
    values = torch.tensor([[_number(row[n]) for n in names] for row in rows], dtype=torch.float64)  # (N, K)
    values = (values - torch.tensor(target["mean"], dtype=torch.float64)) / torch.tensor(
        target["std"], dtype=torch.float64
    )
    return (values.squeeze(1) if len(names) == 1 else values).float()


def _choose_task(rows: Rows, names: list[str], option: Any) -> str:
    numeric = all(_numeric([row[n] for row in rows]) for n in names)
    task = str(option) if option else ("regression" if numeric else "classification")
    if task not in ("regression", "classification"):
        raise UsageError(f"data.options.task must be regression or classification, got '{task}'")
    if task == "regression" and not numeric:
        raise UsageError(f"regression needs numbers in the target column(s) {', '.join(names)}; some are not")
    if task == "classification" and len(names) != 1:
        raise UsageError("classification takes one target column; name it with data.options.target")
    if any(row[n] == "" for row in rows for n in names):
        raise UsageError(f"the target column(s) {', '.join(names)} have empty cells; drop those rows first")
    return task


def _splits(rows: Rows, options: dict[str, Any], val_fraction: float, seed: int) -> tuple[Rows, Rows, Rows]:
    if options.get("test"):
        test = read_rows(options["test"])[1]
    else:
        rest_index, test_index = split_indices(len(rows), float(options.get("test_fraction", 0.2)), seed)
        test, rows = [rows[i] for i in test_index.tolist()], [rows[i] for i in rest_index.tolist()]
    train_index, val_index = split_indices(len(rows), val_fraction, seed + 1)
    return [rows[i] for i in train_index.tolist()], [rows[i] for i in val_index.tolist()], test


def load_table(path: str, options: dict[str, Any], val_fraction: float, seed: int) -> DataBundle:
    """A CSV table as in-memory splits of float features and class ids or (standardised) numbers."""
    columns, rows = read_rows(path)
    targets = target_columns(columns, options.get("target"))
    dropped = [c.strip() for c in str(options.get("drop") or "").split(",") if c.strip()]
    features = [c for c in columns if c not in targets and c not in dropped]
    if not features:
        raise UsageError(f"{path} has no feature column besides the target {', '.join(targets)}")
    task = _choose_task(rows, targets, options.get("task"))
    train, val, test = _splits(rows, options, val_fraction, seed)
    described = describe_columns(train, features)
    target: dict[str, Any] = {"columns": targets}
    if task == "classification":
        target["classes"] = sorted({row[targets[0]] for row in rows + test})
    else:
        values = torch.tensor([[_number(row[n]) for n in targets] for row in train], dtype=torch.float64)
        scale = options.get("standardize_target", True)
        target["mean"] = values.mean(dim=0).tolist() if scale else [0.0] * len(targets)
        target["std"] = [s or 1.0 for s in values.std(dim=0).tolist()] if scale else [1.0] * len(targets)

    def source(part: Rows) -> TensorPairs | None:
        return TensorPairs(encode_rows(part, described), _target(part, targets, task, target)) if part else None

    preprocessing = {"kind": "table", "columns": described, "target": target}
    if task == "regression":
        preprocessing["task_options"] = {"mean": target["mean"], "std": target["std"]}
    info = DataInfo(
        modality="table",
        num_classes=len(target["classes"]) if task == "classification" else len(targets),
        input_shape=(feature_width(described),),
        class_names=target["classes"] if task == "classification" else targets,
        task=task,
        preprocessing=preprocessing,
    )
    return DataBundle(source(train), source(val), source(test), info)
