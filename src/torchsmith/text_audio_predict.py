"""Preparers that turn raw text and WAV inputs into model inputs, as training built them,
and text generation from a trained character-level language model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from torchsmith.data.bundle import DataInfo
from torchsmith.errors import UsageError

if TYPE_CHECKING:
    from torchsmith.predictor import Predictor


def expand_text_inputs(items: list[Any]) -> list[str]:
    """Strings as given; an existing `.txt` file stands for its non-empty lines."""
    texts: list[str] = []
    for item in items:
        path = Path(str(item))
        if str(item).endswith(".txt") and path.is_file():
            texts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        elif isinstance(item, (str, Path)):
            texts.append(str(item))
        else:
            raise UsageError(f"this run takes text (strings or a .txt file with one input per line), got {item!r}")
    if not texts:
        raise UsageError("predict got no text to classify")
    return texts


def prepare_words(items: list[Any], preprocessing: dict[str, Any], info: DataInfo) -> torch.Tensor:
    """Token ids (N, L) with the run's own tokenizer and length cap, padded with 0
    ((N, L, P) when the run's tokenizer adds subword pieces)."""
    from torchsmith.data.text import WordTokenizer

    tokenizer = WordTokenizer.from_state_dict(preprocessing["tokenizer"])
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


def generate_text(
    predictor: Predictor, prompt: str, length: int, temperature: float = 1.0, top_k: int | None = None, seed: int = 0
) -> str:
    """Sample `length` characters after `prompt` from a character-level run; same seed, same text."""
    from torchsmith.data.text import decode, encode
    from torchsmith.models.text import generate

    preprocessing = predictor.preprocessing
    if preprocessing.get("kind") != "chars":
        raise UsageError("generate needs a character-level language model run (textfile or tinyshakespeare data)")
    if length < 1:
        raise UsageError(f"--length must be a positive integer, got {length}")
    vocabulary = preprocessing["vocabulary"]
    prompt_ids = encode(prompt or vocabulary[0], vocabulary).to(predictor.device)
    generator = torch.Generator(device=predictor.device).manual_seed(seed)
    with torch.no_grad():
        out = generate(predictor.model, prompt_ids, length, temperature=temperature, top_k=top_k, generator=generator)
    return decode(out.flatten().cpu(), vocabulary)
