"""Explicit, preallocated key/value caches for decoding.

A causal LM is called as ``logits = model(ids, attention_mask=None, cache=None)``; for
incremental decoding the caller makes ``cache = model.new_cache(batch_size, max_length)`` once
and passes it to every call. The cache advances by the number of tokens fed.

Glossary: ``B`` batch, ``Hkv`` key/value heads, ``L`` max_length (slots), ``D`` head dim.

Besides the per-layer K/V arrays the cache remembers, per row, which slots hold real tokens
(``key_mask``; left padding leaves holes) and how many real tokens were seen (``seen``), from
which position ids continue — the same rule transformers' ``generate`` uses
(``position_ids = cumsum(attention_mask) - 1``).
"""

from __future__ import annotations

import numpy as np

from axon_llm.errors import InputError

__all__ = ["LayerKVCache", "KVCache"]


class LayerKVCache:
    """K and V of one attention layer: two preallocated arrays ``[B, Hkv, L, D]``."""

    def __init__(self, batch_size: int, max_length: int, num_kv_heads: int, head_dim: int,
                 dtype=np.float32):
        self.k = np.zeros((batch_size, num_kv_heads, max_length, head_dim), dtype=dtype)
        self.v = np.zeros_like(self.k)

    @property
    def max_length(self) -> int:
        """Number of slots."""
        return self.k.shape[2]

    def update(self, k, v, start: int):
        """Write new keys/values ``[B, Hkv, T, D]`` at slots ``start..start+T`` and return all so far.

        Returns ``(k_all, v_all)`` as axon Tensors ``[B, Hkv, start+T, D]``. When the new keys carry
        a gradient (training through a cache), the result is ``cat(cached, new)`` so the gradient
        reaches the new keys; otherwise it is a zero-copy view of the buffers.
        """
        import axon

        t = k.shape[2]
        end = start + t
        if end > self.max_length:
            raise InputError(f"the KV cache holds {self.max_length} tokens; feeding {t} more after {start} "
                             "overflows it (make it with a larger max_length)")
        if self.k.dtype != k.dtype:
            self.k, self.v = self.k.astype(k.dtype), self.v.astype(k.dtype)
        self.k[:, :, start:end] = k.data
        self.v[:, :, start:end] = v.data
        if k.requires_grad or v.requires_grad:
            past_k, past_v = axon.tensor(self.k[:, :, :start]), axon.tensor(self.v[:, :, :start])
            return axon.cat([past_k, k], dim=2), axon.cat([past_v, v], dim=2)   # [B, Hkv, start+T, D]
        return axon.tensor(self.k[:, :, :end]), axon.tensor(self.v[:, :, :end])


class KVCache:
    """The whole model's cache: one :class:`LayerKVCache` per attention layer plus bookkeeping.

    ``length`` slots are filled; ``key_mask[b, j]`` says whether slot ``j`` of row ``b`` holds a
    real token (False for left padding); ``seen[b]`` counts row ``b``'s real tokens.
    """

    def __init__(self, num_layers: int, batch_size: int, max_length: int, num_kv_heads: int,
                 head_dim: int, dtype=np.float32):
        if batch_size < 1 or max_length < 1:
            raise InputError(f"a KV cache needs batch_size >= 1 and max_length >= 1, got {batch_size}, {max_length}")
        self.layers = [LayerKVCache(batch_size, max_length, num_kv_heads, head_dim, dtype) for _ in range(num_layers)]
        self.batch_size = batch_size
        self.max_length = max_length
        self.length = 0
        self.key_mask = np.ones((batch_size, max_length), dtype=bool)
        self.seen = np.zeros(batch_size, dtype=np.int64)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> LayerKVCache:
        return self.layers[i]

    def reset(self) -> None:
        """Forget everything (the buffers are reused)."""
        self.length = 0
        self.key_mask[:] = True
        self.seen[:] = 0

    def advance(self, new_mask: np.ndarray) -> None:
        """Record ``T`` fed tokens (``new_mask [B, T]``, 1 = real token) after every layer wrote them."""
        t = new_mask.shape[1]
        self.key_mask[:, self.length:self.length + t] = new_mask.astype(bool)
        self.seen += new_mask.sum(axis=1).astype(np.int64)
        self.length += t
