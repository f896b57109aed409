"""Text classification data: TSV/CSV tables and SST-2, tokenized in memory.

Files are read as strict UTF-8 (`torchsmith.data.unicode`); the tokenizer is chosen by
`TokenizerOptions` (words, characters or a learned subword vocabulary; by default by script).

Token ids live in memory as one padded (N, L) tensor; a batch is trimmed to its longest
sequence (`TokenBatches`, a `MemorySource`, in `torchsmith.data.tokens`).
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from torchsmith.data.bundle import DataBundle, DataInfo
from torchsmith.data.tokenizers import TokenizerOptions, build_tokenizer
from torchsmith.data.tokens import (  # noqa: F401  (PAD_ID, Subwords, subwords_option: re-exported)
    PAD_ID,
    UNK_ID,
    Subwords,
    TokenBatches,
    WordTokenizer,
    subwords_option,
)
from torchsmith.data.unicode import read_utf8
from torchsmith.errors import UsageError, did_you_mean

MAX_LABEL_GAP = 1000  # integer labels up to this many classes are taken as class numbers
TEXT_COLUMNS = ("sentence", "text", "review")
LABEL_COLUMNS = ("label", "labels", "class", "target")


@dataclass
class Table:
    """Rows of a labelled text table; `skipped_lines` had empty text and were left out."""

    texts: list[str]
    labels: list[int]
    class_names: list[str]
    skipped_lines: list[int]

    def subset(self, rows: Sequence[int]) -> Table:
        return Table(
            [self.texts[i] for i in rows],
            [self.labels[i] for i in rows],
            self.class_names,
            [],
        )


def read_table(
    path: str | Path,
    text_column: str | None = None,
    label_column: str | None = None,
    delimiter: str | None = None,
    class_names: Sequence[str] | None = None,
) -> Table:
    """Read a TSV/CSV file with a header line into texts and integer labels.

    Columns are found by name (text: sentence/text/review, label: label/labels/class/
    target) unless chosen. Labels are integers, or class names mapped to ids in sorted
    order; with `class_names` (those of the training file) every label must be one of
    them. Rows with empty text are skipped with a warning that gives their count.

    Example:
        >>> table = read_table("sst2/dev.tsv")  # doctest: +SKIP
        >>> len(table.texts), table.class_names  # doctest: +SKIP
        (872, ['0', '1'])
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file; give a TSV or CSV file with a header line")
    delimiter = delimiter or ("," if path.suffix.lower() == ".csv" else "\t")
    rows, skipped = _read_rows(path, delimiter, text_column, label_column)
    if skipped:
        shown = ", ".join(map(str, skipped[:5])) + (", ..." if len(skipped) > 5 else "")
        message = f"{path}: skipped {len(skipped)} rows with empty text (lines {shown})"
        warnings.warn(message, stacklevel=2)
    if not rows:
        raise UsageError(f"{path} has a header but no rows with text")
    lines, texts, raw_labels = (list(column) for column in zip(*rows, strict=True))
    labels, names = _parse_labels(path, raw_labels, lines, class_names)
    return Table(texts, labels, names, skipped)


def _read_rows(
    path: Path, delimiter: str, text_column: str | None, label_column: str | None
) -> tuple[list[tuple[int, str, str]], list[int]]:
    """(line, text, label) of each row with text, and the lines of rows without."""
    # TSV files (GLUE among them) do not quote; a stray '"' is part of the text.
    quoting: Literal[0, 1, 2, 3] = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    rows, skipped = [], []
    # Strict UTF-8 (a BOM dropped, another encoding refused naming its line); csv reads
    # "\r\n" line ends as "\n".
    with io.StringIO(read_utf8(path), newline="") as file:
        reader = csv.reader(file, delimiter=delimiter, quoting=quoting)
        header = next(reader, None)
        if not header:
            example = f"sentence{delimiter}label"
            raise UsageError(f"{path} is empty; expected a header line such as {example!r}")
        text_index = _find_column(path, header, text_column, TEXT_COLUMNS, "text")
        label_index = _find_column(path, header, label_column, LABEL_COLUMNS, "label")
        for row in _checked(reader, path):
            if row and len(row) <= max(text_index, label_index):
                raise UsageError(
                    f"{path}, line {reader.line_num}: {len(row)} fields, expected "
                    f"{len(header)} separated by {delimiter!r} as in the header"
                )
            if not row or not row[text_index].strip():
                skipped.append(reader.line_num)
                continue
            rows.append((reader.line_num, row[text_index].strip(), row[label_index].strip()))
    return rows, skipped


def _checked(reader: Any, path: Path) -> Iterator[list[str]]:
    """The reader's rows; its errors (a field over the csv module's size limit) as a UsageError."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise UsageError(
                f"{path}, line {reader.line_num + 1}: {error} (the csv module's limit is "
                f"{csv.field_size_limit()} characters). In a CSV file this usually means a quote that is "
                f"never closed; otherwise shorten that text or split the file."
            ) from None
        yield row


def _find_column(
    path: Path,
    header: list[str],
    chosen: str | None,
    candidates: Sequence[str],
    what: str,
) -> int:
    names = [name.strip().lower() for name in header]
    if chosen is not None:
        if chosen.strip().lower() in names:
            return names.index(chosen.strip().lower())
        hint = did_you_mean(chosen.lower(), names)
        raise UsageError(f"{path}, line 1: no column {chosen!r} in the header {header}.{hint}")
    for candidate in candidates:
        if candidate in names:
            return names.index(candidate)
    raise UsageError(
        f"{path}, line 1: no {what} column in the header {header}; expected one of "
        f"{', '.join(candidates)}, or choose it with {what}_column=NAME"
    )


def _parse_labels(
    path: Path, raw: list[str], lines: list[int], class_names: Sequence[str] | None
) -> tuple[list[int], list[str]]:
    if class_names is not None:
        index = {name: i for i, name in enumerate(class_names)}
        for label, line in zip(raw, lines, strict=True):
            if label not in index:
                raise UsageError(
                    f"{path}, line {line}: label {label!r} is not one of the classes of the "
                    f"training file {list(class_names)}"
                )
        return [index[label] for label in raw], list(class_names)
    numeric = [re.fullmatch(r"\d+", label) is not None for label in raw]
    if all(numeric):
        labels = [int(label) for label in raw]
        _check_not_an_id(path, labels)
        return labels, [str(i) for i in range(max(labels) + 1)]
    if any(numeric) or "" in raw:
        # Mixed: report the first row that disagrees with the majority kind.
        minority_is_numeric = sum(numeric) * 2 < len(raw)
        odd = raw.index("") if "" in raw else numeric.index(minority_is_numeric)
        raise UsageError(
            f"{path}, line {lines[odd]}: label {raw[odd]!r} is not a non-negative integer "
            "nor a class name like the other labels; use integers 0..C-1 or names throughout"
        )
    names = sorted(set(raw))
    index = {name: i for i, name in enumerate(names)}
    return [index[label] for label in raw], names


def _check_not_an_id(path: Path, labels: list[int]) -> None:
    """Integer labels are class numbers 0..C-1 (a class may be missing from a file); a largest
    label far beyond the number of distinct ones is an id column, whose C classes would each
    take a row of every per-class table and a model output."""
    distinct, largest = len(set(labels)), max(labels)
    if largest + 1 > max(MAX_LABEL_GAP, 10 * distinct):
        raise UsageError(
            f"{path}: the label column holds {distinct:,} distinct integers up to {largest:,}, which would "
            f"make {largest + 1:,} classes: it looks like an id column, not class numbers 0..C-1. Choose "
            f"the label column with --set data.options.label_column=NAME, or number the classes 0..C-1."
        )


def load_table_dataset(
    path: str | Path,
    kind: str = "tsv",
    max_len: int = 64,
    device: str | torch.device = "cpu",
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    text_column: str | None = None,
    label_column: str | None = None,
    min_freq: int | None = None,
    max_vocab: int | None = None,
    subwords: Subwords | None = None,
    tokenizer: TokenizerOptions | None = None,
) -> DataBundle:
    """Text classification data from a TSV/CSV file or a folder of split files.

    A file is split into train/validation by `seed` (no test split). A folder holds
    `train.<kind>` and `dev.<kind>` and/or `test.<kind>` (optionally `val.<kind>`):
    dev is the validation split when there is a test file, the test split otherwise;
    with no validation file, `val_fraction` of the training rows is carved out.
    The tokenizer (`TokenizerOptions`, by default chosen by script; `min_freq`,
    `max_vocab` and `subwords` override its fields) learns its vocabulary from the
    training rows only.

    Example:
        >>> bundle = load_table_dataset("reviews.csv", kind="csv", max_len=128)  # doctest: +SKIP
    """
    if kind not in ("tsv", "csv"):
        raise UsageError(f"kind must be 'tsv' or 'csv', got {kind!r}")
    path = Path(path)
    files: dict[str, Path | None] = {"train": path, "val": None, "test": None}
    if path.is_dir():
        candidates = {name: path / f"{name}.{kind}" for name in ("train", "val", "dev", "test")}
        found = {name: file if file.is_file() else None for name, file in candidates.items()}
        if found["train"] is None:
            raise UsageError(f"{path} has no train.{kind}; a data folder needs train.{kind} and dev.{kind}/test.{kind}")
        test = found["test"] or found["dev"]
        val = found["val"] or (found["dev"] if found["test"] else None)
        files = {"train": found["train"], "val": val, "test": test}
    options = {
        "text_column": text_column,
        "label_column": label_column,
        "delimiter": "\t" if kind == "tsv" else ",",
    }
    train_file = files["train"]
    assert train_file is not None  # a folder without a train file was rejected above
    train = read_table(train_file, **options)
    others = {
        name: read_table(file, class_names=train.class_names, **options)
        for name, file in files.items()
        if name != "train" and file
    }
    return build_word_bundle(
        train,
        others.get("val"),
        others.get("test"),
        max_len,
        device,
        val_fraction=val_fraction,
        seed=seed,
        tokenizer=tokenizer_fields(tokenizer, min_freq=min_freq, max_vocab=max_vocab, subwords=subwords),
    )


def tokenizer_fields(options: TokenizerOptions | None, **fields: Any) -> TokenizerOptions:
    """`options` (default: chosen by script) with the fields given as arguments (not None) replaced."""
    given = {name: value for name, value in fields.items() if value is not None}
    return replace(options or TokenizerOptions(), **given)


def load_sst2(
    data_dir: str | Path,
    max_len: int = 64,
    device: str | torch.device = "cpu",
    val_fraction: float = 0.05,
    seed: int = 0,
    subwords: Subwords | None = None,
    tokenizer: TokenizerOptions | None = None,
) -> DataBundle:
    """SST-2 in the GLUE layout: train.tsv -> train + a seeded validation carve, dev.tsv -> test.

    Penn Treebank escapes (`-lrb-`, `\\/`, which only the dev sentences use) are read as the
    characters they stand for, as the training phrases write them.

    Example:
        >>> bundle = load_sst2("data/sst2")  # doctest: +SKIP
        >>> len(bundle.train), len(bundle.val), len(bundle.test)  # doctest: +SKIP
        (63982, 3367, 872)
    """
    data_dir = Path(data_dir)
    train = read_table(data_dir / "train.tsv")
    test = read_table(data_dir / "dev.tsv", class_names=train.class_names)
    for table in (train, test):
        table.texts = [unescape_ptb(text) for text in table.texts]
    tokenizer = tokenizer_fields(tokenizer, subwords=subwords)
    bundle = build_word_bundle(
        train, None, test, max_len, device, val_fraction=val_fraction, seed=seed, tokenizer=tokenizer
    )
    bundle.info.class_names = ["negative", "positive"]
    return bundle


# Penn Treebank escapes. GLUE's SST-2 dev sentences write "(" as "-lrb-" and "/" as "\\/",
# while its training phrases write the characters themselves: read both the same way.
PTB_ESCAPES = {
    "-lrb-": "(", "-rrb-": ")", "-lsb-": "[", "-rsb-": "]", "-lcb-": "{", "-rcb-": "}", "\\/": "/", "\\*": "*",
}  # fmt: skip
_PTB_PATTERN = re.compile("|".join(re.escape(escape) for escape in PTB_ESCAPES), re.IGNORECASE)


def unescape_ptb(text: str) -> str:
    """Penn Treebank escapes back to the characters they stand for.

    Example:
        >>> unescape_ptb("-lrb- a -rrb- funny\\/sad film")
        '( a ) funny/sad film'
    """
    return _PTB_PATTERN.sub(lambda match: PTB_ESCAPES[match.group(0).lower()], text)


def validation_carve(num_rows: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(rows kept for training, rows carved for validation) of a training file of `num_rows`
    rows, as `build_word_bundle` carves them: a seeded shuffle, at least one row each side.

    Example:
        >>> validation_carve(10, 0.2, seed=0)[1]
        [4, 1]
    """
    order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed)).tolist()
    num_val = min(max(1, round(num_rows * val_fraction)), num_rows - 1)
    return order[num_val:], order[:num_val]


def build_word_bundle(
    train: Table,
    val: Table | None,
    test: Table | None,
    max_len: int,
    device: str | torch.device = "cpu",
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    tokenizer: TokenizerOptions | None = None,
) -> DataBundle:
    """Tokenize tables into a DataBundle; carve `val` from `train` when it is None
    (`val_fraction` 0: no validation split, every row trains). The tokenizer is built on
    the training rows as `tokenizer` says (default: chosen by script); the line saying
    which one is saved as `preprocessing["tokenizer_choice"]`."""
    if max_len < 1:
        raise UsageError(f"max_len must be a positive integer, got {max_len}")
    if val is None and val_fraction != 0.0:
        if not 0.0 < val_fraction < 1.0 or len(train.texts) < 2:
            raise UsageError(
                f"need val_fraction in [0, 1) and at least 2 rows to carve a validation split, got {val_fraction}"
            )
        kept, carved = validation_carve(len(train.texts), val_fraction, seed)
        train, val = train.subset(kept), train.subset(carved)
    built, choice = build_tokenizer(train.texts, tokenizer or TokenizerOptions())

    def split(table: Table | None) -> TokenBatches | None:
        if table is None:
            return None
        ids, lengths, pieces = built.encode_compact(table.texts, max_len)
        return TokenBatches(ids, lengths, torch.tensor(table.labels), pieces, table.texts).to(device)

    subwords = getattr(built, "subwords", None)
    info = DataInfo(
        modality="text",
        num_classes=len(train.class_names),
        input_shape=(max_len,) if subwords is None else (max_len, 1 + subwords.per_word),
        class_names=list(train.class_names),
        preprocessing={
            # "words": token ids of whole texts for classification, whatever the tokenizer.
            "kind": "words",
            "tokenizer": built.state_dict(),
            "tokenizer_choice": choice,
            "max_len": max_len,
        },
    )
    return DataBundle(train=split(train), val=split(val), test=split(test), info=info)
