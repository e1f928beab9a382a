"""Embeddings: token ids -> vectors, with the id checks every model needs.

* :func:`as_token_ids` — the one place token ids are validated (int, 2-D, inside ``[0, vocab)``);
* :class:`TokenEmbedding` — ``nn.Embedding`` that refuses ids outside the vocabulary;
* :class:`PositionalEmbedding` — fixed sinusoidal positions (Vaswani et al.), no parameters;
* :class:`GPT2Embedding` — ``wte(ids) + wpe(positions)`` (learned positions, checked against
  ``n_positions``);
* :class:`BertEmbedding` — HF's ``embeddings`` module: word + position + token type, LayerNorm.
"""

from __future__ import annotations

import numpy as np

import axon
import axon.nn as nn

from axon_llm.errors import InputError

__all__ = ["as_token_ids", "TokenEmbedding", "PositionalEmbedding", "GPT2Embedding", "BertEmbedding",
           "check_positions"]


def as_token_ids(input_ids, vocab_size: int | None = None, name: str = "input_ids") -> np.ndarray:
    """``input_ids`` (int ndarray, list or axon Tensor; ``[T]`` or ``[B, T]``) -> int64 ``[B, T]``.

    Raises ``InputError`` for non-integer values, a wrong rank, an empty sequence, or an id outside
    ``[0, vocab_size)``.
    """
    arr = np.asarray(input_ids.numpy() if isinstance(input_ids, axon.Tensor) else input_ids)
    if arr.dtype.kind == "f" and arr.size and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise InputError(f"{name} must hold integer token ids, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise InputError(f"{name} must be [batch, seq_len], got shape {list(arr.shape)}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{name} is empty (shape {list(arr.shape)})")
    arr = arr.astype(np.int64, copy=False)
    if vocab_size is not None:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise InputError(f"{name} holds token id {bad}, outside the vocabulary [0, {vocab_size})")
    return arr


def check_positions(positions: np.ndarray, max_positions: int) -> None:
    """Learned position tables have ``max_positions`` rows: a longer sequence is an ``InputError``."""
    if positions.size and int(positions.max()) >= max_positions:
        raise InputError(f"sequence reaches position {int(positions.max())} but the model has only "
                         f"{max_positions} learned positions (max_position_embeddings)")


class TokenEmbedding(nn.Embedding):
    """``nn.Embedding(vocab, d)`` whose forward checks ids are inside ``[0, vocab)``."""

    def forward(self, input_ids):
        """ids ``[B, T]`` -> ``[B, T, d]`` (``InputError`` for ids outside the table)."""
        ids = as_token_ids(input_ids, self.weight.shape[0])
        return super().forward(axon.tensor(ids))                           # [B, T] -> [B, T, d]


class PositionalEmbedding(nn.Module):
    """Sinusoidal positions: ``PE[p, 2i] = sin(p / 10000^(2i/d))``, ``PE[p, 2i+1] = cos(...)``."""

    def __init__(self, d_model: int, max_len: int = 8192, base: float = 10000.0):
        super().__init__()
        self.d_model, self.max_len, self.base = d_model, max_len, base
        self._table: np.ndarray | None = None

    def table(self, n: int) -> np.ndarray:
        """The first ``n`` rows ``[n, d]`` (built lazily)."""
        if self._table is None or self._table.shape[0] < n:
            p = np.arange(max(n, self.max_len), dtype=np.float64)[:, None]
            i = np.arange(0, self.d_model, 2, dtype=np.float64)[None]
            angle = p / self.base ** (i / self.d_model)                     # [N, d/2]
            t = np.zeros((p.shape[0], self.d_model), dtype=np.float32)
            t[:, 0::2] = np.sin(angle)
            t[:, 1::2] = np.cos(angle[:, : self.d_model // 2])
            self._table = t
        return self._table[:n]

    def forward(self, positions):
        """int positions ``[B, T]`` -> ``[B, T, d]`` (a constant tensor)."""
        positions = np.asarray(positions, dtype=np.int64)
        return axon.tensor(self.table(int(positions.max()) + 1)[positions])


def gpt2_embed(wte, wpe, input_ids: np.ndarray, positions: np.ndarray):
    """``wte(ids) + wpe(positions)``, the GPT-2 input (shared by GPT2Embedding and GPT2)."""
    check_positions(positions, wpe.weight.shape[0])
    return wte(input_ids) + wpe(axon.tensor(positions))                    # [B, T, d]


class GPT2Embedding(nn.Module):
    """GPT-2 input embedding: token table ``wte`` plus learned positions ``wpe``."""

    def __init__(self, vocab_size: int, n_positions: int, n_embd: int):
        super().__init__()
        self.wte = TokenEmbedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(n_positions, n_embd)

    def forward(self, input_ids, positions=None):
        """ids ``[B, T]`` (positions default ``0..T-1``) -> ``[B, T, d]``."""
        ids = as_token_ids(input_ids, self.wte.weight.shape[0])
        if positions is None:
            positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
        return gpt2_embed(self.wte, self.wpe, ids, np.asarray(positions))


class BertEmbedding(nn.Module):
    """HF ``BertEmbeddings``: ``LayerNorm(word + position + token_type)`` then dropout."""

    def __init__(self, vocab_size: int, hidden_size: int, max_position_embeddings: int, type_vocab_size: int,
                 layer_norm_eps: float = 1e-12, dropout: float = 0.0, pad_token_id: int | None = 0):
        super().__init__()
        self.word_embeddings = TokenEmbedding(vocab_size, hidden_size)
        self.position_embeddings = nn.Embedding(max_position_embeddings, hidden_size)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_ids, token_type_ids=None):
        """ids ``[B, T]`` (token types default 0) -> ``[B, T, d]``."""
        ids = as_token_ids(input_ids, self.word_embeddings.num_embeddings)   # (a QuantizedEmbedding has no .weight)
        b, t = ids.shape
        positions = np.broadcast_to(np.arange(t), (b, t))
        check_positions(positions, self.position_embeddings.weight.shape[0])
        if token_type_ids is None:
            types = np.zeros((b, t), dtype=np.int64)
        else:
            types = as_token_ids(token_type_ids, self.token_type_embeddings.weight.shape[0], "token_type_ids")
            if types.shape != ids.shape:
                raise InputError(f"token_type_ids shape {list(types.shape)} differs from input_ids {list(ids.shape)}")
        x = (self.word_embeddings(ids) + self.token_type_embeddings(axon.tensor(types))
             + self.position_embeddings(axon.tensor(positions)))             # [B, T, d] (HF's order)
        return self.dropout(self.LayerNorm(x))
