"""Kernels of the single-token decode step (batch 1): RMSNorm into a buffer, RoPE + cache write +
attention over the cache in one call, SiLU-gate, and a matvec resolved once per weight.

Glossary: ``H`` query heads, ``Hkv`` key/value heads (GQA group ``G = H / Hkv``), ``D`` head dim,
``L`` cache slots, ``R`` rotary channels (``<= D``, even), ``s`` the slot of the new token.

:func:`rope_attend` is the heart of it: the new query and key are rotated in place, the new key
and value are written into slot ``s`` of the layer's ``[Hkv, L, D]`` buffers (float32 or
float16), and each query head attends slots ``lo..s`` (``lo > 0`` for a sliding window). K and V
are each read once per step: the ``G`` query heads of a group share every key row they read.

Every kernel has a NumPy reference ``name_ref`` with the same signature; the public ``name``
dispatches to it under ``NUMBA_DISABLE_JIT=1``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from axon_kernels._jit import cached_on_disk, fast_exp, jit_disabled
from axon_kernels import quant

__all__ = ["rms_norm_into", "rms_norm_into_ref", "rope_attend", "rope_attend_ref", "silu_mul", "silu_mul_ref",
           "matvec_into", "ATTEND_PARALLEL_MIN", "compiled_on_disk", "warm_up"]

#: below this many key reads x head dims per step (slots x H x D), one thread attends all heads
ATTEND_PARALLEL_MIN = 1 << 16


# ------------------------------------------------------------------------------------------------
# References (NumPy)
# ------------------------------------------------------------------------------------------------

def rms_norm_into_ref(x: np.ndarray, w: np.ndarray, eps: float, out: np.ndarray) -> None:
    """``out[:] = x / sqrt(mean(x^2) + eps) * w`` for one vector ``x [d]`` (float32)."""
    ms = np.mean(x * x)
    out[:] = x * (np.float32(1.0) / np.sqrt(ms + np.float32(eps))) * w


def _rotate_ref(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> None:
    """``x[:, :R] = x cos + rotate_half(x) sin`` in place, ``x [heads, D]``."""
    r = cos.shape[0]
    half = r // 2
    xr = x[:, :r].copy()
    rot = np.concatenate([-xr[:, half:], xr[:, :half]], axis=1)               # rotate_half
    x[:, :r] = xr * cos + rot * sin


def rope_attend_ref(q, k, v, kc, vc, slot: int, lo: int, cos, sin, scale: float, out) -> None:
    """Rotate ``q [H, D]`` and ``k [Hkv, D]`` in place, write ``k, v`` into slot ``slot`` of
    ``kc, vc [Hkv, L, D]``, and ``out [H, D] = softmax(scale q K^T) V`` over slots ``lo..slot``."""
    _rotate_ref(q, cos, sin)
    _rotate_ref(k, cos, sin)
    kc[:, slot] = k
    vc[:, slot] = v
    h, hkv = q.shape[0], k.shape[0]
    keys = kc[:, lo:slot + 1].astype(np.float32)                               # [Hkv, n, D]
    vals = vc[:, lo:slot + 1].astype(np.float32)
    qg = q.reshape(hkv, h // hkv, q.shape[1])                                  # [Hkv, G, D]
    s = np.matmul(qg, keys.transpose(0, 2, 1)) * np.float32(scale)             # [Hkv, G, n]
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    s /= s.sum(axis=-1, keepdims=True)
    out[:] = np.matmul(s, vals).reshape(h, q.shape[1])                         # [Hkv, G, D] -> [H, D]


def silu_mul_ref(gate: np.ndarray, up: np.ndarray) -> None:
    """``gate[:] = silu(gate) * up`` in place (silu as ``a * 0.5 (1 + tanh(a / 2))``, as ``F.silu``)."""
    gate *= np.float32(0.5) * (np.float32(1.0) + np.tanh(gate * np.float32(0.5)))
    gate *= up


# ------------------------------------------------------------------------------------------------
# Numba kernels
# ------------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _rms_norm_into_nb(x, w, eps, out):
    ss = 0.0                                                                   # float64 sum of squares
    for i in range(x.shape[0]):
        ss += np.float64(x[i]) * np.float64(x[i])
    rstd = np.float32(1.0 / np.sqrt(np.float32(ss / x.shape[0]) + np.float32(eps)))
    for i in range(x.shape[0]):
        out[i] = x[i] * rstd * w[i]


@njit(cache=True, nogil=True)
def _rotate_nb(x, cos, sin):
    half = cos.shape[0] // 2
    for h in range(x.shape[0]):
        for i in range(half):
            a = x[h, i]
            b = x[h, i + half]
            x[h, i] = a * cos[i] - b * sin[i]
            x[h, i + half] = b * cos[i + half] + a * sin[i + half]


#: float16 bit pattern -> float32 value, exact (Numba has no float16 on the CPU: float16 caches are
#: read as their uint16 bits through this 256 KB table)
F16_TABLE = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
_NO_TABLE = np.zeros(1, np.float32)


def _load(row, i, table):
    """``row[i]`` as float32 (``row`` float32, or float16 bits as uint16 decoded by ``table``)."""
    return np.float32(table[row[i]]) if row.dtype == np.uint16 else np.float32(row[i])


@overload(_load)
def _load_overload(row, i, table):
    if row.dtype == types.uint16:
        return lambda row, i, table: table[row[i]]
    return lambda row, i, table: np.float32(row[i])


def _attend_group(q, kc, vc, slot, lo, scale, out, g, grp, table):
    """Query heads ``g*grp .. (g+1)*grp`` over slots ``lo..slot`` of kv head ``g``."""
    n = slot + 1 - lo
    d = q.shape[1]
    s = np.empty((grp, n), np.float32)
    for j in range(n):
        kr = kc[g, lo + j]
        for a in range(grp):
            qa = q[g * grp + a]
            acc = np.float32(0.0)
            for i in range(d):
                acc += qa[i] * _load(kr, i, table)
            s[a, j] = acc * scale
    for a in range(grp):
        m = s[a, 0]
        for j in range(1, n):
            m = max(m, s[a, j])
        tot = np.float32(0.0)
        for j in range(n):
            e = fast_exp(s[a, j] - m)
            s[a, j] = e
            tot += e
        inv = np.float32(1.0) / tot
        for j in range(n):
            s[a, j] *= inv
        o = out[g * grp + a]
        for i in range(d):
            o[i] = 0.0
    for j in range(n):
        vr = vc[g, lo + j]
        for a in range(grp):
            p = s[a, j]
            o = out[g * grp + a]
            for i in range(d):
                o[i] += p * _load(vr, i, table)


_attend_group_nb = njit(cache=True, nogil=True)(_attend_group)


def _rope_attend(q, k, v, kc, vc, slot, lo, cos, sin, scale, out, table, write):
    """``write``: rotate q/k and store k/v in slot ``slot`` here (float32 caches); otherwise
    the caller did both (float16 caches, stored by NumPy with IEEE rounding)."""
    hkv = k.shape[0]
    if write:
        _rotate_nb(q, cos, sin)
        _rotate_nb(k, cos, sin)
        for g in range(hkv):
            for i in range(k.shape[1]):
                kc[g, slot, i] = k[g, i]
                vc[g, slot, i] = v[g, i]
    grp = q.shape[0] // hkv
    sc = np.float32(scale)
    for g in prange(hkv):
        _attend_group_nb(q, kc, vc, slot, lo, sc, out, g, grp, table)


_rope_attend_nb = njit(cache=True, nogil=True, parallel=True)(_rope_attend)
_rope_attend_serial_nb = njit(cache=True, nogil=True)(_rope_attend)


@njit(cache=True, nogil=True)
def _silu_mul_nb(gate, up):
    for i in range(gate.shape[0]):
        a = gate[i]
        gate[i] = a * (np.float32(0.5) * (np.float32(1.0) + np.tanh(a * np.float32(0.5)))) * up[i]


# ------------------------------------------------------------------------------------------------
# Public entry points
# ------------------------------------------------------------------------------------------------

def rms_norm_into(x: np.ndarray, w: np.ndarray, eps: float, out: np.ndarray) -> None:
    """``out[:] = x / sqrt(mean(x^2) + eps) * w`` for float32 vectors ``x, w, out [d]``."""
    if jit_disabled():
        return rms_norm_into_ref(x, w, eps, out)
    _rms_norm_into_nb(x, w, eps, out)


def rope_attend(q, k, v, kc, vc, slot: int, lo: int, cos, sin, scale: float, out) -> None:
    """One query's RoPE, cache write and attention (see the module doc and :func:`rope_attend_ref`).

    ``q, out [H, D]``, ``k, v [Hkv, D]`` float32; ``kc, vc [Hkv, L, D]`` float32 or float16;
    ``cos, sin [R]`` float32 for this position; ``0 <= lo <= slot < L``.
    """
    if jit_disabled():
        return rope_attend_ref(q, k, v, kc, vc, slot, lo, cos, sin, scale, out)
    work = (slot + 1 - lo) * q.shape[0] * q.shape[1]
    kern = _rope_attend_nb if work >= ATTEND_PARALLEL_MIN and k.shape[0] > 1 else _rope_attend_serial_nb
    if kc.dtype == np.float16:
        _rotate_nb(q, cos, sin)
        _rotate_nb(k, cos, sin)
        kc[:, slot] = k                                                      # IEEE round to nearest
        vc[:, slot] = v
        kern(q, k, v, kc.view(np.uint16), vc.view(np.uint16), slot, lo, cos, sin, scale, out, F16_TABLE, False)
    else:
        kern(q, k, v, kc, vc, slot, lo, cos, sin, scale, out, _NO_TABLE, True)


def silu_mul(gate: np.ndarray, up: np.ndarray) -> None:
    """``gate[:] = silu(gate) * up`` in place (float32 vectors)."""
    if jit_disabled():
        return silu_mul_ref(gate, up)
    _silu_mul_nb(gate, up)


def matvec_into(weight):
    """``(f, padded_out)`` for a weight: ``f(x)`` writes ``W x`` into ``out`` (a float32 buffer of
    ``out_features`` rows, returned as the second item), resolving the kernel once.

    ``weight`` is a float32 ``[out, in]`` array (BLAS) or a :class:`axon_kernels.quant.QuantMatrix`
    (the fused matvec kernel ``quant_matvec`` dispatches to for its kind; ``quant_matvec`` itself
    under ``NUMBA_DISABLE_JIT=1``).
    """
    if isinstance(weight, np.ndarray):
        out = np.empty(weight.shape[0], np.float32)
        return (lambda x: np.dot(weight, x, out=out)), out
    w = weight
    rows = w.qs.shape[0] * quant.TILE_ROWS
    buf = np.empty(rows, np.float32)
    out = buf[:w.out_features]
    if not jit_disabled():
        kern = quant._kernel(f"matvec_{w.kind}", w.nbytes)     # what quant_matvec calls, for every kind
        arrays = quant._arrays(w)
        return (lambda x: kern(*arrays, x, buf)), out

    def generic(x):
        out[:] = quant.quant_matvec(w, x)

    return generic, out


# ------------------------------------------------------------------------------------------------
# First run: is the on-disk cache cold, and compiling before timing
# ------------------------------------------------------------------------------------------------

def compiled_on_disk() -> bool:
    """True when Numba's on-disk cache holds the decode kernels (False: the first run compiles
    them, which takes seconds). Under ``NUMBA_DISABLE_JIT=1`` nothing is compiled: True."""
    return cached_on_disk(_rms_norm_into_nb, _rope_attend_serial_nb, _silu_mul_nb)


def warm_up() -> None:
    """Compile (or load from the disk cache) the serial decode kernels for float32 vectors and a
    float32 cache: what the first decode steps of a short prompt call."""
    if jit_disabled():
        return
    q, k, v = np.zeros((2, 4), np.float32), np.zeros((1, 4), np.float32), np.zeros((1, 4), np.float32)
    kc, vc = np.zeros((1, 2, 4), np.float32), np.zeros((1, 2, 4), np.float32)
    cs = np.ones(4, np.float32)
    _rope_attend_serial_nb(q, k, v, kc, vc, 0, 0, cs, cs, 1.0, np.empty_like(q), _NO_TABLE, True)
    x = np.ones(4, np.float32)
    _rms_norm_into_nb(x, x, 1e-6, np.empty_like(x))
    _silu_mul_nb(x.copy(), x)
