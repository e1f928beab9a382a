"""float32 weights -> GGUF blocks: the quantisers used to write GGUF files (NumPy, vectorised over blocks).

`quantize(qtype, x)` takes ``x [..., in]`` (``in`` a multiple of the block size) and returns
uint8 ``[..., in / block * block bytes]``, the bytes `quant_formats.dequantize_ref` reads.

* F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 give exactly gguf-py's ``gguf.quants.quantize`` (the
  same float32 operations: ``d = max / -8``, ``q = trunc(x / d + 8.5)`` for Q4_0, round half
  away from zero for Q8_0, round to nearest even through the float32 bits for BF16; tested).
* Q4_K, Q5_K, Q6_K follow llama.cpp's reference quantisers (``quantize_row_q{4,5,6}_K_ref`` in
  ggml-quants.c, what ``llama-quantize`` uses without an importance matrix): per sub-block, a
  search over candidate scales that minimises the weighted error (``make_qkx2_quants`` for the
  scale + min types, ``make_qx_quants`` for Q6_K), then the sub-block scales are themselves
  quantised to 6 (8 for Q6_K) bits against one f16 super-block scale, and the values are
  re-rounded against the scales as stored. Here every step runs on all sub-blocks at once; the
  sums use NumPy's pairwise order instead of C's sequential one, so a near-tie between two
  candidate scales can rarely resolve differently (the result is equally valid).

Error bounds (derived in tests/kernels/test_quant_encode.py, checked on random data): rounding
to the nearest level of a grid with step d gives |w - x| <= d / 2 per weight, plus the f16
rounding of the scale; for the K-quants the sub-block scale is itself rounded, so the bound
there is one step of the stored sub-block grid.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit

from axon_kernels.quant_formats import BLOCK, k_scales

WRITE_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")
_F = np.float32


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    """float32 ``[n]`` -> f16 little-endian bytes ``[n, 2]`` (round to nearest even, like GGML)."""
    return np.ascontiguousarray(v.astype("<f2")).view(np.uint8).reshape(-1, 2)


def _f16_value(v: np.ndarray) -> np.ndarray:
    """float32 -> the float32 value of its f16 rounding (what a reader will see)."""
    return v.astype(np.float16).astype(np.float32)


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d == 0, _F(0), _F(1) / d).astype(np.float32)


def _nibble_bytes(q: np.ndarray) -> np.ndarray:
    """values 0..15 ``[n, 32]`` -> 16 bytes (weight j low nibble, weight j + 16 high nibble)."""
    q = q.astype(np.uint8)
    return q[:, :16] | (q[:, 16:] << 4)


def _qh_bytes(q: np.ndarray) -> np.ndarray:
    """Bit 4 of each of 32 values ``[n, 32]`` -> 4 bytes (bit i of the little-endian u32 = value i)."""
    return np.packbits((q >> 4).astype(np.uint8) & 1, axis=1, bitorder="little")


def _absmax_signed(b: np.ndarray) -> np.ndarray:
    """The value of largest magnitude in each row (the first one on ties), ``[n, 1]``."""
    return np.take_along_axis(b, np.abs(b).argmax(axis=1)[:, None], axis=1)


def _round_half_away(v: np.ndarray) -> np.ndarray:
    """Round to nearest, ties away from zero (GGML's roundf): rint, except that exact .5 ties move outwards."""
    t = np.trunc(v)
    return np.where(np.abs(v - t) == _F(0.5), t + np.sign(v), np.rint(v))   # v - t is exact


# ------------------------------------------------------------------------------------------------
# 32-weight blocks (gguf-py's arithmetic)
# ------------------------------------------------------------------------------------------------

def _q8_0(b):
    d = (np.abs(b).max(axis=1, keepdims=True) / _F(127)).astype(np.float32)
    q = _round_half_away(b * _inverse(d))
    return np.concatenate([_f16_bytes(d[:, 0]), q.astype(np.int8).view(np.uint8)], axis=1)


def _q4_0_q5_0(b, levels):
    """Symmetric: d = max / -(levels/2), q = trunc(x / d + levels/2 + 0.5) clipped to [0, levels)."""
    half = levels // 2
    d = (_absmax_signed(b) / _F(-half)).astype(np.float32)
    q = np.trunc(b * _inverse(d) + _F(half + 0.5)).astype(np.uint8).clip(0, levels - 1)
    parts = [_f16_bytes(d[:, 0])] + ([_qh_bytes(q)] if levels == 32 else []) + [_nibble_bytes(q & 15)]
    return np.concatenate(parts, axis=1)


def _q4_1_q5_1(b, levels):
    """Asymmetric: d = (max - min) / (levels - 1), m = min, q = trunc((x - m) / d + 0.5)."""
    lo = b.min(axis=1, keepdims=True)
    d = ((b.max(axis=1, keepdims=True) - lo) / _F(levels - 1)).astype(np.float32)
    q = np.trunc((b - lo) * _inverse(d) + _F(0.5)).astype(np.uint8).clip(0, levels - 1)
    parts = [_f16_bytes(d[:, 0]), _f16_bytes(lo[:, 0])] + ([_qh_bytes(q)] if levels == 32 else []) \
        + [_nibble_bytes(q & 15)]
    return np.concatenate(parts, axis=1)


# ------------------------------------------------------------------------------------------------
# K-quants (llama.cpp's reference quantisers)
# ------------------------------------------------------------------------------------------------

def _nearest(v: np.ndarray) -> np.ndarray:
    """llama.cpp's nearest_int: round half to even (it adds 1.5 * 2^23 in float32)."""
    return np.rint(v).astype(np.int32)


def _seq_sum(a: np.ndarray) -> np.ndarray:
    """Row sums of ``a [N, n]`` added left to right in float32, as C's loops do (not NumPy's pairwise order)."""
    s = a[:, 0].copy()
    for i in range(1, a.shape[1]):
        s += a[:, i]
    return s


def scale_min_search_ref(x, w, nmax: int, rmin: float, rdelta: float, nstep: int):
    """make_qkx2_quants (squared error) on every sub-block at once (NumPy; the definition).

    x, w ``[N, n]`` float32 -> (scale [N], min [N] >= 0, L [N, n] int32 in 0..nmax) such that
    ``x ~ scale * L - min``: start from the min/max grid, then try ``nstep + 1`` grids of
    ``nmax + rmin + rdelta * is`` steps over [min, max] (min: the best fit so far, as in C), fitting
    scale and min by weighted least squares for each, and keep the one with the smallest weighted
    squared error. Sums run left
    to right in float32, as in C, so :func:`scale_min_search` (Numba) gives the same bits."""
    x = np.ascontiguousarray(x, np.float32)
    w = np.ascontiguousarray(w, np.float32)
    mn = np.minimum(x.min(axis=1), _F(0))
    mx = x.max(axis=1)
    flat = mx == mn
    span = np.where(flat, _F(1), mx - mn)
    sum_w = _seq_sum(w)
    sum_x = _seq_sum(w * x)
    iscale = _F(nmax) / span
    scale = _F(1) / iscale
    L = np.clip(_nearest(iscale[:, None] * (x - mn[:, None])), 0, nmax)
    diff = scale[:, None] * L.astype(np.float32) + mn[:, None] - x
    best = _seq_sum(w * diff * diff)
    with np.errstate(divide="ignore", invalid="ignore"):
        for step in range(nstep + 1):            # C divides by (max - min) with min as updated so far
            span = np.where(flat, _F(1), mx - mn)
            iscale = (_F(rmin) + _F(rdelta) * _F(step) + _F(nmax)) / span
            la = np.clip(_nearest(iscale[:, None] * (x - mn[:, None])), 0, nmax).astype(np.float32)
            wl = w * la
            sum_l, sum_l2, sum_xl = _seq_sum(wl), _seq_sum(wl * la), _seq_sum(wl * x)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            this_min = np.where(pos, _F(0), this_min)
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
            diff = this_scale[:, None] * la + this_min[:, None] - x
            err = _seq_sum(w * diff * diff)
            better = (D > 0) & (err < best) & ~flat
            L = np.where(better[:, None], la.astype(np.int32), L)
            best = np.where(better, err, best)
            scale = np.where(better, this_scale, scale)
            mn = np.where(better, this_min, mn)
    L = np.where(flat[:, None], 0, L)
    return np.where(flat, _F(0), scale).astype(np.float32), (-mn).astype(np.float32), L.astype(np.int32)


@njit(cache=True, nogil=True)
def _scale_min_search_nb(x, w, nmax, rmin, rdelta, nstep, scale_out, min_out, L):
    """scale_min_search_ref, one sub-block at a time (the C loop; float32 throughout)."""
    n = x.shape[1]
    fmax = np.float32(nmax)
    la = np.empty(n, np.float32)
    for r in range(x.shape[0]):
        mn = x[r, 0]
        mx = x[r, 0]
        sum_w = w[r, 0]
        sum_x = w[r, 0] * x[r, 0]
        for i in range(1, n):
            mn = min(mn, x[r, i])
            mx = max(mx, x[r, i])
            sum_w += w[r, i]
            sum_x += w[r, i] * x[r, i]
        mn = min(mn, np.float32(0.0))
        if mx == mn:
            for i in range(n):
                L[r, i] = 0
            scale_out[r] = 0.0
            min_out[r] = -mn
            continue
        span = mx - mn
        iscale = fmax / span
        scale = np.float32(1.0) / iscale
        best = np.float32(0.0)
        for i in range(n):
            li = min(max(np.rint(iscale * (x[r, i] - mn)), np.float32(0.0)), fmax)
            L[r, i] = np.int32(li)
            diff = scale * li + mn - x[r, i]
            best += w[r, i] * diff * diff
        for step in range(nstep + 1):
            iscale = (rmin + rdelta * np.float32(step) + fmax) / (mx - mn)     # min as updated so far
            sum_l = np.float32(0.0)
            sum_l2 = np.float32(0.0)
            sum_xl = np.float32(0.0)
            for i in range(n):
                li = min(max(np.rint(iscale * (x[r, i] - mn)), np.float32(0.0)), fmax)
                la[i] = li
                wl = w[r, i] * li
                sum_l += wl
                sum_l2 += wl * li
                sum_xl += wl * x[r, i]
            D = sum_w * sum_l2 - sum_l * sum_l
            if D > 0:
                this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
                this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
                if this_min > 0:
                    this_min = np.float32(0.0)
                    this_scale = sum_xl / sum_l2
                err = np.float32(0.0)
                for i in range(n):
                    diff = this_scale * la[i] + this_min - x[r, i]
                    err += w[r, i] * diff * diff
                if err < best:
                    for i in range(n):
                        L[r, i] = np.int32(la[i])
                    best = err
                    scale = this_scale
                    mn = this_min
        scale_out[r] = scale
        min_out[r] = -mn


def scale_min_search(x, w, nmax: int, rmin: float, rdelta: float, nstep: int):
    """:func:`scale_min_search_ref` compiled (Numba; ~25x faster); the reference when the JIT is off."""
    if numba.config.DISABLE_JIT:
        return scale_min_search_ref(x, w, nmax, rmin, rdelta, nstep)
    x = np.ascontiguousarray(x, np.float32)
    w = np.ascontiguousarray(w, np.float32)
    scale = np.empty(x.shape[0], np.float32)
    the_min = np.empty(x.shape[0], np.float32)
    L = np.empty(x.shape, np.int32)
    _scale_min_search_nb(x, w, int(nmax), _F(rmin), _F(rdelta), int(nstep), scale, the_min, L)
    return scale, the_min, L


def _pack_k_scales(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Six-bit scales and mins ``[n, 8]`` -> Q4_K/Q5_K's 12 bytes (inverse of quant_formats.k_scales)."""
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)
    s = np.zeros((ls.shape[0], 12), np.uint8)
    s[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    s[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    s[:, 8:12] = (ls[:, 4:] & 0x0F) | ((lm[:, 4:] & 0x0F) << 4)
    return s


def _k_scale_min(x, nmax, rmin, rdelta, nstep):
    """Q4_K / Q5_K without the bit packing: super-blocks ``x [n, 256]`` -> (d, dmin f16 bytes,
    12 scale bytes, L [n, 8, 32] in 0..nmax)."""
    n = x.shape[0]
    sub = x.reshape(n * 8, 32)
    av = np.sqrt(_seq_sum(sub * sub) / _F(32))
    w = av[:, None] + np.abs(sub)
    scales, mins, L = scale_min_search(sub, w, nmax, rmin, rdelta, nstep)
    scales, mins = scales.reshape(n, 8), mins.reshape(n, 8)
    max_scale = np.maximum(scales.max(axis=1), _F(0))
    max_min = np.maximum(mins.max(axis=1), _F(0))
    inv_s = np.where(max_scale > 0, _F(63) / np.where(max_scale > 0, max_scale, _F(1)), _F(0))
    inv_m = np.where(max_min > 0, _F(63) / np.where(max_min > 0, max_min, _F(1)), _F(0))
    ls = np.minimum(_nearest(inv_s[:, None] * scales) & 0xFF, 63)     # C stores the int in a uint8 first
    lm = np.minimum(_nearest(inv_m[:, None] * mins) & 0xFF, 63)
    d, dmin = (max_scale / _F(63)).astype(np.float32), (max_min / _F(63)).astype(np.float32)
    sc_bytes = _pack_k_scales(ls, lm)
    sc, mn = k_scales(sc_bytes)                                          # as stored
    dq = _f16_value(d)[:, None] * sc.astype(np.float32)                  # [n, 8]
    dm = _f16_value(dmin)[:, None] * mn.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        again = np.clip(_nearest((x.reshape(n, 8, 32) + dm[:, :, None]) / dq[:, :, None]), 0, nmax)
    L = np.where((dq != 0)[:, :, None], again, L.reshape(n, 8, 32))    # a zero scale keeps the search's L
    return _f16_bytes(d), _f16_bytes(dmin), sc_bytes, L.astype(np.uint8)


def _q4_k(x):
    d, dmin, sc, L = _k_scale_min(x, 15, -1.0, 0.1, 20)
    qs = (L[:, 0::2] | (L[:, 1::2] << 4)).reshape(-1, 128)             # chunk c: sub-blocks 2c (lo), 2c+1 (hi)
    return np.concatenate([d, dmin, sc, qs], axis=1)


def _q5_k(x):
    d, dmin, sc, L = _k_scale_min(x, 31, -0.5, 0.1, 15)
    qh = np.zeros((x.shape[0], 32), np.uint8)
    for s in range(8):                                                   # bit s of qh[l]: fifth bit of sub-block s
        qh |= ((L[:, s] >> 4) & 1) << s
    low = L & 15
    qs = (low[:, 0::2] | (low[:, 1::2] << 4)).reshape(-1, 128)
    return np.concatenate([d, dmin, sc, qh, qs], axis=1)


def _signed_scale_search(x, nmax):
    """make_qx_quants with x^2 weights (Q6_K): x ``[N, 16]`` -> (scale [N], L [N, 16] in 0..2 nmax - 1).

    Start from the grid through the largest-magnitude value, then try 18 nearby grids and keep
    the one maximising (sum w x l)^2 / sum w l^2, i.e. the smallest weighted squared error."""
    big = _absmax_signed(x)[:, 0]
    zero = np.abs(big) < _F(1e-15)
    big = np.where(zero, _F(1), big)
    w = x * x

    def fit(iscale):
        l = np.clip(_nearest(iscale[:, None] * x), -nmax, nmax - 1).astype(np.float32)
        return l, _seq_sum(w * x * l), _seq_sum(w * l * l)               # left to right, as in C

    with np.errstate(divide="ignore", invalid="ignore"):
        L, sumlx, suml2 = fit(_F(-nmax) / big)
        scale = np.where(suml2 != 0, sumlx / suml2, _F(0))
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            l, sumlx, suml2 = fit(-(_F(nmax) + _F(0.1) * _F(step)) / big)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            L = np.where(better[:, None], l, L)
            scale = np.where(better, sumlx / suml2, scale)
            best = np.where(better, scale * sumlx, best)
    return np.where(zero, _F(0), scale).astype(np.float32), np.where(zero[:, None], 0, L.astype(np.int32) + nmax)


def _q6_k(x):
    n = x.shape[0]
    scales, L = _signed_scale_search(x.reshape(n * 16, 16), 32)
    scales, L = scales.reshape(n, 16), L.reshape(n, 16, 16)
    pick = np.abs(scales).argmax(axis=1)[:, None]
    max_scale = np.take_along_axis(scales, pick, axis=1)[:, 0]
    empty = np.abs(max_scale) < _F(1e-15)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(empty, _F(0), _F(-128) / np.where(empty, _F(1), max_scale))
        d = np.where(empty, _F(0), _F(1) / iscale).astype(np.float32)
        sc = np.minimum(_nearest(iscale[:, None] * scales), 127).astype(np.int8)
        sc = np.where(empty[:, None], np.int8(0), sc)
        dq = _f16_value(d)[:, None] * sc.astype(np.float32)             # [n, 16]
        again = np.clip(_nearest(x.reshape(n, 16, 16) / dq[:, :, None]), -32, 31) + 32
    L = np.where((dq != 0)[:, :, None], again, L)
    L = np.where(empty[:, None, None], 0, L).astype(np.uint8).reshape(n, 2, 4, 32)   # [n, h, k, l]
    ql = np.concatenate([(L[:, :, 0] & 15) | ((L[:, :, 2] & 15) << 4),
                         (L[:, :, 1] & 15) | ((L[:, :, 3] & 15) << 4)], axis=2).reshape(n, 128)
    qh = ((L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4) | ((L[:, :, 3] >> 4) << 6))
    return np.concatenate([ql, qh.reshape(n, 64), sc.view(np.uint8), _f16_bytes(d)], axis=1)


# ------------------------------------------------------------------------------------------------

def _bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bytes: round to nearest even on the bits; NaN stays a (quiet) NaN."""
    n = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    nan = (n & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    n = np.where(nan, (n & np.uint32(0xFFFF0000)) | np.uint32(0x00400000), n)
    r = (n.astype(np.uint64) + (np.uint64(0x7FFF) + ((n >> np.uint32(16)) & np.uint32(1)))) >> np.uint64(16)
    return r.astype("<u2").view(np.uint8)


_BLOCK_QUANTISERS = {
    "Q8_0": _q8_0, "Q4_0": lambda b: _q4_0_q5_0(b, 16), "Q5_0": lambda b: _q4_0_q5_0(b, 32),
    "Q4_1": lambda b: _q4_1_q5_1(b, 16), "Q5_1": lambda b: _q4_1_q5_1(b, 32),
    "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k,
}


def quantize(qtype: str, x: np.ndarray, chunk_blocks: int = 1 << 16) -> np.ndarray:
    """float weights ``x [..., in]`` -> GGUF bytes of type ``qtype``: uint8 ``[..., row bytes]``
    (F32/F16 as their little-endian bytes). Blocks are quantised ``chunk_blocks`` at a time to
    bound temporary memory."""
    x = np.asarray(x)
    if qtype not in WRITE_TYPES:
        raise ValueError(f"cannot quantise to {qtype!r}; writable types: {', '.join(WRITE_TYPES)}")
    if x.ndim == 0 or x.size == 0:
        raise ValueError(f"quantize needs a non-empty array with a last axis, got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    lead = x.shape[:-1]
    if qtype == "F32":
        return x.view(np.uint8).reshape(lead + (-1,))
    if qtype == "F16":
        return np.ascontiguousarray(x.astype("<f2")).view(np.uint8).reshape(lead + (-1,))
    if qtype == "BF16":
        return _bf16(x).reshape(lead + (-1,))
    elems, nbytes = BLOCK[qtype]
    if x.shape[-1] % elems:
        raise ValueError(f"{qtype}: the last dimension {x.shape[-1]} is not a multiple of the block size {elems}")
    blocks = x.reshape(-1, elems)
    out = np.empty((blocks.shape[0], nbytes), np.uint8)
    fn = _BLOCK_QUANTISERS[qtype]
    for s in range(0, blocks.shape[0], chunk_blocks):
        out[s:s + chunk_blocks] = fn(blocks[s:s + chunk_blocks])
    return out.reshape(lead + (x.shape[-1] // elems * nbytes,))


__all__ = ["WRITE_TYPES", "quantize", "scale_min_search", "scale_min_search_ref"]
