"""The gradient of an embedding lookup: add each token's gradient row into its id's row.

For ids [N] (in ``[0, V)``) and the upstream gradient g [N, D] of ``W[ids]``:

    dW[v] = sum of g[i] over the i with ids[i] == v      (in the order of i; zero for unseen ids)

`embedding_backward_ref` is the NumPy definition (``np.add.at``, which adds the rows one after
the other in token order); `embedding_backward_nb` adds them in the same order in one pass over
g (no sort, no temporaries), so the two agree bit for bit. Rows of ``padding_idx`` (when given)
stay zero.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._jit import jit_disabled

__all__ = ["embedding_backward", "embedding_backward_ref", "embedding_backward_nb"]


def _check(ids, g, num_embeddings):
    if ids.ndim != 1 or g.ndim != 2 or ids.shape[0] != g.shape[0]:
        raise ValueError(f"embedding_backward: ids [N] and g [N, D] expected, got {ids.shape} and {g.shape}")
    if ids.dtype.kind not in "iu":
        raise TypeError(f"embedding_backward: ids must be integers, got {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= num_embeddings):
        raise ValueError(f"embedding_backward: ids must be in [0, {num_embeddings}), got min {ids.min()} max {ids.max()}")


def embedding_backward_ref(ids, g, num_embeddings, padding_idx=None):
    """dW [V, D] (g's dtype) of ``W[ids]`` for ids [N] and the upstream gradient g [N, D]."""
    _check(ids, g, num_embeddings)
    gw = np.zeros((num_embeddings, g.shape[1]), dtype=g.dtype)
    np.add.at(gw, ids, g)                                             # unbuffered: row i added after row i - 1
    if padding_idx is not None:
        gw[padding_idx] = 0
    return gw


@njit(cache=True, nogil=True, error_model="numpy")
def _scatter_add_rows(ids, g, gw):
    # gw[ids[i]] += g[i] for i in order: each row's sum in token order, as np.add.at adds
    for i in range(ids.shape[0]):
        row = gw[ids[i]]
        src = g[i]
        for j in range(g.shape[1]):
            row[j] += src[j]


def embedding_backward_nb(ids, g, num_embeddings, padding_idx=None):
    """The Numba version of `embedding_backward_ref` (same arguments and result, bit for bit)."""
    _check(ids, g, num_embeddings)
    gw = np.zeros((num_embeddings, g.shape[1]), dtype=g.dtype)
    if ids.size:
        _scatter_add_rows(np.ascontiguousarray(ids, dtype=np.int64), np.ascontiguousarray(g), gw)
    if padding_idx is not None:
        gw[padding_idx] = 0
    return gw


def embedding_backward(ids, g, num_embeddings, padding_idx=None):
    """dW of an embedding lookup (module doc): the kernel for float32 / float64 g, else (and
    when the JIT is off) the reference."""
    if jit_disabled() or g.dtype not in (np.float32, np.float64):
        return embedding_backward_ref(ids, g, num_embeddings, padding_idx)
    return embedding_backward_nb(ids, g, num_embeddings, padding_idx)
