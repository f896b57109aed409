"""Preparers that turn raw text and WAV inputs into model inputs, as training built them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from torchsmith.data.bundle import DataInfo
from torchsmith.data.unicode import read_utf8
from torchsmith.errors import UsageError


def expand_text_inputs(items: list[Any]) -> list[str]:
    """Strings as given; an existing `.txt` file stands for its non-empty lines."""
    texts: list[str] = []
    for item in items:
        path = Path(str(item))
        if str(item).endswith(".txt") and path.is_file():
            texts += [line.strip() for line in read_utf8(path).splitlines() if line.strip()]
        elif isinstance(item, (str, Path)):
            texts.append(str(item))
        else:
            raise UsageError(f"this run takes text (strings or a .txt file with one input per line), got {item!r}")
    if not texts:
        raise UsageError("predict got no text to classify")
    return texts


def prepare_words(items: list[Any], preprocessing: dict[str, Any], info: DataInfo) -> torch.Tensor:
    """Token ids (N, L) with the run's own tokenizer (words, characters or learned pieces, as
    saved) and length cap, padded with 0 ((N, L, P) when the tokenizer adds n-gram pieces)."""
    from torchsmith.data.text import tokenizer_from_state

    tokenizer = tokenizer_from_state(preprocessing["tokenizer"])
    ids, lengths = tokenizer.encode_batch(expand_text_inputs(items), int(preprocessing["max_len"]))
    return ids[:, : max(1, int(lengths.max()))]


def prepare_logmel(items: list[Any], preprocessing: dict[str, Any], info: DataInfo) -> torch.Tensor:
    """Log-mel spectrograms (N, 1, n_mels, frames) of WAV files, with the run's settings."""
    from torchsmith.data.audio import preprocess_files

    paths = []
    for item in items:
        path = Path(str(item))
        if not path.is_file():
            raise UsageError(f"input '{item}' is not a file: this run takes WAV file paths")
        paths.append(path)
    return preprocess_files(paths, preprocessing)


def table_rows(items: list[Any]) -> tuple[list[str], list[dict[str, str]]]:
    """Rows to predict from CSV files (every row; a target column is ignored) or dicts of column
    values, with a name for each (`FILE:ROW`, rows counted from 1)."""
    from torchsmith.data.tables import read_rows

    names: list[str] = []
    rows: list[dict[str, str]] = []
    for item in items:
        if isinstance(item, dict):
            rows.append({str(k): str(v) for k, v in item.items()})
            names.append(f"row {len(rows)}")
        elif isinstance(item, (str, Path)) and Path(item).is_file():
            found = read_rows(item)[1]
            rows += found
            names += [f"{item}:{i + 1}" for i in range(len(found))]
        else:
            raise UsageError(f"this run takes table rows: CSV files with the training columns, or dicts; got {item!r}")
    if not rows:
        raise UsageError("predict got no table rows")
    return names, rows


def prepare_table(items: list[Any], preprocessing: dict[str, Any], info: DataInfo) -> torch.Tensor:
    """Float features (N, F) of table rows, encoded with the run's column statistics and values
    (a category value never seen in training gets the unknown slot)."""
    from torchsmith.data.tables import encode_rows

    return encode_rows(table_rows(items)[1], preprocessing["columns"])
