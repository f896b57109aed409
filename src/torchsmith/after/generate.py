"""`torchsmith generate`: sample text from a trained character-level language model."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from torchsmith.errors import UsageError

if TYPE_CHECKING:
    from torchsmith.after.predictor import Predictor


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
