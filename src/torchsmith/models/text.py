"""Language models over any token vocabulary (characters, words or BPE pieces), and sampling.

Every model takes one batch of token ids (B, L) int64 as its only forward input, so it
trains unchanged in a generic loop. The sentence classifiers are in
`torchsmith.models.text_classifiers`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from torchsmith.errors import UsageError

# ------------------------------------------------------------ language models


class LSTMLanguageModel(nn.Module):
    """Stacked LSTM over token embeddings (characters or learned pieces) -> next-token logits (B, T, V).

    Example:
        >>> model = LSTMLanguageModel(vocab_size=65)
        >>> model(torch.zeros(2, 16, dtype=torch.long)).shape
        torch.Size([2, 16, 65])
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 128,
        hidden_dim: int = 512,
        num_layers: int = 2,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(
            embed_dim,
            hidden_dim,
            num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_dim, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.lstm(self.embedding(ids))  # (B, T, H)
        return self.head(self.dropout(hidden))  # (B, T, V)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t sees positions <= t only."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        self.proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.proj_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, rotary: torch.Tensor | None = None) -> torch.Tensor:
        batch, time, channels = x.shape
        # (B, T, 3C) -> 3 x (B, heads, T, C / heads)
        q, k, v = self.qkv(x).view(batch, time, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        dropout = self.dropout if self.training else 0.0
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            # The CPU attention kernel is about 2x slower in bf16 than in float32 (torch
            # 2.14, AVX-512 BF16 CPU) while bf16 matmuls are faster: attend in float32.
            with torch.autocast("cpu", enabled=False):
                q, k, v = q.float(), k.float(), v.float()
                if rotary is not None:
                    q, k = rotate(q, rotary), rotate(k, rotary)
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True).to(torch.bfloat16)
        else:
            if rotary is not None:
                q, k = rotate(q, rotary), rotate(k, rotary)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        y = y.transpose(1, 2).reshape(batch, time, channels)  # (B, T, C)
        return self.proj_dropout(self.proj(y))


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dim, bias=False)
        self.attention = CausalSelfAttention(embed_dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(embed_dim, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, 4 * embed_dim, bias=False),
            nn.GELU(),
            nn.Linear(4 * embed_dim, embed_dim, bias=False),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor, rotary: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), rotary)
        return x + self.mlp(self.norm2(x))


def rotary_tables(time: int, head_dim: int, device: torch.device, base: float = 10000.0) -> torch.Tensor:
    """Unit complex numbers (T, head_dim / 2) that rotate each pair of a query or key by its
    position times the pair's frequency (rotary position embeddings, Su et al. 2021)."""
    frequencies = base ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.arange(time, device=device, dtype=torch.float32)[:, None] * frequencies  # (T, D/2)
    return torch.polar(torch.ones_like(angles), angles)


def rotate(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[2i], x[2i+1]) of x (B, heads, T, D) by its position's angle: one
    complex product; attention scores then depend on positions through their difference."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * rotation).flatten(-2).to(x.dtype)


class GPT(nn.Module):
    """A small GPT (as in nanoGPT) over tokens (characters or learned pieces) -> next-token logits (B, T, V).

    Token embeddings, positions either learned (`positions="learned"`, nanoGPT) or rotary
    (`positions="rotary"`: queries and keys rotated by position, no position table),
    `num_layers` pre-norm blocks, a final LayerNorm and a head that shares its weights with
    the token embedding.

    Example:
        >>> model = GPT(vocab_size=65, block_size=128, num_layers=4, num_heads=4, embed_dim=128)
        >>> model(torch.zeros(2, 128, dtype=torch.long)).shape
        torch.Size([2, 128, 65])
    """

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        num_layers: int = 4,
        num_heads: int = 4,
        embed_dim: int = 128,
        dropout: float = 0.0,
        positions: str = "learned",
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise UsageError(f"embed_dim ({embed_dim}) must be a multiple of num_heads ({num_heads})")
        if positions not in ("learned", "rotary"):
            raise UsageError(f"positions must be 'learned' or 'rotary', got {positions!r}")
        if positions == "rotary" and (embed_dim // num_heads) % 2:
            raise UsageError(f"rotary positions need an even head size, got {embed_dim // num_heads}")
        self.block_size = block_size
        self.head_dim = embed_dim // num_heads
        self.token_embedding = nn.Embedding(vocab_size, embed_dim)
        self.position_embedding = nn.Embedding(block_size, embed_dim) if positions == "learned" else None
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(embed_dim, bias=False)
        self.head = nn.Linear(embed_dim, vocab_size, bias=False)
        self.head.weight = self.token_embedding.weight  # weight tying
        self.apply(self._init_weights)
        # Residual projections scaled down so the residual stream's variance does not
        # grow with depth (GPT-2).
        for block in self.blocks:
            assert isinstance(block, Block)
            for layer in (block.attention.proj, block.mlp[2]):
                assert isinstance(layer, nn.Linear)
                nn.init.normal_(layer.weight, std=0.02 / math.sqrt(2 * num_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        time = ids.shape[1]
        if time > self.block_size:
            raise UsageError(
                f"GPT got a sequence of {time} tokens but its block_size is "
                f"{self.block_size}; crop the input or build the model with a larger block_size"
            )
        x = self.token_embedding(ids)
        rotary = None
        if self.position_embedding is not None:
            x = x + self.position_embedding(torch.arange(time, device=ids.device))
        else:
            rotary = rotary_tables(time, self.head_dim, ids.device)
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, rotary)  # (B, T, C)
        return self.head(self.norm(x))  # (B, T, V)


# The names these models had while they read characters only.
CharLSTM = LSTMLanguageModel
CharGPT = GPT


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    length: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample `length` tokens after `prompt_ids` ((T,) or (B, T)); returns prompt + sample.

    The context is cropped to `model.block_size` when the model has one. The same
    `generator` state gives the same text; `temperature=0` picks the most likely token.

    Example:
        >>> gen = torch.Generator().manual_seed(0)  # doctest: +SKIP
        >>> out = generate(model, encode("ROMEO:", vocab), 200, generator=gen)  # doctest: +SKIP
        >>> print(decode(out, vocab))  # doctest: +SKIP
    """
    if prompt_ids.numel() == 0:
        raise UsageError("generate needs a prompt of at least one token")
    if temperature < 0 or (top_k is not None and top_k < 1):
        raise UsageError(f"temperature must be >= 0 and top_k >= 1, got {temperature} and {top_k}")
    ids = prompt_ids.view(1, -1) if prompt_ids.dim() == 1 else prompt_ids
    block_size = getattr(model, "block_size", None)
    was_training = model.training
    model.eval()
    try:
        for _ in range(length):
            context = ids if block_size is None else ids[:, -block_size:]
            logits = model(context)[:, -1, :].float()  # (B, V)
            ids = torch.cat([ids, _sample(logits, temperature, top_k, generator)], dim=1)
    finally:
        model.train(was_training)
    return ids.view(-1) if prompt_ids.dim() == 1 else ids


def _sample(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One token per row (B, 1) from logits (B, V)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if generator is not None:
        probs = probs.to(generator.device)  # multinomial draws on the generator's device
    return torch.multinomial(probs, 1, generator=generator).to(logits.device)
