"""Tokenizers by name (`data.options.tokenizer`) and the subword vocabularies learned for them.

| name | tokens |
|---|---|
| `words` | lower-cased words and punctuation marks (`WordTokenizer`) |
| `chars` | every character but white space, with hashed character bigrams and trigrams |
| `bpe` | byte-level BPE learned on the training split (Hugging Face `tokenizers`) |
| `wordpiece` | WordPiece learned on the training split, each CJK character its own word |
| `auto` (default) | `chars` when most letters are in scripts written without spaces (Chinese, Japanese, |
|  | Thai, ...), else `words` |

A tokenizer's `state_dict` is plain JSON, saved in the run's `preprocessing.json`: a
learned vocabulary is Hugging Face's own JSON serialisation, which `tokenizers` reads
back as data (no code runs on load), so `predict` and `export` tokenise exactly as
training did.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from torchsmith.data.tokens import PAD_ID, UNK_ID, Subwords, WordTokenizer, pad_rows, subwords_option
from torchsmith.data.unicode import NORMAL_FORM, normalize, script_profile
from torchsmith.errors import UsageError

TOKENIZERS = ("auto", "words", "chars", "bpe", "wordpiece")
LEARNED = ("bpe", "wordpiece")
SPECIAL_TOKENS = ["<pad>", "<unk>"]  # ids 0 and 1, as for words
CHAR_NGRAM_BUCKETS = 100_000  # character bigrams and trigrams hashed into this many embedding rows


class Tokenizer(Protocol):
    """What a classification dataset needs from a tokenizer."""

    def __len__(self) -> int: ...

    @property
    def num_embeddings(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def encode_batch(self, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def encode_compact(
        self, texts: Sequence[str], max_len: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]: ...

    def state_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class TokenizerOptions:
    """`data.options` that shape the tokenizer; `subwords` is the option as given (None: the
    kind's default, hashed bigrams and trigrams for characters, none for words). `saved`: a
    tokenizer's `state_dict` to use as it is (a run's own, when `evaluate` reloads its data).

    Example:
        >>> TokenizerOptions.from_options({"tokenizer": "bpe", "vocab_size": 4000}).kind
        'bpe'
    """

    kind: str = "auto"
    subwords: Any = None
    vocab_size: int = 8000
    min_freq: int = 1
    max_vocab: int | None = None
    saved: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.saved is None and self.kind not in TOKENIZERS:
            raise UsageError(f"data.options.tokenizer must be one of {', '.join(TOKENIZERS)}, got {self.kind!r}")
        if not isinstance(self.vocab_size, int) or self.vocab_size < 3:
            raise UsageError(f"data.options.vocab_size must be a whole number above 2, got {self.vocab_size!r}")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> TokenizerOptions:
        max_vocab, kind = options.get("max_vocab"), options.get("tokenizer", "auto")
        saved = kind if isinstance(kind, dict) else None
        return cls(
            kind=str(saved.get("kind")) if saved else str(kind),
            saved=saved,
            subwords=options.get("subwords"),
            vocab_size=options.get("vocab_size", 8000),
            min_freq=int(options.get("min_freq", 1)),
            max_vocab=None if max_vocab is None else int(max_vocab),
        )


def build_tokenizer(texts: Sequence[str], options: TokenizerOptions) -> tuple[Tokenizer, str]:
    """A tokenizer built on the training `texts`, and one line saying which and why."""
    if options.saved is not None:
        return tokenizer_from_state(options.saved), f"{options.kind} (saved with the run)"
    kind, reason = options.kind, "data.options.tokenizer"
    if kind == "auto":
        profile = script_profile(texts)
        kind = "chars" if profile.unspaced_share >= 0.5 else "words"
        reason = f"auto: {profile.describe()}"
    if kind in LEARNED:
        if options.subwords:
            raise UsageError(f"data.options.subwords adds n-grams to words or characters; {kind} learns its own pieces")
        learned = LearnedTokenizer.train(texts, kind, options.vocab_size)
        return learned, f"{kind}, {len(learned)} pieces learned on the training split ({reason})"
    unit = "chars" if kind == "chars" else "words"
    subwords = _subwords(unit, options.subwords)
    tokenizer = WordTokenizer.build(texts, options.min_freq, options.max_vocab, subwords, unit=unit, normalized=True)
    pieces = f", hashed {_ngram_names(subwords, unit)} in {subwords.buckets} buckets" if subwords else ""
    return tokenizer, f"{kind} ({len(tokenizer)} tokens{pieces}; {reason})"


def _subwords(unit: str, value: Any) -> Subwords | None:
    if isinstance(value, Subwords):
        return value
    if unit == "words":
        return subwords_option(value)
    if value is None:
        value = CHAR_NGRAM_BUCKETS
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return Subwords(buckets=value, min_n=2, max_n=3, per_word=2)  # bigrams and trigrams
    return subwords_option(value)


def _ngram_names(subwords: Subwords, unit: str) -> str:
    lengths = f"{subwords.min_n}-{subwords.max_n}"
    return f"character {lengths}-grams" + (" of each word" if unit == "words" else "")


def tokenizer_from_state(state: dict[str, Any]) -> Tokenizer:
    """The tokenizer a run saved, whatever its kind (runs from before learned tokenizers too)."""
    if state.get("kind") in LEARNED:
        return LearnedTokenizer.from_state_dict(state)
    return WordTokenizer.from_state_dict(state)


def _backend_module() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise UsageError(
            "bpe and wordpiece tokenizers need Hugging Face tokenizers: pip install 'torchsmith[text]' "
            "(or pip install tokenizers)"
        ) from None
    return tokenizers


class LearnedTokenizer:
    """A BPE or WordPiece vocabulary learned with Hugging Face `tokenizers`; 0 = <pad>, 1 = <unk>.

    Text goes through `normalize` first when `normalized` (NFKC, then lower case when
    `lowercase`); a language model keeps its text as written (both off), and byte-level
    BPE then decodes exactly back to it.

    Example:
        >>> bpe = LearnedTokenizer.train(["我很喜欢这本书"] * 50 + ["a fine film"] * 50, "bpe", 300)
        >>> bpe.decode(bpe.encode("这本书 fine"))
        '这本书 fine'
    """

    def __init__(self, kind: str, backend: Any, lowercase: bool = True, normalized: bool = True) -> None:
        self.kind = kind
        self.backend = backend
        self.lowercase = lowercase
        self.normalized = normalized

    @classmethod
    def train(
        cls, texts: Iterable[str], kind: str, vocab_size: int, lowercase: bool = True, normalized: bool = True
    ) -> LearnedTokenizer:
        """Learn `vocab_size` pieces (the two special tokens included) from `texts`."""
        hf = _backend_module()
        from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

        if kind == "bpe":
            backend = hf.Tokenizer(models.BPE(unk_token="<unk>"))
            backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            backend.decoder = decoders.ByteLevel()
            trainer: Any = trainers.BpeTrainer(
                vocab_size=vocab_size,
                special_tokens=SPECIAL_TOKENS,
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                show_progress=False,
            )
        elif kind == "wordpiece":
            backend = hf.Tokenizer(models.WordPiece(unk_token="<unk>"))
            # Spaces around every CJK character, as BERT reads Chinese; case handled by `normalize`.
            backend.normalizer = normalizers.BertNormalizer(
                clean_text=False, handle_chinese_chars=True, strip_accents=False, lowercase=False
            )
            backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
            backend.decoder = decoders.WordPiece()
            trainer = trainers.WordPieceTrainer(
                vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False
            )
        else:
            raise UsageError(f"a learned tokenizer is one of {', '.join(LEARNED)}, got {kind!r}")
        tokenizer = cls(kind, backend, lowercase, normalized)
        backend.train_from_iterator((tokenizer.prepare(text) for text in texts), trainer)
        assert backend.token_to_id("<pad>") == PAD_ID and backend.token_to_id("<unk>") == UNK_ID
        return tokenizer

    def prepare(self, text: str) -> str:
        """The text as the vocabulary reads it."""
        if self.normalized:
            return normalize(text, self.lowercase)
        return text.lower() if self.lowercase else text

    def __len__(self) -> int:
        return int(self.backend.get_vocab_size())

    @property
    def num_embeddings(self) -> int:
        return len(self)

    def units(self, text: str) -> list[str]:
        """The pieces of `text` as the vocabulary writes them."""
        return list(self.backend.encode(self.prepare(text)).tokens)

    def encode(self, text: str) -> list[int]:
        return list(self.backend.encode(self.prepare(text)).ids)

    def decode(self, ids: Iterable[int]) -> str:
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        bad = [value for value in values if not 0 <= value < len(self)]
        if bad:
            raise UsageError(f"id {bad[0]} is outside the vocabulary of {len(self)} pieces")
        return str(self.backend.decode(values))

    def encode_batch(self, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids, lengths, _ = self.encode_compact(texts, max_len)
        return ids, lengths

    def encode_compact(self, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor, None]:
        encodings = self.backend.encode_batch([self.prepare(text) for text in texts])
        return (*pad_rows([encoding.ids[:max_len] or [UNK_ID] for encoding in encodings]), None)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"kind": self.kind, "lowercase": self.lowercase}
        if self.normalized:
            state["normalize"] = NORMAL_FORM
        state["tokenizers"] = json.loads(self.backend.to_str())  # Hugging Face's JSON, read back as data
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> LearnedTokenizer:
        if state.get("kind") not in LEARNED or not isinstance(state.get("tokenizers"), dict):
            raise UsageError("this tokenizer state was saved by another tokenizer version or kind")
        if state.get("normalize") not in (None, NORMAL_FORM):
            raise UsageError(f"unknown text normalisation {state['normalize']!r} in the saved tokenizer")
        backend = _backend_module().Tokenizer.from_str(json.dumps(state["tokenizers"]))
        return cls(state["kind"], backend, bool(state.get("lowercase")), state.get("normalize") == NORMAL_FORM)
