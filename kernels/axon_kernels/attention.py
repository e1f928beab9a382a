"""Scaled dot-product attention: the one visibility rule, FlashAttention-2 (tiled, online
softmax, O(T) memory, with backward) and a query-blocked BLAS kernel (no backward).

Glossary
    B batch, H query heads, Hkv key/value heads (H % Hkv == 0, G = H // Hkv queries share a
    K/V head), Tq queries, Tk keys (Tq <= Tk: the queries are the LAST Tq positions, so query i
    sits at position p_i = Tk - Tq + i), D head dim, W sliding window, bq / bkv tile sizes.

    visible(b, i, j) = (not causal and W is None or j <= p_i) and (W is None or j > p_i - W)
                       and key_mask[b, j]                        -- `visible_mask`, the one rule
    S = scale * Q K^T (masked to -inf where not visible), P = softmax(S), out = P V,
    lse = logsumexp(S) per query row (natural log); a row that sees no key gives zeros.

`flash_attention_ref` materialises S (the definition). `flash_attention_nb` never does: each
task owns one (batch, head, query tile), walks the key tiles that tile can see, and keeps a
running max m, a running denominator l and an unnormalised output (the online softmax, see
docs/kernels.md). Only tiles on the causal diagonal (or a window's edge) apply the rule per
element; the others, fully visible (`_block_visible`), skip the check (the causal split). The
backward is one pass: a task per key tile recomputes P once per (query tile, key tile) pair
from the saved lse and accumulates dK, dV for its keys and dQ into a per-thread buffer. The
per-key query range `_visible_queries`, the block range `_kv_range` and `_block_visible` are the rule
inlined (tests prove them equal). All tile products go through `_mm_acc`, a register-blocked
GEMM update that LLVM vectorises; tile sizes default to `flash_tile_sizes`.

`blas_attention` (reference `blas_attention_ref`) is what inference runs: per block of queries,
two BLAS products over only the keys the block can see, and an in-place softmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from .workers import INLINE_WORK, run_chunks
from ._jit import CONTRACT, fast_exp, float_array, jit_disabled, result_float_dtype

__all__ = [
    "FlashAttentionConfig",
    "flash_tile_sizes",
    "flash_attention",
    "flash_attention_ref",
    "flash_attention_nb",
    "flash_attention_backward",
    "flash_attention_backward_ref",
    "flash_attention_backward_nb",
    "visible_mask",
    "visible_key_range",
    "blas_attention",
    "blas_attention_ref",
]


@dataclass(frozen=True)
class FlashAttentionConfig:
    """Tile sizes of the flash attention kernel (the crate's `FlashAttentionConfig`).

    `block_q` query rows and `block_kv` key rows are processed per tile; the working set of one
    task is about (block_q + 2 * block_kv) * D + block_q * block_kv floats.
    """

    block_q: int = 64
    block_kv: int = 64

    def __post_init__(self):
        for name in ("block_q", "block_kv"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")


def flash_tile_sizes(tq, tk, d, block_q=None, block_kv=None):
    """The (block_q, block_kv) the flash kernels use for this shape; given sizes are kept.

    128 query rows x 64 keys when queries and keys both number 1024 or more, else 64 x 64; a tile
    never holds more rows than there are queries (keys), rounded up to 4 (16), so short
    prefills allocate and zero no unused rows. Measured in CPU time (`--tile-sweep` of
    benchmarks/bench_kernels.py, docs/performance.md), relative to 64 x 64, forward / backward:
    128 x 64 took 0.93-0.95 / 0.92-0.95 at causal T=2048 H=4 D=64, 1.01-1.02 / 0.94-0.98 at
    T=1024 H=4 D=128 and 0.99-1.08 / 0.96-0.99 at T=512 H=8 (so 64 x 64 below T=1024); tiles of
    32 rows took 1.08-1.32 everywhere.
    """
    if block_q is None:
        block_q = min(128 if min(tq, tk) >= 1024 else 64, -(-max(tq, 1) // 4) * 4)
    if block_kv is None:
        block_kv = min(64, -(-max(tk, 1) // 16) * 16)
    return int(block_q), int(block_kv)


# --------------------------------------------------------------------------------------------
# validation shared by every variant
# --------------------------------------------------------------------------------------------


def _validate(q, k, v, causal, window, scale, block_q, block_kv):
    q = float_array("q", q, ndim=4)
    k = float_array("k", k, ndim=4)
    v = float_array("v", v, ndim=4)
    b, h, tq, d = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape [B, Hkv, Tk, D], got {k.shape} and {v.shape}")
    bk, hkv, tk, dk = k.shape
    if bk != b or dk != d:
        raise ValueError(f"q {q.shape} and k {k.shape} disagree on batch or head dim (want [B, H, Tq, D] and [B, Hkv, Tk, D])")
    if hkv == 0 or h % hkv != 0:
        raise ValueError(f"query heads H={h} must be a multiple of key/value heads Hkv={hkv}")
    if tq > tk:
        raise ValueError(f"more queries than keys (Tq={tq} > Tk={tk}): queries are the last Tq of the Tk positions")
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
            raise ValueError(f"window must be a positive int or None, got {window!r}")
        window = int(window)
    if scale is None:
        scale = d ** -0.5 if d else 1.0
    elif not isinstance(scale, (int, float, np.floating, np.integer)) or isinstance(scale, bool):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    if block_q is not None or block_kv is not None:  # None: `flash_tile_sizes` picks them
        FlashAttentionConfig(64 if block_q is None else block_q, 64 if block_kv is None else block_kv)  # validates
    return q, k, v, bool(causal), window, float(scale)


def visible_mask(tq, tk, causal=False, window=None, key_mask=None):
    """THE visibility rule of every attention path here: which keys each query may see.

    Queries are the last `tq` of `tk` positions (bottom-right aligned), so query i sits at
    p = tk - tq + i. Key j is visible when all of these hold:

        causal or window:  j <= p                (a window implies causal)
        window W:          j > p - W             (W keys, the query's own included)
        key_mask [B, Tk]:  key_mask[b, j]        (False = a padding slot)

    Returns bool [Tq, Tk], or [B, 1, Tq, Tk] with a `key_mask`. A query row that sees no key
    (a padding query before the first real token) gives zeros in every path, never NaN. The Numba
    kernels inline the same rule per key (`_visible_queries`) and per block (`_kv_range`); tests prove them equal.
    """
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
            raise ValueError(f"window must be a positive int or None, got {window!r}")
    pos = np.arange(tk - tq, tk)[:, None]  # [Tq, 1] query positions
    keys = np.arange(tk)[None, :]  # [1, Tk]
    mask = np.ones((tq, tk), dtype=bool)
    if causal or window is not None:
        mask &= keys <= pos
    if window is not None:
        mask &= keys > pos - int(window)
    if key_mask is not None:
        key_mask = np.asarray(key_mask, dtype=bool)
        if key_mask.ndim != 2 or key_mask.shape[1] != tk:
            raise ValueError(f"key_mask must be bool [B, Tk={tk}], got shape {key_mask.shape}")
        mask = mask[None, None] & key_mask[:, None, None, :]  # [B, 1, Tq, Tk]
    return mask


def visible_key_range(p_first, p_last, tk, causal, window):
    """Keys [lo, hi) that queries at positions p_first..p_last may see (before any key mask).

    The block form of `visible_mask` used to skip invisible key blocks; `_kv_range` is its
    Numba twin (window 0 there means none).
    """
    lo, hi = 0, tk
    if causal or window is not None:
        hi = p_last + 1
    if window is not None:
        lo = max(0, p_first - int(window) + 1)
    return lo, hi


# --------------------------------------------------------------------------------------------
# reference (the definition)
# --------------------------------------------------------------------------------------------


def flash_attention_ref(q, k, v, causal=False, window=None, scale=None, block_q=None, block_kv=None):
    """Reference attention: returns (out [B, H, Tq, D], lse [B, H, Tq]).

    Materialises the score matrix; `block_q` / `block_kv` are validated and otherwise unused.
    A `window` implies causal (query at p sees p - W < j <= p). NaN/Inf in a query, key or
    value a row sees makes that row NaN; as P @ V is dense here, a NaN value of a *masked* key
    also reaches the row (0 * NaN), which the tiled kernel, skipping masked keys, avoids.
    """
    q, k, v, causal, window, scale = _validate(q, k, v, causal, window, scale, block_q, block_kv)
    dtype = result_float_dtype(q, k, v)
    b, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    if tk == 0:  # then Tq == 0 too: nothing to attend
        return np.zeros(q.shape, dtype), np.zeros(q.shape[:3], dtype)
    qg = q.astype(dtype, copy=False).reshape(b, hkv, h // hkv, tq, d)  # [B, Hkv, G, Tq, D]
    k = k.astype(dtype, copy=False)
    v = v.astype(dtype, copy=False)
    s = np.einsum("bhgqd,bhkd->bhgqk", qg, k) * dtype.type(scale)  # [B, Hkv, G, Tq, Tk]
    s = np.where(visible_mask(tq, tk, causal, window), s, -np.inf)
    m = s.max(axis=-1, keepdims=True)  # [B, Hkv, G, Tq, 1]
    p = np.exp(s - m)
    denom = p.sum(axis=-1, keepdims=True)
    out = np.einsum("bhgqk,bhkd->bhgqd", p, v) / denom  # [B, Hkv, G, Tq, D]
    lse = (m + np.log(denom))[..., 0]  # [B, Hkv, G, Tq]
    return out.reshape(b, h, tq, d).astype(dtype, copy=False), lse.reshape(b, h, tq).astype(dtype, copy=False)


def flash_attention_backward_ref(q, k, v, out, lse, dout, causal=False, window=None, scale=None, block_q=None, block_kv=None):
    """Reference gradients (dq, dk, dv) of `flash_attention` given its out, lse and d(out).

    With P = exp(S - lse): dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dO * O)),
    dQ = scale dS K, dK = scale dS^T Q (summed over the G query heads sharing a K/V head).
    """
    q, k, v, causal, window, scale = _validate(q, k, v, causal, window, scale, block_q, block_kv)
    out, lse, dout = _validate_saved(q, out, lse, dout)
    dtype = result_float_dtype(q, k, v, out, lse, dout)
    b, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    g = h // hkv
    if tk == 0:
        return np.zeros(q.shape, dtype), np.zeros(k.shape, dtype), np.zeros(v.shape, dtype)
    cast = lambda x: x.astype(dtype, copy=False)  # noqa: E731
    qg = cast(q).reshape(b, hkv, g, tq, d)  # [B, Hkv, G, Tq, D]
    og = cast(out).reshape(b, hkv, g, tq, d)
    dog = cast(dout).reshape(b, hkv, g, tq, d)
    lseg = cast(lse).reshape(b, hkv, g, tq, 1)
    k, v = cast(k), cast(v)
    s = np.einsum("bhgqd,bhkd->bhgqk", qg, k) * dtype.type(scale)  # [B, Hkv, G, Tq, Tk]
    p = np.where(visible_mask(tq, tk, causal, window), np.exp(s - lseg), 0)
    dv = np.einsum("bhgqk,bhgqd->bhkd", p, dog)  # [B, Hkv, Tk, D]
    dp = np.einsum("bhgqd,bhkd->bhgqk", dog, v)  # [B, Hkv, G, Tq, Tk]
    delta = (dog * og).sum(axis=-1, keepdims=True)  # [B, Hkv, G, Tq, 1]
    ds = p * (dp - delta)
    dq = np.einsum("bhgqk,bhkd->bhgqd", ds, k) * dtype.type(scale)
    dk = np.einsum("bhgqk,bhgqd->bhkd", ds, qg) * dtype.type(scale)
    return dq.reshape(b, h, tq, d).astype(dtype, copy=False), dk.astype(dtype, copy=False), dv.astype(dtype, copy=False)


def _validate_saved(q, out, lse, dout):
    out = float_array("out", out, ndim=4)
    dout = float_array("dout", dout, ndim=4)
    lse = float_array("lse", lse, ndim=3)
    if out.shape != q.shape or dout.shape != q.shape:
        raise ValueError(f"out {out.shape} and dout {dout.shape} must have the shape of q {q.shape}")
    if lse.shape != q.shape[:3]:
        raise ValueError(f"lse must have shape [B, H, Tq] = {q.shape[:3]}, got {lse.shape}")
    return out, lse, dout


# --------------------------------------------------------------------------------------------
# Numba kernels
# --------------------------------------------------------------------------------------------


@njit(inline="always", error_model="numpy")
def _kv_range(p_first, p_last, tk, causal, window):
    """Keys [lo, hi) that queries at positions p_first..p_last can see (window <= 0: none)."""
    lo = 0
    hi = tk
    if causal or window > 0:
        hi = p_last + 1
    if window > 0:
        lo = max(0, p_first - window + 1)
    return lo, hi


# How the flash kernels get vectorised code without fastmath: every tile is a row-major 1-D
# buffer (the task's own, or a flat view of a pre-transposed input) indexed with unsigned
# (uint64) offsets. Numba wraps negative *signed* indices (a select per access), which stops
# LLVM's vectoriser; with unsigned offsets the inner loops of `_mm_acc` compile to packed FMAs
# (`vfmadd231ps` on zmm registers here, checked by tests/kernels/test_attention.py; with signed
# offsets only scalar `vfmadd231ss`). The softmax loops run along contiguous queries for the same
# reason (tiles are held keys x queries), so no loop needs a horizontal reduction.
_U = np.uint64


def _claim(counter):
    """Take the next task number: counter[0] += 1, returning the old value (atomic in Numba).

    The kernels hand out tasks through this instead of prange's static split: on a shared
    machine a thread that got descheduled would otherwise hold half the tasks while the other
    thread sits idle; here whichever thread runs takes the next task."""
    task = counter[0]
    counter[0] += 1
    return task


@intrinsic
def _atomic_fetch_add(typingctx, counter):
    sig = types.int64(counter)

    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        one = context.get_constant(types.int64, 1)
        return builder.atomic_rmw("add", arr.data, one, "seq_cst")

    return sig, codegen


@overload(_claim)
def _claim_overload(counter):
    return lambda counter: _atomic_fetch_add(counter)


@njit(inline="always", error_model="numpy")
def _visible_queries(key, p_first, rows, causal, window):
    """The queries of a tile (``i < rows``, at positions ``p_first + i``) that see ``key``: exactly
    ``lo <= i < hi``. A range rather than a test per element, so a diagonal or window-edge tile
    masks the rest of each key's column with two plain fills."""
    lo = 0
    hi = rows
    if causal or window > 0:  # key <= p_first + i
        lo = min(rows, max(0, key - p_first))
    if window > 0:  # key > p_first + i - window
        hi = min(rows, max(lo, key + window - p_first))
    return lo, hi


@njit(inline="always", error_model="numpy")
def _block_visible(p_first, p_last, j0, j1, causal, window):
    """True when every query at positions p_first..p_last sees every key j0..j1-1 (the causal
    split: such a tile needs no per-element mask; only tiles on the diagonal or the window's
    edge run `_visible_queries`)."""
    past_diagonal = (causal or window > 0) and j1 - 1 > p_first  # a key after the first query
    before_window = window > 0 and j0 <= p_last - window  # a key before the last query's window
    return not (past_diagonal or before_window)


@njit(cache=True, nogil=True, fastmath=CONTRACT, error_model="numpy")
def _mm_acc(a, ao, lda, b, bo, ldb, c, co, ldc, m, kd, n):
    """c[co + i ldc + j] += sum_k a[ao + i lda + k] b[bo + k ldb + j] for i < m, k < kd, j < n.

    A row-major GEMM update on 1-D buffers (offsets, strides and sizes uint64): every product of
    the flash kernels. Four rows of c take four rows of b per pass (16 FMAs per 4 loads of b),
    the inner loop along j vectorised (~100 GFLOP/s float32 on one core here at 64 x 64 x 64).
    Not inlined: one compiled copy per dtype keeps the kernels' compile time down."""
    u1, u2, u3, u4 = _U(1), _U(2), _U(3), _U(4)
    for i4 in range(m // u4):
        a0 = ao + i4 * u4 * lda
        a1 = a0 + lda
        a2 = a1 + lda
        a3 = a2 + lda
        c0 = co + i4 * u4 * ldc
        c1 = c0 + ldc
        c2 = c1 + ldc
        c3 = c2 + ldc
        for k4 in range(kd // u4):
            kk = k4 * u4
            x00, x01, x02, x03 = a[a0 + kk], a[a0 + kk + u1], a[a0 + kk + u2], a[a0 + kk + u3]
            x10, x11, x12, x13 = a[a1 + kk], a[a1 + kk + u1], a[a1 + kk + u2], a[a1 + kk + u3]
            x20, x21, x22, x23 = a[a2 + kk], a[a2 + kk + u1], a[a2 + kk + u2], a[a2 + kk + u3]
            x30, x31, x32, x33 = a[a3 + kk], a[a3 + kk + u1], a[a3 + kk + u2], a[a3 + kk + u3]
            o0 = bo + kk * ldb
            o1 = o0 + ldb
            o2 = o1 + ldb
            o3 = o2 + ldb
            for j in range(n):
                b0, b1, b2, b3 = b[o0 + j], b[o1 + j], b[o2 + j], b[o3 + j]
                c[c0 + j] += x00 * b0 + x01 * b1 + x02 * b2 + x03 * b3
                c[c1 + j] += x10 * b0 + x11 * b1 + x12 * b2 + x13 * b3
                c[c2 + j] += x20 * b0 + x21 * b1 + x22 * b2 + x23 * b3
                c[c3 + j] += x30 * b0 + x31 * b1 + x32 * b2 + x33 * b3
        for kk in range(kd - kd % u4, kd):
            x0, x1, x2, x3 = a[a0 + kk], a[a1 + kk], a[a2 + kk], a[a3 + kk]
            o0 = bo + kk * ldb
            for j in range(n):
                b0 = b[o0 + j]
                c[c0 + j] += x0 * b0
                c[c1 + j] += x1 * b0
                c[c2 + j] += x2 * b0
                c[c3 + j] += x3 * b0
    for i in range(m - m % u4, m):
        a0 = ao + i * lda
        c0 = co + i * ldc
        for kk in range(kd):
            x0 = a[a0 + kk]
            o0 = bo + kk * ldb
            for j in range(n):
                c[c0 + j] += x0 * b[o0 + j]


@njit(parallel=True, cache=True, nogil=True, fastmath=CONTRACT, error_model="numpy")
def _flash_forward_kernel(qt, k, vt, causal, window, block_q, block_kv, out, lse, counter, workers):
    # qt [B, H, D, Tq] = (scale Q)^T, k [B, Hkv, Tk, D], vt [B, Hkv, D, Tk] = V^T, all C-contiguous;
    # out [B, H, Tq, D], lse [B, H, Tq]. The tile is held transposed, keys x queries (S^T, P^T,
    # out^T): the softmax's per-query max, sum and rescale then run along contiguous queries
    # (vectorised, no horizontal reductions), and the GEMMs read qt, k and vt in place.
    n_b, n_h, d, tq = qt.shape
    n_hkv, tk = k.shape[1], k.shape[2]
    group = n_h // n_hkv
    offset = tk - tq  # query i sits at position offset + i
    q_tiles = (tq + block_q - 1) // block_q
    qtf, kf, vtf = qt.reshape(-1), k.reshape(-1), vt.reshape(-1)
    ud, utq, utk, ubq, zero = _U(d), _U(tq), _U(tk), _U(block_q), _U(0)
    n_tasks = n_b * n_h * q_tiles
    for _worker in prange(min(workers, n_tasks)):  # workers = the caller's numba.get_num_threads()
        while True:  # tasks handed out by `_claim` (see there), not prange's static split
            task = _claim(counter)
            if task >= n_tasks:
                break
            tile = q_tiles - 1 - task % q_tiles  # last query tiles first: with causal they see the most keys
            bi = task // (n_h * q_tiles)
            hi_ = (task // q_tiles) % n_h
            i0 = tile * block_q
            i1 = min(tq, i0 + block_q)
            rows = i1 - i0
            ur = _U(rows)
            kh = hi_ // group  # the K/V head this query head reads (GQA, no copy)
            qt_at = _U((bi * n_h + hi_) * d * tq + i0)  # [D, rows] query tile in qtf (row stride Tq)
            k_at = _U((bi * n_hkv + kh) * tk * d)  # [Tk, D] K of the head in kf
            vt_at = _U((bi * n_hkv + kh) * d * tk)  # [D, Tk] V^T of the head in vtf
            acc = np.zeros(d * block_q, qt.dtype)  # [D, rows] unnormalised output, transposed
            st = np.empty(block_kv * block_q, qt.dtype)  # [cols, rows] scores, then probabilities
            m = np.empty(block_q, qt.dtype)  # running max per query
            m[:] = -np.inf
            neg_inf = m[0]  # -inf in the data dtype
            l = np.zeros(block_q, qt.dtype)  # running denominator per query
            m_new = np.empty(block_q, qt.dtype)
            shift = np.empty(block_q, qt.dtype)
            alpha = np.empty(block_q, qt.dtype)
            p_first, p_last = offset + i0, offset + i1 - 1
            lo, hi = _kv_range(p_first, p_last, tk, causal, window)
            for j0 in range(lo, hi, block_kv):
                j1 = min(hi, j0 + block_kv)
                cols = j1 - j0
                uc = _U(cols)
                for x in range(uc * ubq):
                    st[x] = 0.0
                _mm_acc(kf, k_at + _U(j0) * ud, ud, qtf, qt_at, utq, st, zero, ubq, uc, ud, ur)  # S^T = K (scale Q)^T
                full = _block_visible(p_first, p_last, j0, j1, causal, window)
                if not full:  # diagonal / window-edge tile: each key's invisible queries
                    for j in range(cols):
                        o = _U(j) * ubq
                        v_lo, v_hi = _visible_queries(j0 + j, p_first, rows, causal, window)
                        for i in range(_U(v_lo)):
                            st[o + i] = neg_inf
                        for i in range(_U(v_hi), ur):
                            st[o + i] = neg_inf
                for i in range(ur):
                    m_new[i] = m[i]
                for j in range(uc):  # per-query max over the tile's keys (a NaN never wins; it reaches the row through exp)
                    o = j * ubq
                    for i in range(ur):
                        x = st[o + i]
                        m_new[i] = x if x > m_new[i] else m_new[i]  # noqa: FURB136 (max() differs on NaN)
                for i in range(ur):
                    shift[i] = m_new[i] if m_new[i] != neg_inf else 0.0  # a query that sees no key yet: exp(-inf - 0) = 0
                    alpha[i] = fast_exp(m[i] - shift[i])  # rescales what was accumulated under the old max
                    m[i] = m_new[i]
                    l[i] *= alpha[i]
                for j in range(uc):
                    o = j * ubq
                    for i in range(ur):
                        st[o + i] = fast_exp(st[o + i] - shift[i])
                if not full:  # exp(-inf) is 0 up to a denormal; make masked probabilities exactly 0
                    for j in range(cols):
                        o = _U(j) * ubq
                        v_lo, v_hi = _visible_queries(j0 + j, p_first, rows, causal, window)
                        for i in range(_U(v_lo)):
                            st[o + i] = 0.0
                        for i in range(_U(v_hi), ur):
                            st[o + i] = 0.0
                for j in range(uc):
                    o = j * ubq
                    for i in range(ur):
                        l[i] += st[o + i]
                for c in range(ud):
                    o = c * ubq
                    for i in range(ur):
                        acc[o + i] *= alpha[i]
                _mm_acc(vtf, vt_at + _U(j0), utk, st, zero, ubq, acc, zero, ubq, ud, uc, ur)  # out^T += V^T P^T
            for i in range(rows):
                inv = 1.0 / l[i]
                out_row = out[bi, hi_, i0 + i]
                for c in range(ud):
                    out_row[c] = acc[c * ubq + _U(i)] * inv
                lse[bi, hi_, i0 + i] = m[i] + np.log(l[i])


@njit(parallel=True, cache=True, nogil=True, fastmath=CONTRACT, error_model="numpy")
def _flash_backward_kernel(qs, qt, dout, dot, k, v, lse, delta, causal, window, scale, block_q, block_kv,
                           dq_parts, dk, dv, counter, workers):
    # One pass: a task per (batch, K/V head, key tile) walks the G query heads and the query tiles
    # that see its keys, recomputes P^T once per tile pair and accumulates dV += P^T dO and
    # dK += dS^T (scale Q) in its own buffers (no write conflicts) and dQ += dS K into the running
    # thread's slice of dq_parts [threads, B, H, Tq, D] (summed by the caller).
    # qs = scale Q [B, H, Tq, D], qt its transpose [B, H, D, Tq], dout [B, H, Tq, D], dot its
    # transpose; k, v [B, Hkv, Tk, D]; lse, delta [B, H, Tq]. All C-contiguous.
    n_b, n_h, tq, d = qs.shape
    n_hkv, tk = k.shape[1], k.shape[2]
    group = n_h // n_hkv
    offset = tk - tq
    kv_tiles = (tk + block_kv - 1) // block_kv
    qsf, qtf, dof, dotf = qs.reshape(-1), qt.reshape(-1), dout.reshape(-1), dot.reshape(-1)
    ud, utq, ubq, ubk, zero = _U(d), _U(tq), _U(block_q), _U(block_kv), _U(0)
    n_tasks = n_b * n_hkv * kv_tiles
    for _worker in prange(min(workers, n_tasks)):  # workers = the caller's numba.get_num_threads()
        while True:  # tasks handed out by `_claim` (see there), not prange's static split
            task = _claim(counter)
            if task >= n_tasks:
                break
            bi = task // (n_hkv * kv_tiles)
            kh = (task // kv_tiles) % n_hkv
            j0 = (task % kv_tiles) * block_kv  # first key tiles first: with causal they see the most queries
            j1 = min(tk, j0 + block_kv)
            cols = j1 - j0
            uc = _U(cols)
            kb = np.empty(block_kv * d, qs.dtype)  # [cols, D] K tile
            vb = np.empty(block_kv * d, qs.dtype)  # [cols, D] V tile
            dk_t = np.zeros(block_kv * d, qs.dtype)  # [cols, D]
            dv_t = np.zeros(block_kv * d, qs.dtype)  # [cols, D]
            pt = np.empty(block_kv * block_q, qs.dtype)  # [cols, rows] S^T, then P^T
            dst = np.empty(block_kv * block_q, qs.dtype)  # [cols, rows] dP^T, then dS^T
            ds = np.empty(block_q * block_kv, qs.dtype)  # [rows, cols] dS
            dq_t = np.empty(block_q * d, qs.dtype)  # [rows, D]
            row_lse = np.empty(block_q, qs.dtype)
            row_delta = np.empty(block_q, qs.dtype)
            for j in range(cols):
                k_row = k[bi, kh, j0 + j]
                v_row = v[bi, kh, j0 + j]
                o = _U(j) * ud
                for c in range(ud):
                    kb[o + c] = k_row[c]
                    vb[o + c] = v_row[c]
            # queries (by index) that can see some key of this tile
            i_lo = 0
            i_hi = tq
            if causal or window > 0:
                i_lo = max(0, j0 - offset)
            if window > 0:
                i_hi = min(tq, j1 - 1 + window - offset)
            for g in range(group):
                hq = kh * group + g
                dq_acc = dq_parts[numba.get_thread_id(), bi, hq]  # [Tq, D] this thread's dQ
                head_rows = _U((bi * n_h + hq) * tq * d)  # [Tq, D] of the head in qsf / dof
                head_cols = _U((bi * n_h + hq) * d * tq)  # [D, Tq] of the head in qtf / dotf
                for i0 in range(i_lo, i_hi, block_q):
                    i1 = min(i_hi, i0 + block_q)
                    rows = i1 - i0
                    ur = _U(rows)
                    for i in range(rows):
                        row_lse[i] = lse[bi, hq, i0 + i]
                        row_delta[i] = delta[bi, hq, i0 + i]
                    for x in range(uc * ubq):
                        pt[x] = 0.0
                        dst[x] = 0.0
                    _mm_acc(kb, zero, ud, qtf, head_cols + _U(i0), utq, pt, zero, ubq, uc, ud, ur)  # S^T = K (scale Q)^T
                    _mm_acc(vb, zero, ud, dotf, head_cols + _U(i0), utq, dst, zero, ubq, uc, ud, ur)  # dP^T = V dO^T
                    full = _block_visible(offset + i0, offset + i1 - 1, j0, j1, causal, window)
                    for j in range(cols):
                        o = _U(j) * ubq
                        for i in range(ur):
                            pt[o + i] = fast_exp(pt[o + i] - row_lse[i])
                        if not full:
                            v_lo, v_hi = _visible_queries(j0 + j, offset + i0, rows, causal, window)
                            for i in range(_U(v_lo)):
                                pt[o + i] = 0.0
                            for i in range(_U(v_hi), ur):
                                pt[o + i] = 0.0
                        for i in range(ur):
                            dst[o + i] = pt[o + i] * (dst[o + i] - row_delta[i])  # dS^T (scale applied below)
                    at = head_rows + _U(i0) * ud
                    _mm_acc(pt, zero, ubq, dof, at, ud, dv_t, zero, ud, uc, ur, ud)  # dV += P^T dO
                    _mm_acc(dst, zero, ubq, qsf, at, ud, dk_t, zero, ud, uc, ur, ud)  # dK += dS^T (scale Q)
                    for i in range(ur):
                        o = i * ubk
                        for j in range(uc):
                            ds[o + j] = dst[j * ubq + i]
                    for x in range(ur * ud):
                        dq_t[x] = 0.0
                    _mm_acc(ds, zero, ubk, kb, zero, ud, dq_t, zero, ud, ur, uc, ud)  # dS K
                    for i in range(rows):
                        dq_row = dq_acc[i0 + i]
                        o = _U(i) * ud
                        for c in range(ud):
                            dq_row[c] += dq_t[o + c] * scale
            for j in range(cols):
                dk_out = dk[bi, kh, j0 + j]
                dv_out = dv[bi, kh, j0 + j]
                o = _U(j) * ud
                for c in range(ud):
                    dk_out[c] = dk_t[o + c]
                    dv_out[c] = dv_t[o + c]


def flash_attention_nb(q, k, v, causal=False, window=None, scale=None, block_q=None, block_kv=None):
    """Numba flash attention (always runs the `@njit` kernel); same contract as the reference."""
    q, k, v, causal, window, scale = _validate(q, k, v, causal, window, scale, block_q, block_kv)
    dtype = result_float_dtype(q, k, v)
    block_q, block_kv = flash_tile_sizes(q.shape[2], k.shape[2], q.shape[3], block_q, block_kv)
    out = np.empty(q.shape, dtype)  # [B, H, Tq, D]
    lse = np.empty(q.shape[:3], dtype)  # [B, H, Tq]
    if q.size == 0:  # also covers Tk == 0 (then Tq == 0)
        return out, lse
    qt = np.ascontiguousarray((q.astype(dtype, copy=False) * dtype.type(scale)).transpose(0, 1, 3, 2))  # [B, H, D, Tq]
    vt = np.ascontiguousarray(v.astype(dtype, copy=False).transpose(0, 1, 3, 2))  # [B, Hkv, D, Tk]
    kc = np.ascontiguousarray(k, dtype=dtype)
    _flash_forward_kernel(qt, kc, vt, causal, window or 0, block_q, block_kv, out, lse, np.zeros(1, np.int64), numba.get_num_threads())
    return out, lse


def flash_attention_backward_nb(q, k, v, out, lse, dout, causal=False, window=None, scale=None, block_q=None, block_kv=None):
    """Numba flash attention backward (always runs the `@njit` kernel); returns (dq, dk, dv)."""
    q, k, v, causal, window, scale = _validate(q, k, v, causal, window, scale, block_q, block_kv)
    out, lse, dout = _validate_saved(q, out, lse, dout)
    dtype = result_float_dtype(q, k, v, out, lse, dout)
    block_q, block_kv = flash_tile_sizes(q.shape[2], k.shape[2], q.shape[3], block_q, block_kv)
    dk = np.zeros(k.shape, dtype)
    dv = np.zeros(v.shape, dtype)
    if q.size == 0 or k.size == 0:
        return np.zeros(q.shape, dtype), dk, dv
    scale = dtype.type(scale)  # in the data dtype: float32 math stays float32
    qs = np.ascontiguousarray(q.astype(dtype, copy=False) * scale)  # [B, H, Tq, D] (a product keeps q's memory order)
    qt = np.ascontiguousarray(qs.transpose(0, 1, 3, 2))  # [B, H, D, Tq]
    kc, vc, dc, lc = (np.ascontiguousarray(x, dtype=dtype) for x in (k, v, dout, lse))
    dt = np.ascontiguousarray(dc.transpose(0, 1, 3, 2))  # [B, H, D, Tq]
    delta = np.ascontiguousarray(np.einsum("bhtd,bhtd->bht", dc, out.astype(dtype, copy=False)))  # [B, H, Tq]
    workers = numba.get_num_threads()
    dq_parts = np.zeros((workers, *q.shape), dtype)  # [threads, B, H, Tq, D]
    _flash_backward_kernel(qs, qt, dc, dt, kc, vc, lc, delta, causal, window or 0, scale, block_q, block_kv,
                           dq_parts, dk, dv, np.zeros(1, np.int64), workers)
    dq = dq_parts[0] if len(dq_parts) == 1 else dq_parts.sum(axis=0)
    return dq, dk, dv


def flash_attention(q, k, v, causal=False, window=None, scale=None, block_q=None, block_kv=None):
    """Tiled attention; returns (out [B, H, Tq, D], lse [B, H, Tq]).

    q [B, H, Tq, D]; k, v [B, Hkv, Tk, D] with H % Hkv == 0 (grouped-query attention without
    repeating K/V); Tq <= Tk with the queries at the last Tq positions; `causal` masks keys
    after the query; `window` W keeps keys p - W < j <= p (and implies causal); `scale`
    defaults to D**-0.5; lse is the natural-log logsumexp of the scaled, masked scores.
    Memory is O(T) (tiles of `block_q` x `block_kv`, by default `flash_tile_sizes`), never
    O(Tq x Tk).
    """
    if jit_disabled():
        return flash_attention_ref(q, k, v, causal, window, scale, block_q, block_kv)
    return flash_attention_nb(q, k, v, causal, window, scale, block_q, block_kv)


def flash_attention_backward(q, k, v, out, lse, dout, causal=False, window=None, scale=None, block_q=None, block_kv=None):
    """Gradients (dq, dk, dv) of `flash_attention`, recomputing score tiles from `lse`.

    One pass: a task per key tile recomputes P once per (query tile, key tile) pair and
    accumulates dK, dV for its keys over every query head of its group (no write conflicts) and
    dQ into a per-thread buffer; the per-thread dQ buffers are summed at the end (so dQ's float
    rounding may differ in the last bits between runs with different scheduling).
    """
    if jit_disabled():
        return flash_attention_backward_ref(q, k, v, out, lse, dout, causal, window, scale, block_q, block_kv)
    return flash_attention_backward_nb(q, k, v, out, lse, dout, causal, window, scale, block_q, block_kv)


# --------------------------------------------------------------------------------------------
# query-blocked BLAS attention (no autograd): prefill and decoding
# --------------------------------------------------------------------------------------------
#
# Why a second forward kernel: with no backward to feed, attention is two matrix products and a
# softmax, and NumPy's BLAS does the products faster than the tiled Numba loops above (whose
# inner products are not BLAS). Blocking the queries keeps the score block [G, bq, keys] small
# and lets a causal or windowed block skip the keys none of its queries can see.

BLAS_QUERY_BLOCK = 64  # queries per score block (64 measured faster than 128)


def _validate_key_mask(key_mask, b, tk):
    if key_mask is None:
        return None
    key_mask = np.asarray(key_mask)
    if key_mask.dtype != np.bool_ or key_mask.shape != (b, tk):
        raise ValueError(f"key_mask must be bool [B={b}, Tk={tk}] (True = a real key), got {key_mask.dtype} {key_mask.shape}")
    return None if key_mask.all() else key_mask


def blas_attention_ref(q, k, v, causal=False, window=None, scale=None, key_mask=None, block_q=BLAS_QUERY_BLOCK):
    """Reference (the definition): softmax(scale q k^T masked by `visible_mask`) v -> [B, H, Tq, D].

    q [B, H, Tq, D]; k, v [B, Hkv, Tk, D] (GQA: query head h reads K/V head h // (H / Hkv));
    `key_mask` bool [B, Tk] (True = a real key). A row that sees no key gives zeros.
    `block_q` is validated and otherwise unused.
    """
    q, k, v, causal, window, scale = _validate(q, k, v, causal, window, scale, block_q, 1)
    b, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    key_mask = _validate_key_mask(key_mask, b, tk)
    dtype = result_float_dtype(q, k, v)
    qg = q.astype(dtype, copy=False).reshape(b, hkv, h // hkv, tq, d)  # [B, Hkv, G, Tq, D]
    s = np.einsum("bhgqd,bhkd->bhgqk", qg, k.astype(dtype, copy=False)) * dtype.type(scale)  # [B, Hkv, G, Tq, Tk]
    visible = visible_mask(tq, tk, causal, window, key_mask)  # [Tq, Tk] or [B, 1, Tq, Tk]
    visible = visible if key_mask is None else visible[:, :, None]  # [B, 1, 1, Tq, Tk]
    s = np.where(visible, s, -np.inf)
    m = np.maximum(s.max(axis=-1, keepdims=True, initial=-np.inf), np.finfo(dtype).min)  # finite for empty rows
    p = np.exp(s - m)
    denom = np.maximum(p.sum(axis=-1, keepdims=True), np.finfo(dtype).tiny)  # an empty row: 0 / tiny = 0
    out = np.einsum("bhgqk,bhkd->bhgqd", p / denom, v.astype(dtype, copy=False))  # [B, Hkv, G, Tq, D]
    return out.reshape(b, h, tq, d).astype(dtype, copy=False)


def _softmax_inplace(a):
    """Row softmax of `a` written into `a` (no temporary of a's size); an all -inf row gives zeros."""
    m = a.max(axis=-1, keepdims=True)
    np.maximum(m, np.finfo(a.dtype).min, out=m)
    a -= m
    np.exp(a, out=a)
    s = a.sum(axis=-1, keepdims=True)
    np.maximum(s, np.finfo(a.dtype).tiny, out=s)
    a /= s


def blas_attention(q, k, v, causal=False, window=None, scale=None, key_mask=None, block_q=BLAS_QUERY_BLOCK):
    """Attention without autograd, query-blocked over BLAS; same contract as `blas_attention_ref`.

    Per block of `block_q` queries and per K/V head: scores of its G query heads against the
    keys the block can see only (`visible_key_range`: a causal block skips the keys after its
    last query, a windowed one those before its first query's window), the `visible_mask` of
    that block added as -inf where some key is hidden, an in-place softmax, and P V written
    straight into the output. GQA reads each K/V head once for its G query heads (no repeat).
    The (block, head) pieces are independent: `workers.run_chunks` spreads them over the
    threads, each piece on single-threaded BLAS (many small sgemms woke OpenBLAS's thread pool
    once each, which stalled on a busy machine). Memory: one [G, block_q, keys] block per thread.
    """
    q, k, v, causal, window, scale = _validate(q, k, v, causal, window, scale, block_q, 1)
    b, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    key_mask = _validate_key_mask(key_mask, b, tk)
    dtype = result_float_dtype(q, k, v)
    g = h // hkv
    qg = q.astype(dtype, copy=False).reshape(b, hkv, g, tq, d)  # [B, Hkv, G, Tq, D]
    kt = k.astype(dtype, copy=False).transpose(0, 1, 3, 2)  # [B, Hkv, D, Tk]
    vv = v.astype(dtype, copy=False)  # [B, Hkv, Tk, D]
    out = np.empty((b, hkv, g, tq, d), dtype)
    block_q = int(block_q)
    blocks = range(0, tq, block_q)

    def attend(i0: int, rows: slice, heads: slice) -> None:  # one query block for some rows and K/V heads
        i1 = min(i0 + block_q, tq)
        first, last = tk - tq + i0, tk - tq + i1 - 1  # positions of the block's queries
        k0, k1 = visible_key_range(first, last, tk, causal, window)
        scores = np.matmul(qg[rows, heads, :, i0:i1], kt[rows, heads, None, :, k0:k1])  # [b', h', G, bq, keys]
        scores *= dtype.type(scale)
        block_mask = None if key_mask is None else key_mask[rows, k0:k1]  # [b', keys]
        if block_mask is not None and block_mask.all():
            block_mask = None
        masked_rows = (causal or window is not None) and i1 - i0 > 1  # one query sees all of [k0, k1)
        if masked_rows or block_mask is not None:
            if masked_rows:  # the block's rows of the one rule (k1 = last + 1 here)
                hidden = ~visible_mask(i1 - i0, k1 - k0, causal, window)  # [bq, keys]
            else:
                hidden = np.zeros((i1 - i0, k1 - k0), dtype=bool)
            if block_mask is not None:
                hidden = hidden | ~block_mask[:, None, :]  # [b', bq, keys]
                np.copyto(scores, -np.inf, where=hidden[:, None, None])
            else:
                cols = np.flatnonzero(hidden.any(axis=0))
                if cols.size:  # only the columns holding a hidden key
                    c0, c1 = cols[0], cols[-1] + 1
                    scores[..., c0:c1] += np.where(hidden[:, c0:c1], -np.inf, 0).astype(dtype)
        _softmax_inplace(scores)  # scores -> probabilities
        np.matmul(scores, vv[rows, heads, None, k0:k1], out=out[rows, heads, :, i0:i1])  # [b', h', G, bq, D]

    work = 2 * b * h * tq * tk * d  # multiply-adds of QK^T and PV
    if work < INLINE_WORK:  # e.g. a decode step: every row and head of a block in one batched call
        for i0 in blocks:
            attend(i0, slice(None), slice(None))
        return out.reshape(b, h, tq, d)

    def piece(n: int) -> None:  # query block n // (B Hkv), batch row and K/V head from n % (B Hkv)
        bi, hi = divmod(n % (b * hkv), hkv)
        attend(blocks[n // (b * hkv)], slice(bi, bi + 1), slice(hi, hi + 1))

    run_chunks(piece, len(blocks) * b * hkv)
    return out.reshape(b, h, tq, d)
