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

import copy

import numpy as np

from axon_llm.errors import InputError

__all__ = ["Cache", "LayerKVCache", "KVCache", "LayerStateCache", "reorder_rows"]


class Cache:
    """The interface every cache here has: KV caches, SSM states and hybrids of both.

    * ``update(...)`` stores what one call computed and returns what the layer reads next
      (K/V: views of the preallocated buffers, never a copy of the prefix);
    * ``reorder(index)`` makes row ``i`` a copy of row ``index[i]`` in place (beam search);
    * ``len(cache)`` is the number of tokens consumed;
    * ``max_length`` is how many tokens it can hold (``None``: unbounded, a fixed-size state).

    A model-level cache updates layer ``i`` as ``cache.update(i, ...)``.
    """

    max_length: int | None = None

    def update(self, *args, **kwargs):
        """Store one call's new state and return what attention / the scan reads (see subclasses)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement update")

    def reorder(self, index) -> None:
        """Row ``i`` becomes a copy of row ``index[i]`` (int array [B]), in place."""
        raise NotImplementedError(f"{type(self).__name__} does not implement reorder")

    def __len__(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} does not implement __len__")


def reorder_rows(index, *arrays: np.ndarray) -> None:
    """``a[:] = a[index]`` along the batch axis for each array (in place: views and buffers stay valid)."""
    index = np.asarray(index, dtype=np.int64)
    for a in arrays:
        a[...] = a[index]


class LayerKVCache(Cache):
    """K and V of one attention layer: two preallocated arrays ``[B, Hkv, L, D]``.

    ``dtype=np.float16`` keeps K/V in half precision (llama.cpp's default: half the memory and
    the memory traffic of long-context decoding); new K/V are rounded to float16 when stored and
    attention reads them back as the model's dtype. Any other dtype follows the model's K/V.
    """

    def __init__(self, batch_size: int, max_length: int, num_kv_heads: int, head_dim: int,
                 dtype=np.float32):
        self.k = np.zeros((batch_size, num_kv_heads, max_length, head_dim), dtype=dtype)
        self.v = np.zeros_like(self.k)
        self.length = 0

    @property
    def max_length(self) -> int:
        """Number of slots."""
        return self.k.shape[2]

    def __len__(self) -> int:
        return self.length

    def update(self, k, v, start: int | None = None):
        """Write new keys/values ``[B, Hkv, T, D]`` at slots ``start..start+T`` (default: after
        the last update) and return all so far, ``(k_all, v_all)`` ``[B, Hkv, start+T, D]``.

        Without a gradient these are axon Tensors over views of the buffers (only the T new
        rows are copied in; the prefix is never copied). When the new keys carry a gradient
        (training through a cache) the result is ``cat(cached view, new)``, so the gradient
        reaches the new keys.
        """
        import axon

        start = self.length if start is None else start
        t = k.shape[2]
        end = start + t
        if end > self.max_length:
            raise InputError(f"the KV cache holds {self.max_length} tokens; feeding {t} more after {start} "
                             "overflows it (make it with a larger max_length)")
        half = self.k.dtype == np.float16                 # a float16 cache stays float16 (half the bytes)
        if self.k.dtype != k.dtype and not half:
            self.k, self.v = self.k.astype(k.dtype), self.v.astype(k.dtype)
        self.k[:, :, start:end] = k.data
        self.v[:, :, start:end] = v.data
        self.length = end
        if half and k.dtype != np.float16:               # attention reads the stored (rounded) K/V upcast
            return (axon.as_tensor(self.k[:, :, :end].astype(k.dtype)),
                    axon.as_tensor(self.v[:, :, :end].astype(k.dtype)))
        if k.requires_grad or v.requires_grad:
            past_k, past_v = axon.as_tensor(self.k[:, :, :start]), axon.as_tensor(self.v[:, :, :start])
            return axon.cat([past_k, k], dim=2), axon.cat([past_v, v], dim=2)   # [B, Hkv, start+T, D]
        return axon.as_tensor(self.k[:, :, :end]), axon.as_tensor(self.v[:, :, :end])   # views, no copy

    def reorder(self, index) -> None:
        """Row ``i`` becomes row ``index[i]`` (beam search), in place."""
        reorder_rows(index, self.k, self.v)

    def rows(self, n: int) -> "LayerKVCache":
        """This cache restricted to rows ``0..n-1``: its arrays are views, so writes land here."""
        view = copy.copy(self)
        view.k, view.v = self.k[:n], self.v[:n]                 # [n, Hkv, S, D] views
        return view


class KVCache(Cache):
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

    def update(self, layer_idx: int, k, v):
        """Layer ``layer_idx``'s new K/V ``[B, Hkv, T, D]`` written after the ``len(self)`` filled
        slots; returns views ``[B, Hkv, len + T, D]`` (:meth:`LayerKVCache.update`)."""
        return self.layers[layer_idx].update(k, v, self.length)

    def reorder(self, index) -> None:
        """Row ``i`` becomes row ``index[i]`` in every layer and in the bookkeeping (beam search)."""
        for layer in self.layers:
            layer.reorder(index)
        reorder_rows(index, self.key_mask, self.seen)

    def rows(self, n: int) -> "KVCache":
        """The cache of rows ``0..n-1`` (a batch whose idle rows are left out): every array is a
        view of this cache's, so what the view's users write lands here. Its ``length`` is a copy:
        the owner advances this cache's own."""
        if not 1 <= n <= self.batch_size:
            raise InputError(f"rows: n must be in [1, {self.batch_size}], got {n}")
        view = copy.copy(self)
        view.layers = [layer.rows(n) for layer in self.layers]
        view.batch_size = n
        view.key_mask, view.seen = self.key_mask[:n], self.seen[:n]   # [n, S], [n] views
        return view

    def reset(self) -> None:
        """Forget everything (the buffers are reused)."""
        self.length = 0
        self.key_mask[:] = True
        self.seen[:] = 0
        for layer in self.layers:
            layer.length = 0

    def advance(self, new_mask: np.ndarray) -> None:
        """Record ``T`` fed tokens (``new_mask [B, T]``, 1 = real token) after every layer wrote them."""
        t = new_mask.shape[1]
        self.key_mask[:, self.length:self.length + t] = new_mask.astype(bool)
        self.seen += new_mask.sum(axis=1).astype(np.int64)
        self.length += t


class LayerStateCache(Cache):
    """A model's cache made of one fixed-size state per layer (SSM states, window rings, hybrids).

    Subclasses fill ``layers`` (each a :class:`Cache` whose ``len`` is the tokens it consumed),
    ``batch_size`` and ``max_length``; everything else is delegated layer by layer.
    """

    layers: list
    batch_size: int

    @property
    def seen(self) -> int:
        """Tokens consumed so far (the same in every layer)."""
        return len(self.layers[0]) if self.layers else 0

    def __len__(self) -> int:
        return self.seen

    def update(self, layer_idx: int, *args):
        """Layer ``layer_idx``'s ``update(*args)`` (what it returns is what that layer reads)."""
        return self.layers[layer_idx].update(*args)

    def reorder(self, index) -> None:
        """Row ``i`` becomes row ``index[i]`` in every layer (beam search), in place."""
        for layer in self.layers:
            layer.reorder(index)

    def reset(self) -> None:
        """Every layer back to its state before the first token."""
        for layer in self.layers:
            layer.reset()

    @property
    def nbytes(self) -> int:
        """Bytes held by every layer's state."""
        return sum(layer.nbytes for layer in self.layers)
