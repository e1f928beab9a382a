"""One call per layer for the batched decode step: RoPE, cache write and attention of ``n`` rows.

`axon_llm.batch_decode.BatchDecodePlan` decodes one token for each of ``n`` rows of a batch
cache. Calling :func:`axon_kernels.decode.rope_attend` once per row costs a Numba dispatch and a
Python loop turn per row and layer (240 calls per step for 8 rows of a 30-layer model), each for
one row's small work. :func:`batch_rope_attend` does all rows in one call: row ``r``'s query and
key are rotated at its own position (``cos[r], sin[r]``), its K/V go into slot ``slot`` of its own
cache row, and its heads attend its own slots ``lo[r] .. slot`` (the batch cache is left-padded:
the holes sit before ``lo[r]``).

Each row is cut into the same blocks `rope_attend` would cut it into alone (:func:`row_blocks`:
one block unless the row's own work reaches `decode.ATTEND_PARALLEL_MIN`), and every
``(row, kv head, block)`` piece is attended by `decode._attend_block` and merged as
`decode._rope_attend` merges, so each row's output is bit for bit the one `rope_attend` gives
it alone: a sequence's greedy tokens do not depend on the batch it runs in. The pieces run in
parallel (``prange``) only when the whole call's work reaches `workers.INLINE_WORK`; below it one
thread does them (waking the thread pool costs more than the work).

Glossary as in `axon_kernels.decode`: ``n`` rows, ``H`` query heads, ``Hkv`` kv heads
(``G = H / Hkv``), ``D`` head dim, ``L`` cache slots, ``R`` rotary channels.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from axon_kernels._jit import REASSOC, fast_exp, jit_disabled, own_cache_entry
from axon_kernels.decode import (ATTEND_BLOCK, ATTEND_PARALLEL_MIN, _attend_block, _rotate_store, rope_attend,
                                 rope_attend_ref)
from axon_kernels.workers import INLINE_WORK

__all__ = ["batch_rope_attend", "batch_rope_attend_ref", "row_blocks"]


def batch_rope_attend_ref(q, k, v, kc, vc, slot: int, lo, cos, sin, scale: float, out) -> None:
    """Row by row :func:`axon_kernels.decode.rope_attend_ref`: ``q, out [n, H, D]``,
    ``k, v [n, Hkv, D]``, caches ``kc, vc [>= n, Hkv, L, D]``, ``lo [n]``, ``cos, sin [n, R]``."""
    for r in range(q.shape[0]):
        rope_attend_ref(q[r], k[r], v[r], kc[r], vc[r], slot, int(lo[r]), cos[r], sin[r], scale, out[r])


@njit(cache=True, nogil=True)
def _blocks(m, heads, head_dim, kv_heads, threads):
    """Blocks per kv head of a row attending ``m`` slots: what `axon_kernels.decode.rope_attend`
    picks for that row alone (1 below `ATTEND_PARALLEL_MIN` or on one thread)."""
    if m * heads * head_dim < ATTEND_PARALLEL_MIN or threads < 2:
        return 1
    return max(-(-m // ATTEND_BLOCK), -(-2 * threads // kv_heads))


def row_blocks(slot: int, lo, heads: int, head_dim: int, kv_heads: int, threads: int) -> list[int]:
    """:func:`_blocks` of each row of a batch whose row ``r`` attends slots ``lo[r] .. slot``."""
    return [_blocks(slot + 1 - int(a), heads, head_dim, kv_heads, threads) for a in lo]


def _batch_rope_attend(q, k, v, kc, vc, slot, lo, cos, sin, scale, out, threads):
    """Rotate and store every row (serial: ``n * Hkv`` short rows), then attend every
    ``(row, kv head, block)`` piece (``prange``; :func:`_blocks` per row for ``threads``) and
    merge each row's blocks per query head."""
    n, hkv, d = k.shape
    grp = q.shape[1] // hkv
    sc = np.float32(scale)
    for r in range(n):
        _rotate_store(q[r], k[r], v[r], kc[r], vc[r], slot, cos[r], sin[r])
    size = np.empty(n, np.int64)                                          # slots per block
    nb = np.empty(n, np.int64)                                            # blocks per kv head, none empty
    first = np.zeros(n + 1, np.int64)                                     # row r's pieces: first[r]..first[r+1]
    for r in range(n):
        m = slot + 1 - lo[r]
        size[r] = -(-m // _blocks(m, q.shape[1], d, hkv, threads))
        nb[r] = -(-m // size[r])
        first[r + 1] = first[r] + hkv * nb[r]
    total = first[n]
    owner = np.empty(total, np.int64)                                     # piece -> row
    for r in range(n):
        for u in range(first[r], first[r + 1]):
            owner[u] = r
    mx = np.empty((total, grp), np.float32)
    tot = np.empty((total, grp), np.float32)
    acc = np.empty((total, grp, d), np.float32)
    for u in prange(total):
        r = owner[u]
        w = u - first[r]
        g, b = w // nb[r], w % nb[r]
        j0 = lo[r] + b * size[r]
        _attend_block(q[r], kc[r], vc[r], g, grp, j0, min(j0 + size[r], slot + 1), sc, mx[u], tot[u], acc[u])
    for rg in prange(n * hkv):                                            # merge, as decode._rope_attend
        r, g = rg // hkv, rg % hkv
        p0 = first[r] + g * nb[r]
        for a in range(grp):
            m = mx[p0, a]
            for b in range(1, nb[r]):
                m = max(m, mx[p0 + b, a])
            o = out[r, g * grp + a]
            for i in range(d):
                o[i] = 0.0
            t = np.float32(0.0)
            for b in range(nb[r]):
                w = fast_exp(mx[p0 + b, a] - m)                           # 1 for the block holding m
                t += w * tot[p0 + b, a]
                for i in range(d):
                    o[i] += w * acc[p0 + b, a, i]
            inv = np.float32(1.0) / t
            for i in range(d):
                o[i] *= inv


_batch_rope_attend_nb = njit(cache=True, nogil=True, parallel=True, fastmath=REASSOC)(
    own_cache_entry(_batch_rope_attend, "parallel"))
_batch_rope_attend_serial_nb = njit(cache=True, nogil=True, fastmath=REASSOC)(_batch_rope_attend)


def batch_rope_attend(q, k, v, kc, vc, slot: int, lo, cos, sin, scale: float, out) -> None:
    """RoPE, cache write and attention of ``n`` rows in one call (see the module doc).

    ``q, out [n, H, D]``, ``k, v [n, Hkv, D]`` float32 (C-contiguous; q and k are rotated in
    place); ``kc, vc [>= n, Hkv, L, D]`` (row ``r`` of the cache is row ``r`` of the batch);
    ``0 <= lo[r] <= slot < L``; ``cos, sin [n, R]`` float32, each row at its own position.
    A float16 cache goes row by row through `rope_attend` (its own float16 path).
    """
    if jit_disabled():
        return batch_rope_attend_ref(q, k, v, kc, vc, slot, lo, cos, sin, scale, out)
    n, h, d = q.shape
    if kc.dtype != np.float32:
        for r in range(n):
            rope_attend(q[r], k[r], v[r], kc[r], vc[r], slot, int(lo[r]), cos[r], sin[r], scale, out[r])
        return
    lo = np.asarray(lo, np.int64)
    threads = numba.get_num_threads()
    work = 2 * (n * (slot + 1) - int(lo.sum())) * h * d                   # multiply-adds: q.k and p.v
    split = (slot + 1 - int(lo.min())) * h * d >= ATTEND_PARALLEL_MIN      # a row cut into blocks
    kern = _batch_rope_attend_nb if threads > 1 and (work >= INLINE_WORK or split) else _batch_rope_attend_serial_nb
    kern(q, k, v, kc, vc, slot, lo, cos, sin, scale, out, threads)
