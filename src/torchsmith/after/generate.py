"""`torchsmith generate`: sample text from a trained language model (characters or BPE pieces)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from torchsmith.errors import UsageError

if TYPE_CHECKING:
    from torchsmith.after.predictor import Predictor


def generate_text(
    predictor: Predictor, prompt: str, length: int, temperature: float = 1.0, top_k: int | None = None, seed: int = 0
) -> str:
    """The prompt and `length` tokens sampled after it, decoded to text; same seed, same text.

    A token is a character for a character model, a learned piece (a few characters) for a
    BPE one. The text decoded is what the run's tokenizer writes, in any script.
    """
    from torchsmith.data.text import decode, encode, tokenizer_from_state
    from torchsmith.models.text import generate

    preprocessing = predictor.preprocessing
    kind = preprocessing.get("kind")
    if kind not in ("chars", "tokens"):
        raise UsageError("generate needs a language model run (textfile or tinyshakespeare data)")
    if length < 1:
        raise UsageError(f"--length must be a positive integer, got {length}")
    if kind == "chars":
        vocabulary = preprocessing["vocabulary"]
        prompt_ids = encode(prompt or vocabulary[0], vocabulary)
    else:
        tokenizer = tokenizer_from_state(preprocessing["tokenizer"])
        prompt_ids = torch.tensor(tokenizer.encode(prompt or "\n"), dtype=torch.int64)
    generator = torch.Generator(device=predictor.device).manual_seed(seed)
    with torch.no_grad():
        out = generate(
            predictor.model, prompt_ids.to(predictor.device), length, temperature, top_k, generator=generator
        )
    ids = out.flatten().cpu()
    return decode(ids, vocabulary) if kind == "chars" else tokenizer.decode(ids.tolist())
