"""Word tokens: the tokenizer (with optional hashed subword n-grams) and the in-memory
batches of token ids, shared by every word-level text dataset."""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from itertools import islice
from typing import Any

import torch

from torchsmith.data.unicode import NORMAL_FORM, normalize
from torchsmith.errors import UsageError

PAD_ID = 0
UNK_ID = 1


@dataclass(frozen=True)
class Subwords:
    """Character n-grams of each word, hashed into `buckets` extra embedding rows (fastText).

    A word is read as `<word>`; its n-grams of `min_n`..`max_n` characters (at most
    `per_word`, shortest first) each map to row `offset + crc32(ngram) % buckets`. Words
    never seen in training still get the rows of the n-grams they share with known words.

    Example:
        >>> Subwords(buckets=1000, max_n=3).pieces("film", offset=10)  # <fi fil ilm lm>
        [789, 295, 37, 785]
    """

    buckets: int
    min_n: int = 3
    max_n: int = 5
    per_word: int = 24

    def __post_init__(self) -> None:
        if self.buckets < 1 or not 1 <= self.min_n <= self.max_n or self.per_word < 1:
            raise UsageError(f"subwords need buckets >= 1, 1 <= min_n <= max_n and per_word >= 1, got {self}")

    def pieces(self, word: str, offset: int) -> list[int]:
        marked = f"<{word}>"
        grams = (marked[i : i + n] for n in range(self.min_n, self.max_n + 1) for i in range(len(marked) - n + 1))
        return [offset + zlib.crc32(gram.encode("utf-8")) % self.buckets for gram in islice(grams, self.per_word)]

    def following(self, chars: str, offset: int) -> list[int]:
        """The n-grams that start at a character, `min_n`..`max_n` long: `chars` is that
        character and the ones after it (character tokens' bigrams and trigrams).

        Example:
            >>> Subwords(buckets=1000, min_n=2, max_n=3).following("好看吗", offset=10)  # 好看 好看吗
            [90, 591]
        """
        grams = (chars[:n] for n in range(self.min_n, min(self.max_n, len(chars)) + 1))
        return [offset + zlib.crc32(gram.encode("utf-8")) % self.buckets for gram in islice(grams, self.per_word)]


def subwords_option(value: Any) -> Subwords | None:
    """`data.options.subwords`: 0 or absent (off), a number of buckets, or Subwords' fields."""
    if value is None or value is False or value == 0:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return Subwords(buckets=value)
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"buckets", "min_n", "max_n", "per_word"})
        if unknown or "buckets" not in value:
            raise UsageError(
                f"data.options.subwords takes buckets (required), min_n, max_n, per_word; got {sorted(value)}"
            )
        if not all(isinstance(number, int) and not isinstance(number, bool) for number in value.values()):
            raise UsageError(f"data.options.subwords fields must be whole numbers, got {value}")
        return Subwords(**value)
    raise UsageError(f"data.options.subwords must be a number of buckets (e.g. 20000) or a mapping, got {value!r}")


class WordTokenizer:
    """Words (or characters) mapped to ids; 0 = <pad>, 1 = <unk>.

    `unit="words"`: lower-cased words and punctuation marks; `unit="chars"`: every
    character but white space, for text written without spaces (Chinese, Japanese,
    Thai). `normalized=True` reads text through `normalize` (NFKC, then lower case) first;
    runs saved before it existed lower-case only, and still do.

    With `subwords`, each token also carries the ids of hashed character n-grams
    (`Subwords`): of the word itself (`<word>`'s pieces) for words, of the characters
    starting at it (its bigram and trigram) for characters. A batch is then
    (N, L, 1 + per_word), the token id first, 0-padded.

    Example:
        >>> tokenizer = WordTokenizer.build(["A fine film.", "A dull film!"])
        >>> tokenizer.encode("a FINE, film")  # "," never seen in training -> <unk>
        [2, 7, 1, 3]
        >>> WordTokenizer.build(["很好看", "不好看"], unit="chars").units("好看！")
        ['好', '看', '！']
    """

    # Words (with inner apostrophes: "don't"), clitics ("'s", "n't" stays with its
    # word), and every other non-space character on its own.
    PATTERN = r"\w+(?:'\w+)*|'\w+|[^\w\s]"
    _REGEX = re.compile(PATTERN)

    def __init__(
        self,
        tokens: Sequence[str],
        subwords: Subwords | None = None,
        *,
        unit: str = "words",
        normalized: bool = False,
    ) -> None:
        if list(tokens[:2]) != ["<pad>", "<unk>"]:
            raise UsageError("a word vocabulary must start with '<pad>', '<unk>'")
        if unit not in ("words", "chars"):
            raise UsageError(f"a token unit is 'words' or 'chars', got {unit!r}")
        self.tokens = list(tokens)
        self.index = {token: i for i, token in enumerate(self.tokens)}
        self.subwords = subwords
        self.unit = unit
        self.normalized = normalized

    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        min_freq: int = 1,
        max_vocab: int | None = None,
        subwords: Subwords | None = None,
        *,
        unit: str = "words",
        normalized: bool = False,
    ) -> WordTokenizer:
        """Vocabulary of the tokens seen at least `min_freq` times, most frequent first.

        `max_vocab` caps the total size, <pad> and <unk> included. Build it from the
        training split only, so validation and test tokens the model never saw map to <unk>.
        """
        reader = cls(["<pad>", "<unk>"], unit=unit, normalized=normalized)
        counts = Counter(token for text in texts for token in reader.units(text))
        # Most frequent first, ties alphabetical, so the ids do not depend on input order.
        words = sorted(
            (w for w, c in counts.items() if c >= min_freq),
            key=lambda w: (-counts[w], w),
        )
        if max_vocab is not None:
            words = words[: max(max_vocab - 2, 0)]
        return cls(["<pad>", "<unk>", *words], subwords, unit=unit, normalized=normalized)

    @classmethod
    def split(cls, text: str) -> list[str]:
        """Lower-cased words and punctuation marks (the words unit, without normalisation)."""
        return cls._REGEX.findall(text.lower())

    def units(self, text: str) -> list[str]:
        """The tokens of `text` as strings, before they become ids."""
        text = normalize(text) if self.normalized else text.lower()
        return self._REGEX.findall(text) if self.unit == "words" else [c for c in text if not c.isspace()]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def num_embeddings(self) -> int:
        """Rows a model's embedding needs: the tokens, plus the n-gram buckets with subwords."""
        return len(self.tokens) + (self.subwords.buckets if self.subwords else 0)

    def encode(self, text: str) -> list[int]:
        return [self.index.get(unit, UNK_ID) for unit in self.units(text)]

    def decode(self, ids: Iterable[int]) -> str:
        return ("" if self.unit == "chars" else " ").join(self.tokens[i] for i in ids if i != PAD_ID)

    def encode_batch(self, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded ids (N, L) int64, L = min(max_len, longest), and lengths (N,) (>= 1).

        With subwords the ids are (N, L, 1 + per_word): each token's id, then its n-grams."""
        ids, lengths, pieces = self.encode_compact(texts, max_len)
        return (ids if pieces is None else pieces[ids]), lengths

    def encode_compact(
        self, texts: Sequence[str], max_len: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """`encode_batch` with subwords kept apart: ids (N, L) index the rows of `pieces` (one
        row per distinct token and its n-grams, row 0 padding); `pieces[ids]` is the batch.
        No subwords: None."""
        if self.subwords is None:
            encoded = [self.encode(text)[:max_len] or [UNK_ID] for text in texts]
            return (*pad_rows(encoded), None)
        rows: dict[str, int] = {}
        encoded = [[rows.setdefault(key, len(rows) + 1) for key in self._keys(text, max_len)] for text in texts]
        offset, width = len(self.tokens), 1 + self.subwords.per_word
        table = [[0] * width for _ in range(len(rows) + 2)]  # one tensor at the end: rows are many
        table[len(rows) + 1][0] = UNK_ID  # the row of an empty text, which reads as one <unk>
        for key, row in rows.items():
            if self.unit == "words":
                values = [self.index.get(key, UNK_ID), *self.subwords.pieces(key, offset)]
            else:  # key: the character and the ones after it
                values = [self.index.get(key[0], UNK_ID), *self.subwords.following(key, offset)]
            table[row][: len(values)] = values
        pieces = torch.tensor(table, dtype=torch.int64)
        ids, lengths = pad_rows([row_ids or [len(rows) + 1] for row_ids in encoded])
        return ids, lengths, pieces

    def _keys(self, text: str, max_len: int) -> list[str]:
        """What decides a token's row of pieces: the word, or the character with the
        `max_n - 1` characters after it (its n-grams)."""
        units = self.units(text)
        if self.unit == "words":
            return units[:max_len]
        assert self.subwords is not None
        span = self.subwords.max_n
        return ["".join(units[i : i + span]) for i in range(min(len(units), max_len))]

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"kind": self.unit}
        if self.unit == "words":
            state["pattern"] = self.PATTERN
        state["lowercase"] = True
        if self.normalized:
            state["normalize"] = NORMAL_FORM
        state["tokens"] = self.tokens
        if self.subwords is not None:
            state["subwords"] = asdict(self.subwords)
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> WordTokenizer:
        kind = state.get("kind")
        if kind not in ("words", "chars") or (kind == "words" and state.get("pattern") != cls.PATTERN):
            raise UsageError("this tokenizer state was saved by another tokenizer version or kind")
        normalized = state.get("normalize") == NORMAL_FORM
        if state.get("normalize") not in (None, NORMAL_FORM):
            raise UsageError(f"unknown text normalisation {state['normalize']!r} in the saved tokenizer")
        return cls(state["tokens"], subwords_option(state.get("subwords")), unit=kind, normalized=normalized)


def pad_rows(encoded: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids right-padded with 0 into (N, longest) int64, and their lengths (N,)."""
    lengths = torch.tensor([len(ids) for ids in encoded], dtype=torch.int64)
    longest = max((len(ids) for ids in encoded), default=1)
    ids = torch.full((len(encoded), longest), PAD_ID, dtype=torch.int64)
    for row, values in enumerate(encoded):
        ids[row, : len(values)] = torch.tensor(values, dtype=torch.int64)
    return ids, lengths


class TokenBatches:
    """Padded word ids (N, L), lengths (N,) and labels (N,) of one split (a MemorySource).

    A batch is `(ids[:, :longest_in_batch], labels)`. With subword `pieces` (one row per
    distinct word, from `WordTokenizer.encode_compact`) the ids index those rows and a
    batch is `pieces[ids[...]]`, (B, L, 1 + per_word). Lengths stay on the CPU so trimming
    a batch never waits for the device.

    Example:
        >>> ids, lengths = tokenizer.encode_batch(texts, max_len=64)  # doctest: +SKIP
        >>> split = TokenBatches(ids, lengths, torch.tensor(labels))  # doctest: +SKIP
    """

    def __init__(
        self,
        ids: torch.Tensor,
        lengths: torch.Tensor,
        labels: torch.Tensor,
        pieces: torch.Tensor | None = None,
        texts: Sequence[str] | None = None,
    ) -> None:
        assert ids.dim() == 2 and len(ids) == len(lengths) == len(labels)
        assert texts is None or len(texts) == len(labels)
        self.ids = ids
        self.lengths = lengths.cpu()
        self.labels = labels.long()
        self.pieces = pieces
        self.texts = texts

    def examples(self, indices: torch.Tensor) -> dict[str, object]:
        """What the report shows for some samples: their texts (none when not kept)."""
        return {} if self.texts is None else {"example_texts": [self.texts[i] for i in indices.tolist()]}

    def __len__(self) -> int:
        return len(self.labels)

    def get_batch(
        self, indices: torch.Tensor, generator: torch.Generator | None, train: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cpu_indices = indices.cpu()
        if len(cpu_indices) == 0:
            raise IndexError("get_batch needs at least one index")
        longest = int(self.lengths[cpu_indices].max())
        indices = cpu_indices.to(self.ids.device, non_blocking=True)
        ids = self.ids[indices, :longest]
        return (ids if self.pieces is None else self.pieces[ids]), self.labels[indices]

    def to(self, device: torch.device | str) -> TokenBatches:
        pieces = None if self.pieces is None else self.pieces.to(device)
        return TokenBatches(self.ids.to(device), self.lengths, self.labels.to(device), pieces, self.texts)
