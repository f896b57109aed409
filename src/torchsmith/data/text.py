"""Text data: token windows for language models, token ids for classification.

Both readers return a `DataBundle` whose splits live in memory on the training device
and build whole batches themselves (the `MemorySource` protocol):

- `load_textfile`: one plain-text file -> next-character (or next-BPE-piece) prediction
  (task "sequence").
- `load_table_dataset` / `load_sst2`: TSV/CSV files with a text and a label column ->
  classification over token ids (words, characters or learned pieces; `tokenizers`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from torchsmith.data.bundle import DataBundle, DataInfo
from torchsmith.data.tokenizers import LearnedTokenizer
from torchsmith.data.unicode import read_utf8
from torchsmith.errors import UsageError

# ----------------------------------------------------------------- characters


def encode(text: str, vocabulary: Sequence[str]) -> torch.Tensor:
    """Map each character of `text` to its index in `vocabulary`, as int64 (N,).

    Example:
        >>> encode("abba", ["a", "b"]).tolist()
        [0, 1, 1, 0]
    """
    table = {char: index for index, char in enumerate(vocabulary)}
    try:
        return torch.tensor([table[char] for char in text], dtype=torch.int64)
    except KeyError as error:
        char = error.args[0]
        raise UsageError(
            f"character {char!r} (position {text.index(char)}) is not in the vocabulary of "
            f"{len(vocabulary)} characters the model was trained on; remove it from the text "
            "or train on a file that contains it"
        ) from None


def decode(ids: torch.Tensor | Iterable[int], vocabulary: Sequence[str]) -> str:
    """Turn character ids back into text.

    Example:
        >>> decode([0, 1, 1, 0], ["a", "b"])
        'abba'
    """
    values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    bad = [value for value in values if not 0 <= value < len(vocabulary)]
    if bad:
        raise UsageError(f"id {bad[0]} is outside the vocabulary of {len(vocabulary)} characters")
    return "".join(vocabulary[value] for value in values)


class CharWindows:
    """Next-character windows over the token ids of one split (a MemorySource).

    A batch is `(x, y)`, both int64 (B, T), with `y[:, t]` the character after `x[:, t]`.
    Sample `i` is the window at `i * T`. With `train=True` each window moves by a random
    offset in [0, T) drawn from `generator` and hashed with `i`, so the same
    `(indices, generator)` gives the same batch, and a rank that builds its slice of a
    global batch gets exactly that slice. With `train=False` windows do not overlap:
    all `len(self)` of them predict each of the first `len(self) * T + 1` characters
    (bar the first) exactly once, which makes "the loss over the whole text" well defined;
    at most T - 1 trailing characters are left out.

    Example:
        >>> windows = CharWindows(torch.arange(1000) % 7, block_size=8)
        >>> x, y = windows.get_batch(torch.arange(4), torch.Generator().manual_seed(0), True)
        >>> x.shape, bool((x[:, 1:] == y[:, :-1]).all())
        (torch.Size([4, 8]), True)
    """

    def __init__(self, tokens: torch.Tensor, block_size: int) -> None:
        if block_size < 1:
            raise UsageError(f"block_size must be a positive integer, got {block_size}")
        if tokens.dim() != 1 or len(tokens) < block_size + 1:
            raise UsageError(
                f"a split of {tokens.numel()} characters is too short for windows of "
                f"{block_size} + 1; use a smaller block_size or a longer text"
            )
        self.tokens = tokens.long()
        self.block_size = block_size
        self._offsets = torch.arange(block_size + 1, device=tokens.device)  # (T + 1,)

    def __len__(self) -> int:
        # Each window needs one extra character for its last target.
        return (len(self.tokens) - 1) // self.block_size

    def window_starts(self, indices: torch.Tensor, generator: torch.Generator | None, train: bool) -> torch.Tensor:
        """First token position of each sample's window, int64 (B,)."""
        device = generator.device if generator is not None else indices.device
        indices = indices.to(device=device, dtype=torch.int64)
        if len(indices) and not 0 <= int(indices.min()) <= int(indices.max()) < len(self):
            raise IndexError(f"window index out of range for {len(self)} windows")
        starts = indices * self.block_size
        if not train:
            return starts
        salt = torch.randint(0, 1 << 30, (1,), generator=generator, device=device)
        # Knuth multiplicative hash of (index + salt); the high bits are well mixed, so
        # neighbouring indices get unrelated offsets. Stays below 2**63: no overflow.
        mixed = ((indices + salt) * 2654435761) % (1 << 32)
        jitter = (mixed >> 16) % self.block_size
        return torch.clamp(starts + jitter, max=len(self.tokens) - self.block_size - 1)

    def get_batch(
        self, indices: torch.Tensor, generator: torch.Generator | None, train: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        starts = self.window_starts(indices, generator, train).to(self.tokens.device)
        windows = self.tokens[starts[:, None] + self._offsets]  # (B, T + 1)
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def to(self, device: torch.device | str) -> CharWindows:
        return CharWindows(self.tokens.to(device), self.block_size)


def load_textfile(
    path: str | Path,
    block_size: int = 128,
    val_fraction: float = 0.1,
    device: str | torch.device = "cpu",
    tokenizer: str | dict[str, Any] = "chars",
    vocab_size: int = 2000,
) -> DataBundle:
    """Language-model data from one UTF-8 text file: next-character or next-token prediction.

    The first `1 - val_fraction` of the text trains, the rest is validation (and test).
    `tokenizer="chars"`: the vocabulary is the sorted set of characters of the whole file.
    `tokenizer="bpe"`: a byte-level BPE vocabulary of `vocab_size` pieces learned on the
    training text (Hugging Face `tokenizers`), which decodes back to the text exactly;
    `preprocessing["chars_per_token"]` (of the validation text) turns a loss per token
    into one per character, so runs with different tokenizers compare. A tokenizer's
    `state_dict` (a run's saved one) is used as it is.

    Example:
        >>> bundle = load_textfile("input.txt", block_size=128)  # doctest: +SKIP
        >>> bundle.info.num_classes, len(bundle.val)  # doctest: +SKIP
        (65, 871)
    """
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if not isinstance(tokenizer, dict) and tokenizer not in ("chars", "auto", "bpe"):
        raise UsageError(
            f"a language model takes data.options.tokenizer=chars or bpe (tokens that decode back to the "
            f"text), got {tokenizer!r}"
        )
    text = _read_text(Path(path))
    num_train = int(len(text) * (1.0 - val_fraction))
    preprocessing: dict[str, object]
    if tokenizer == "bpe" or isinstance(tokenizer, dict):
        if isinstance(tokenizer, dict):
            learned = LearnedTokenizer.from_state_dict(tokenizer)
        elif not isinstance(vocab_size, int) or vocab_size < 3:
            raise UsageError(f"data.options.vocab_size must be a whole number above 2, got {vocab_size!r}")
        else:
            learned = _learn_bpe(text[:num_train], vocab_size)
        parts = (text[:num_train], text[num_train:])
        splits = [torch.tensor(learned.encode(part), dtype=torch.int64) for part in parts]
        num_classes = len(learned)
        preprocessing = {
            "kind": "tokens",
            "tokenizer": learned.state_dict(),
            "block_size": block_size,
            "chars_per_token": round((len(text) - num_train) / max(len(splits[1]), 1), 6),
        }
    else:
        vocabulary = sorted(set(text))
        tokens = encode(text, vocabulary)
        splits = [tokens[:num_train].clone(), tokens[num_train:].clone()]
        num_classes = len(vocabulary)
        preprocessing = {"kind": "chars", "vocabulary": vocabulary, "block_size": block_size}
    if min(len(split) for split in splits) < block_size + 1:
        raise UsageError(
            f"{path}: {len(text)} characters split into {len(splits[0])}/{len(splits[1])} tokens "
            f"leave a split shorter than block_size + 1 = {block_size + 1}; "
            "use a smaller block_size, another val_fraction or a longer text"
        )
    # Separate tensors per split: no window can cross the train/validation boundary.
    train, val = (CharWindows(split, block_size).to(device) for split in splits)
    info = DataInfo("text", num_classes, (block_size,), task="sequence", preprocessing=preprocessing)
    return DataBundle(train=train, val=val, test=val, info=info)


def _learn_bpe(text: str, vocab_size: int) -> LearnedTokenizer:
    """Byte-level BPE on the text as written (no normalisation, case kept), fed a line at a time."""
    return LearnedTokenizer.train(text.splitlines(keepends=True), "bpe", vocab_size, lowercase=False, normalized=False)


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise UsageError(f"{path}: no such file; give the path of a UTF-8 text file")
    # Windows and old Mac line ends read as "\n", as Python's text mode reads them.
    text = read_utf8(path).replace("\r\n", "\n").replace("\r", "\n")
    if not text:
        raise UsageError(f"{path} is empty")
    return text


from torchsmith.data.tokenizers import (  # noqa: E402, F401  (re-exported)
    TOKENIZERS,
    TokenizerOptions,
    build_tokenizer,
    tokenizer_from_state,
)
from torchsmith.data.words import (  # noqa: E402, F401  (re-exported: the text data API)
    LABEL_COLUMNS,
    PAD_ID,
    TEXT_COLUMNS,
    UNK_ID,
    Subwords,
    Table,
    TokenBatches,
    WordTokenizer,
    build_word_bundle,
    load_sst2,
    load_table_dataset,
    read_table,
    subwords_option,
)
