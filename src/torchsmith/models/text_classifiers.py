"""Sentence classifiers over token ids: a bag of words, convolutions, a bidirectional LSTM.

Every model takes one batch of token ids (B, L) int64 as its only forward input, so it
trains unchanged in a generic loop. Id 0 is padding (at the end of each row) and the
lengths are derived from it; outputs do not depend on how much padding a batch carries.
They also take tokens with subword pieces, (B, L, P): each token's word id, then the ids
of its hashed character n-grams (`TokenEmbedding`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from torchsmith.data.tokens import PAD_ID
from torchsmith.errors import UsageError


def _lengths(ids: torch.Tensor) -> torch.Tensor:
    """Tokens before the padding in each row (B,), at least 1 so an empty row still works."""
    words = ids if ids.dim() == 2 else ids[..., 0]
    return (words != PAD_ID).sum(dim=1).clamp(min=1)


class TokenEmbedding(nn.Embedding):
    """An embedding of word ids (B, L), or of tokens with subword pieces (B, L, P).

    With pieces, a token's vector is the mean of the vectors of its non-pad ids (its word
    and its character n-grams, as fastText), so words never seen in training still get
    the meaning of the n-grams they share with known words.

    Example:
        >>> embedding = TokenEmbedding(100, 8, padding_idx=0)
        >>> embedding(torch.tensor([[[5, 40, 41], [0, 0, 0]]])).shape
        torch.Size([1, 2, 8])
    """

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 3:
            return super().forward(ids)
        batch, time, pieces = ids.shape
        bags = ids.reshape(batch * time, pieces)
        return F.embedding_bag(bags, self.weight, mode="mean", padding_idx=self.padding_idx).view(batch, time, -1)


class BagOfWords(nn.Module):
    """A bag of the text's word (and n-gram) embeddings pooled into one vector, then a linear layer.

    `pooling="mean"` averages the embeddings of the non-pad tokens (fastText's bag).
    `pooling="sqrt"` sums each distinct id once and divides by the root of their number: a
    binary bag of unit length, as a linear model over TF-IDF features reads it, where the
    mean scales every feature down by the text's length.

    `embed_dim=0`: no embedding layer; each id's row holds its score for every class, all
    starting at zero, so the model is a logistic regression over the bag.

    Example:
        >>> model = BagOfWords(vocab_size=1000, num_classes=2)
        >>> model(torch.tensor([[5, 7, 0, 0]])).shape
        torch.Size([1, 2])
    """

    def __init__(self, vocab_size: int, num_classes: int, embed_dim: int = 64, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in ("mean", "sqrt"):
            raise UsageError(f"bow's pooling must be 'mean' or 'sqrt', got {pooling!r}")
        if embed_dim < 0:
            raise UsageError(f"bow's embed_dim must be 0 (a linear model) or more, got {embed_dim}")
        self.pooling = pooling
        # EmbeddingBag leaves padding_idx out of the bag (and out of the mean's count).
        mode = "mean" if pooling == "mean" else "sum"
        self.embedding = nn.EmbeddingBag(vocab_size, embed_dim or num_classes, mode=mode, padding_idx=PAD_ID)
        self.head: nn.Module
        if embed_dim:
            self.head = nn.Linear(embed_dim, num_classes)
        else:  # every feature starts with no say, as a logistic regression's weights do
            nn.init.zeros_(self.embedding.weight)
            self.head = Bias(num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # With subword pieces (B, L, P) the bag is every word and n-gram id of the text.
        flat = ids.flatten(1)  # (B, N)
        if self.pooling == "mean":
            return self.head(self.embedding(flat))  # (B, E) -> (B, classes)
        ordered = flat.sort(dim=1).values  # repeats of an id side by side
        first = torch.ones_like(ordered, dtype=torch.bool)
        first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
        keep = first & (ordered != PAD_ID)
        dtype = self.embedding.weight.dtype
        weights = keep.to(dtype) / keep.sum(dim=1, keepdim=True).clamp(min=1).to(dtype).sqrt()
        return self.head(self.embedding(ordered, per_sample_weights=weights))


class Bias(nn.Module):
    """Adds a learned bias to each class score (what is left of the head of a linear bag)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class TextCNN(nn.Module):
    """Convolutions of several widths over word embeddings, max over time (Kim, 2014).

    Each window starts at a real token; windows that run past the end see zeros, and
    windows starting on padding are masked out of the max, so padding changes nothing.

    Example:
        >>> model = TextCNN(vocab_size=1000, num_classes=2)
        >>> model(torch.tensor([[5, 7, 0, 0]])).shape
        torch.Size([1, 2])
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        embed_dim: int = 128,
        num_filters: int = 100,
        kernel_sizes: Sequence[int] = (3, 4, 5),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.embedding = TokenEmbedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, num_filters, size) for size in kernel_sizes)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(num_filters * len(kernel_sizes), num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        time = ids.shape[1]
        valid = torch.arange(time, device=ids.device) < _lengths(ids)[:, None]  # (B, L)
        x = self.embedding(ids) * valid[..., None]  # (B, L, E), zeros on padding
        x = x.transpose(1, 2)  # (B, E, L)
        pooled = []
        for conv in self.convs:
            assert isinstance(conv, nn.Conv1d)
            # Right-pad by k - 1 so every start position has a window: (B, F, L).
            features = F.relu(conv(F.pad(x, (0, conv.kernel_size[0] - 1))))
            features = features.masked_fill(~valid[:, None, :], float("-inf"))
            pooled.append(features.amax(dim=2))  # (B, F)
        return self.head(self.dropout(torch.cat(pooled, dim=1)))


class BiLSTMClassifier(nn.Module):
    """Bidirectional LSTM over packed sequences, max-pooled over time, then linear.

    Example:
        >>> model = BiLSTMClassifier(vocab_size=1000, num_classes=2)
        >>> model(torch.tensor([[5, 7, 0, 0]])).shape
        torch.Size([1, 2])
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        embed_dim: int = 128,
        hidden_dim: int = 128,
        num_layers: int = 1,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.embedding = TokenEmbedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.lstm = nn.LSTM(
            embed_dim,
            hidden_dim,
            num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden_dim, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        time = ids.shape[1]
        lengths = _lengths(ids)
        x = self.dropout(self.embedding(ids))  # (B, L, E)
        # Packing needs the lengths on the CPU (one device sync per batch on a GPU).
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        output, _ = self.lstm(packed)
        hidden, _ = nn.utils.rnn.pad_packed_sequence(output, batch_first=True, total_length=time)  # (B, L, 2H)
        valid = torch.arange(time, device=ids.device) < lengths[:, None]  # (B, L)
        hidden = hidden.masked_fill(~valid[..., None], float("-inf"))
        return self.head(self.dropout(hidden.amax(dim=1)))  # (B, classes)
