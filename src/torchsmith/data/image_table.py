"""`imagecsv:labels.csv`: image files named in a table, with their labels.

The layout most public image datasets ship with: one row per image, a column with the
file's path (relative to the table) and one with its label. A label cell holding several
labels (separated by `|`, or by spaces) makes a multi-label task with multi-hot targets.
Columns are chosen with `data.options.path_column` / `label_column`; without them the
first column named like a path (path, file, filename, image, ...) and like a label
(label, labels, class, tags, ...) are used, else the first two columns.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import torch

from torchsmith.data.bundle import DataBundle
from torchsmith.data.image_sets import check_classes, image_bundle, open_labelled
from torchsmith.data.image_store import ImageOptions
from torchsmith.data.memory import split_indices
from torchsmith.data.unicode import check_read_size
from torchsmith.errors import UsageError

PATH_NAMES = ("path", "file", "filename", "file_name", "image", "image_path", "img", "fname")
LABEL_NAMES = ("label", "labels", "class", "category", "target", "tags", "tag")


def read_table(table: Path, options: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(absolute file paths, labels per row) from a CSV/TSV table."""
    if not table.is_file():
        raise UsageError(f"label table {table} does not exist; imagecsv:PATH names a CSV file of path,label rows")
    check_read_size(table)
    text = table.read_text(encoding="utf-8-sig")
    dialect = "excel-tab" if table.suffix.lower() == ".tsv" else "excel"
    rows = list(csv.DictReader(text.splitlines(), dialect=dialect))
    if not rows:
        raise UsageError(f"label table {table} has no rows: expected a header and one row per image")
    columns = list(rows[0].keys())
    path_column = _column(columns, options.get("path_column"), PATH_NAMES, 0, table)
    label_column = _column(columns, options.get("label_column"), LABEL_NAMES, 1, table)
    separator = _separator(options.get("label_separator"), [r[label_column] or "" for r in rows])
    files, labels, missing = [], [], []
    for row in rows:
        name = (row[path_column] or "").strip()
        path = (table.parent / name).resolve()
        if not name or not path.is_file():
            missing.append(name or "(empty)")
            continue
        files.append(str(path))
        cell = (row[label_column] or "").strip()
        labels.append([p for p in re.split(separator, cell) if p] if separator else [cell])
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise UsageError(
            f"{table} names {len(missing)} file(s) that do not exist: {shown}. Paths are relative to the "
            f"table's folder ({table.parent}); fix them or remove those rows"
        )
    return files, labels


def _column(columns: list[str], chosen: Any, names: tuple[str, ...], position: int, table: Path) -> str:
    if chosen is not None:
        if chosen not in columns:
            raise UsageError(f"{table} has no column '{chosen}'; its columns are: {', '.join(columns)}")
        return str(chosen)
    by_name = {c.strip().lower(): c for c in columns}
    for name in names:
        if name in by_name:
            return by_name[name]
    if len(columns) < 2:
        raise UsageError(f"{table} needs two columns (image path, label), found {columns}")
    return columns[position]


def _separator(option: Any, cells: list[str]) -> str | None:
    """The regex between labels in one cell: `|` if any cell has one, else spaces if any has one."""
    if option is not None:
        return None if str(option) in ("", "none") else re.escape(str(option))
    if any("|" in c for c in cells):
        return r"\s*\|\s*"
    if any(" " in c.strip() for c in cells):
        return r"\s+"
    return None


def load_imagecsv(
    table: str, options: dict[str, Any], *, val_fraction: float, seed: int, augment: str, test_fraction: float = 0.1
) -> DataBundle:
    """The images a table names, split by seed into train/val/test."""
    path = Path(table)
    files, labels = read_table(path, options)
    classes = sorted({label for row in labels for label in row})
    check_classes(classes, str(path))
    index = {name: i for i, name in enumerate(classes)}
    if any(len(row) != 1 for row in labels):
        targets = torch.zeros(len(files), len(classes))
        for i, row in enumerate(labels):
            targets[i, [index[name] for name in row]] = 1.0
    else:
        targets = torch.tensor([index[row[0]] for row in labels], dtype=torch.int64)
    image_options = ImageOptions.from_options(options)
    full = open_labelled(files, targets, image_options, str(path))
    rest, test_idx = split_indices(len(full.rows), test_fraction, seed + 1)
    parts = {"train": full.take(rest), "test": full.take(test_idx), "val": None}
    return image_bundle(parts, classes, image_options, val_fraction=val_fraction, seed=seed, augment=augment)
