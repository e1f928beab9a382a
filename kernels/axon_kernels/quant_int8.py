"""Prefill of 4-bit weights with integer dot products: activations quantised to int8 per block,
``vpdpbusd`` (AVX512-VNNI) on the weights' nibbles, int32 sums per block, scaled in float.

This is llama.cpp's Q4_1 x Q8_1 product, on the packed ``q4`` layout of `axon_kernels.quant`
(Q4_0, Q4_1, Q4_K: every group of 32 weights is ``w = s q + m`` with ``q`` in 0..15).

Math (one output ``y[t, r]``, groups g of 32 inputs)::

    activations:  d[t,g] = max_k |x[t,k]| / 127,  a[t,k] = rint(x[t,k] * (1 / d[t,g]))  in -127..127  (int8)
                  sa[t,g] = d[t,g] * sum_k a[t,k]
    y[t, r] = sum_g  float(sum_k q[r,k] a[t,k]) * (s[r,g] d[t,g])  +  m[r,g] sa[t,g]
                     `---- int32, exact ----'

so the only approximation against the float path (:func:`axon_kernels.quant.quant_matmul_ref`)
is rounding x to ``d a``: ``|x - d a| <= d / 2`` per input, hence per output
``|y_int8 - y_float| <= sum_g d[t,g] / 2 * sum_{k in g} |w[r,k]|`` plus float rounding
(:func:`error_bound`). A block holding NaN or Inf gets ``d = NaN``, so the outputs it touches
are NaN, as in the float path.

Why it pays: one ``vpdpbusd`` does 64 byte multiply-adds, where an fp32 FMA does 16; prefill is
compute-bound (the float path is dequantise + sgemm). `benchmarks/bench_quant.py --int8` measures it.

The kernel (:func:`_matmul_q4_vnni`) takes 16 weight rows at a time: it first regroups their
nibbles so that each 32-bit lane holds 4 consecutive inputs of one row (``_gather_rows``: 256
bytes per group, L1-resident), then for 4 tokens at a time and each group: 4 loads of 64 bytes,
each split into low and high nibbles (inputs ``32g + 4i .. +3`` and ``32g + 16 + 4i .. +3``),
each multiplied with 4 broadcast activation bytes of each token (``dpbusd``). Written with the
vector types of `axon_kernels.vnni`. The reference is :func:`quant_matmul_int8_ref` (NumPy: the
same integer sums and float32 operations in the same order; the kernel fuses its multiply-adds,
so the two agree to float rounding).

`axon_llm.quantized.QuantizedLinear` takes this path for sequences of at least MIN_TOKENS tokens
(`use_for` says why not fewer); `axon_kernels.quant.quant_matmul` stays the float path.
`enabled` switches it off (``with enabled(False):``, or ``AXON_INT8_PREFILL=0``):
tests that compare a long prompt's logits with transformers' within float tolerances select the
float path.
"""

from __future__ import annotations

import contextlib
import os
import threading

import numpy as np
from numba import njit

from axon_kernels import vnni, workers
from axon_kernels._jit import jit_disabled
from axon_kernels.vnni import (dpbusd, f32x16_zero, high_nibbles, i32x16_zero, load_interleaved4, load_u8x64, low_nibbles, madd,
                               madd_int, store)

__all__ = ["MIN_TOKENS", "enabled", "is_enabled", "supported", "use_for", "quantize_activations", "quantize_activations_ref",
           "quant_matmul_int8", "quant_matmul_int8_ref", "error_bound"]

GROUP = 32        # inputs per activation block (= the q4 weight group)
ROWS = 16         # weight rows per vector (int32 lanes of a zmm register)
TOKENS = 4        # tokens per register block: each weight vector loaded once, used 4 times
TINY = np.float32(2.0 ** -100)   # a block with max |x| below this quantises to zeros (d = 0)
MIN_TOKENS = 128  # prompts shorter than this keep the float path (see `use_for`)

_state = threading.local()


def is_enabled() -> bool:
    """Whether prefill may take the int8 path (``AXON_INT8_PREFILL=0`` or ``enabled(False)`` say no)."""
    flag = getattr(_state, "on", None)
    if flag is None:
        return os.environ.get("AXON_INT8_PREFILL", "1") != "0"
    return flag


@contextlib.contextmanager
def enabled(on: bool):
    """Context manager: within it (on this thread), the int8 prefill path is allowed (``True``) or
    not (``False``, the float path: dequantise + sgemm)."""
    old = getattr(_state, "on", None)
    _state.on = bool(on)
    try:
        yield
    finally:
        _state.on = old


_HOST_VNNI = vnni.available()


def use_for(w, ntok: int) -> bool:
    """Whether a layer takes the int8 path (`axon_llm.quantized.QuantizedLinear`) for sequences of
    ``ntok`` tokens through ``w``: switched on (:func:`is_enabled`), :func:`supported`, and at least
    MIN_TOKENS tokens per sequence (not rows: a decode step of many sequences has one token each).

    Why a minimum. Rounding activations to 8 bits moves SmolLM2's logits by up to ~1.5 (of ~25;
    each product stays within :func:`error_bound`), and the roundings of one layer feed the next,
    so it is noise of that size, not a bias. That flips near-ties: the README's chat prompt
    (37 tokens) has its first token ahead by 0.08 logits and answered "L'Étoile..." instead of
    "The capital of France is Paris." (llama.cpp, which always quantises, answers "L'Étoile"
    too). So chat-length prompts keep the float path (logits equal
    transformers' to float rounding, greedy outputs token-identical on the fixtures, whose
    prompts have at most 67 tokens), and long prompts, whose prefill time counts, take int8 as
    llama.cpp does for every prompt."""
    return ntok >= MIN_TOKENS and is_enabled() and supported(w)


def supported(w) -> bool:
    """True when :func:`quant_matmul_int8` runs fast for the packed matrix ``w``: a ``q4`` kind, whole
    groups of 32, and a CPU with AVX512-VNNI (elsewhere the float path is faster than the reference)."""
    return _HOST_VNNI and w.kind == "q4" and w.group == GROUP and w.offset is not None


# ------------------------------------------------------------------------------------------------
# Activations -> int8 per block of 32
# ------------------------------------------------------------------------------------------------

def quantize_activations_ref(x: np.ndarray, ntok: int):
    """x float32 [T, in] -> (a int8 [ntok, in], d float32 [ntok, G], sa float32 [ntok, G]);
    rows past T (padding to ``ntok``) are zero. See the module doc for the math."""
    t, cols = x.shape
    groups = cols // GROUP
    xb = x.reshape(t, groups, GROUP)                                            # [T, G, 32]
    finite = np.isfinite(xb).all(axis=2)                                        # [T, G]
    xz = np.where(finite[:, :, None], xb, np.float32(0.0))
    amax = np.abs(xz).max(axis=2)
    d = np.where(amax < TINY, np.float32(0.0), amax / np.float32(127.0)).astype(np.float32)
    inv = (np.float32(1.0) / np.where(d > 0, d, np.float32(1.0))).astype(np.float32)
    inv[d == 0] = 0
    q = np.rint(xz * inv[:, :, None]).astype(np.int32)                         # [T, G, 32], |q| <= 127
    d = np.where(finite, d, np.float32(np.nan)).astype(np.float32)
    a = np.zeros((ntok, cols), np.int8)
    dd = np.zeros((ntok, groups), np.float32)
    sa = np.zeros((ntok, groups), np.float32)
    a[:t] = q.reshape(t, cols)
    dd[:t] = d
    with np.errstate(over="ignore"):                                            # d near float32's max: Inf, as the kernel
        sa[:t] = q.sum(axis=2).astype(np.float32) * d
    return a, dd, sa


_ROUND = np.float32(1.5 * 2.0 ** 23)   # (v + _ROUND) - _ROUND is rint(v) for |v| < 2**22 (float32 addition rounds to even)


@njit(cache=True, nogil=True)
def _quantize_nb(x, a, d, sa):
    """:func:`quantize_activations_ref` into a [ntok, in], d and sa [ntok, G] (zeroed by the caller).

    Loops that vectorise: max |x| per block as the integer max of the bits ``x & 0x7fffffff``
    (for floats of one sign the bit order is the value order; any bits >= 0x7f800000 are an
    Inf or NaN), and rint as the float32 ``(v + _ROUND) - _ROUND``."""
    t, cols = x.shape
    groups = cols // 32
    bits = x.view(np.int32)
    top = np.empty(groups, np.int32)                       # bits of max |x| per block of one token
    amax = top.view(np.float32)
    for i in range(t):                                     # both passes over one token's row (in L1)
        for g in range(groups):
            m = np.int32(0)
            for k in range(g * 32, g * 32 + 32):
                m = max(m, bits[i, k] & np.int32(0x7FFFFFFF))
            top[g] = m
        for g in range(groups):
            if top[g] >= np.int32(0x7F800000):              # an Inf or NaN in the block
                d[i, g] = np.float32(np.nan)
                sa[i, g] = np.float32(np.nan)
                continue
            dg = amax[g] / np.float32(127.0)
            if amax[g] < TINY:                             # 127 / max would overflow: a block of zeros
                dg = np.float32(0.0)
            inv = np.float32(1.0) / dg if dg > 0 else np.float32(0.0)
            s = 0
            for k in range(g * 32, g * 32 + 32):
                q = np.int32((x[i, k] * inv + _ROUND) - _ROUND)
                a[i, k] = q
                s += q
            d[i, g] = dg
            sa[i, g] = np.float32(s) * dg


def quantize_activations(x: np.ndarray, ntok: int):
    """Numba :func:`quantize_activations_ref` (same outputs, bit for bit)."""
    if jit_disabled():
        return quantize_activations_ref(x, ntok)
    groups = x.shape[1] // GROUP
    a = np.zeros((ntok, x.shape[1]), np.int8)
    d = np.zeros((ntok, groups), np.float32)
    sa = np.zeros((ntok, groups), np.float32)
    _quantize_nb(x, a, d, sa)
    return a, d, sa


_scratch = threading.local()


def _quantize_scratch(x: np.ndarray, ntok: int):
    """:func:`quantize_activations` into buffers this thread reuses across calls (fresh ones cost
    page faults: more than the quantisation itself at 500 x 576). Valid until the next call."""
    t, cols = x.shape
    groups = cols // GROUP
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf[0].size < ntok * cols or buf[1].size < ntok * groups:
        buf = (np.empty(ntok * cols, np.int8), np.empty(ntok * groups, np.float32), np.empty(ntok * groups, np.float32))
        _scratch.buf = buf
    a = buf[0][:ntok * cols].reshape(ntok, cols)
    d = buf[1][:ntok * groups].reshape(ntok, groups)
    sa = buf[2][:ntok * groups].reshape(ntok, groups)
    a[t:] = 0                                                 # padding tokens
    d[t:] = 0
    sa[t:] = 0
    _quantize_nb(x, a[:t], d[:t], sa[:t])
    return a, d, sa


# ------------------------------------------------------------------------------------------------
# The product
# ------------------------------------------------------------------------------------------------

def quant_matmul_int8_ref(w, x: np.ndarray) -> np.ndarray:
    """y = x @ W.T with x quantised to int8 per block: W packed ``q4`` [out, in], x float32
    [T, in] -> float32 [T, out] (NumPy; integer sums exact, float32 scaling in the kernel's order)."""
    t, cols = x.shape
    tiles, groups = w.qs.shape[0], w.qs.shape[1]
    a, d, sa = quantize_activations_ref(x, t)
    q = np.concatenate([w.qs & 0x0F, w.qs >> 4], axis=2)                       # [tiles, G, 32, R] uint8 0..15
    q = q.transpose(1, 2, 0, 3).reshape(groups, GROUP, -1).astype(np.float64)  # [G, 32, out_pad]
    scale = w.scale.transpose(1, 0, 2).reshape(groups, -1)                     # [G, out_pad]
    offset = w.offset.transpose(1, 0, 2).reshape(groups, -1)
    ab = a.reshape(t, groups, GROUP).astype(np.float64)                        # [T, G, 32]
    y = np.zeros((t, tiles * w.qs.shape[3]), np.float32)
    for g in range(groups):
        isum = ab[:, g] @ q[g]          # [T, 32] @ [32, out_pad]: integers below 2**16, exact in float64
        y = y + isum.astype(np.float32) * (scale[g][None, :] * d[:, g][:, None])
        y = y + offset[g][None, :] * sa[:, g][:, None]
    return np.ascontiguousarray(y[:, :w.out_features])


@njit(cache=True, nogil=True)
def _gather_rows(qs, rt, buf):
    """Rows ``16 rt .. 16 rt + 15`` of the packed q4 bytes ``qs [tiles, G, 16, 64]`` into ``buf``
    flat ``[G, 4, 16, 4]``: element ``[g, i, r, c]`` is byte ``4i + c`` of group g of row r (low nibble
    input ``32g + 4i + c``, high nibble ``32g + 16 + 4i + c``), so a 32-bit lane holds 4 inputs of one row.
    (:func:`_gather_rows_ref` is the same in plain loops.)"""
    groups = qs.shape[1]
    tile, sub = rt // 4, (rt % 4) * 16
    qf = qs.reshape(-1)
    for g in range(groups):
        for i in range(4):
            src = ((tile * groups + g) * 16 + 4 * i) * 64 + sub         # qs[tile, g, 4i, sub]
            store(buf, (g * 4 + i) * 64, load_interleaved4(qf, src, 64))


def _gather_rows_ref(qs, rt, buf):
    """:func:`_gather_rows` in plain loops (NumPy)."""
    groups = qs.shape[1]
    tile, sub = rt // 4, (rt % 4) * 16
    block = qs[tile, :, :, sub:sub + 16].reshape(groups, 4, 4, 16)                # [G, i, c, r]
    buf[:groups * 256] = block.transpose(0, 1, 3, 2).reshape(-1)                  # -> [G, i, r, c]


@njit(cache=True, nogil=True)
def _matmul_q4_vnni(qs, scale, offset, a, d, sa, rt0, rt1, y):
    """y[t, 16 rt .. +16] for row groups rt in [rt0, rt1) and every token (a, d, sa from
    :func:`quantize_activations` with a token count divisible by 4; y float32 [ntok, out16] with
    out16 >= 16 rt1). Flat views: scale / offset [tiles*G*64] (16 rows of group g of row group rt
    start at ``(tile*G + g)*64 + sub``), a [ntok*in] int8, y [ntok*out16]."""
    groups = qs.shape[1]
    ntok, cols = a.shape
    out_pad = y.shape[1]
    af = a.reshape(-1)
    sf = scale.reshape(-1)
    of = offset.reshape(-1)
    yf = y.reshape(-1)
    buf = np.empty(groups * 256, np.uint8)
    for rt in range(rt0, rt1):
        _gather_rows(qs, rt, buf)
        wrow = (rt // 4) * groups * 64 + (rt % 4) * 16          # scale index of group 0 of these rows
        for t in range(0, ntok, 4):
            y0 = f32x16_zero()
            y1 = f32x16_zero()
            y2 = f32x16_zero()
            y3 = f32x16_zero()
            for g in range(groups):
                s0 = i32x16_zero()
                s1 = i32x16_zero()
                s2 = i32x16_zero()
                s3 = i32x16_zero()
                k0 = t * cols + g * 32                           # token t's first input of group g
                for i in range(4):
                    v = load_u8x64(buf, (g * 4 + i) * 64)
                    lo = low_nibbles(v)                          # inputs 32g + 4i .. +3 of 16 rows
                    hi = high_nibbles(v)                         # inputs 32g + 16 + 4i .. +3
                    s0 = dpbusd(dpbusd(s0, lo, af, k0 + 4 * i), hi, af, k0 + 16 + 4 * i)
                    s1 = dpbusd(dpbusd(s1, lo, af, k0 + cols + 4 * i), hi, af, k0 + cols + 16 + 4 * i)
                    s2 = dpbusd(dpbusd(s2, lo, af, k0 + 2 * cols + 4 * i), hi, af, k0 + 2 * cols + 16 + 4 * i)
                    s3 = dpbusd(dpbusd(s3, lo, af, k0 + 3 * cols + 4 * i), hi, af, k0 + 3 * cols + 16 + 4 * i)
                w = wrow + g * 64
                y0 = madd(madd_int(y0, s0, sf, w, d[t, g]), of, w, sa[t, g])
                y1 = madd(madd_int(y1, s1, sf, w, d[t + 1, g]), of, w, sa[t + 1, g])
                y2 = madd(madd_int(y2, s2, sf, w, d[t + 2, g]), of, w, sa[t + 2, g])
                y3 = madd(madd_int(y3, s3, sf, w, d[t + 3, g]), of, w, sa[t + 3, g])
            store(yf, t * out_pad + rt * 16, y0)
            store(yf, (t + 1) * out_pad + rt * 16, y1)
            store(yf, (t + 2) * out_pad + rt * 16, y2)
            store(yf, (t + 3) * out_pad + rt * 16, y3)


def quant_matmul_int8(w, x: np.ndarray) -> np.ndarray:
    """Numba + VNNI :func:`quant_matmul_int8_ref` (equal to float rounding), row groups spread over the
    threads of `axon_kernels.workers.run_chunks`. ``w`` must satisfy :func:`supported` (else, or
    under ``NUMBA_DISABLE_JIT=1``, the reference runs)."""
    if w.kind != "q4" or w.group != GROUP or w.offset is None:
        raise ValueError(f"quant_matmul_int8: 4-bit weights in groups of 32 only (q4 kind), got {w.qtype}")
    if jit_disabled() or not supported(w):
        return quant_matmul_int8_ref(w, x)
    t = x.shape[0]
    ntok = -(-t // TOKENS) * TOKENS
    a, d, sa = _quantize_scratch(x, ntok)                                       # [ntok, in] int8, [ntok, G] x2
    groups16 = -(-w.out_features // ROWS)                                        # row groups of 16
    y = np.empty((ntok, groups16 * ROWS), np.float32)                           # [ntok, out16]
    parts = min(groups16, 4 * workers.threads())
    edges = [groups16 * i // parts for i in range(parts + 1)]

    def chunk(i: int) -> None:
        _matmul_q4_vnni(w.qs, w.scale, w.offset, a, d, sa, edges[i], edges[i + 1], y)

    workers.run_chunks(chunk, parts)
    if ntok == t and y.shape[1] == w.out_features:
        return y
    return np.ascontiguousarray(y[:t, :w.out_features])


def error_bound(dense: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bound on ``|quant_matmul_int8_ref(w, x) - quant_matmul_ref(w, x)|`` per output [T, out] from
    rounding x to int8 (``|x - d a| <= d/2``): ``sum_g d[t,g]/2 * sum_{k in g} |W[r,k]|``, with
    ``dense`` = W dequantised [out, in] (`axon_kernels.quant.unpack_ref`). The float rounding of
    either side, and blocks below TINY (rounded to zero), are the caller's to add."""
    t, cols = x.shape
    groups = cols // GROUP
    _, d, _ = quantize_activations_ref(x, t)
    wabs = np.abs(dense.astype(np.float64)).reshape(dense.shape[0], groups, GROUP).sum(axis=2)  # [out, G]
    return 0.5 * d.astype(np.float64) @ wabs.T                                 # [T, G] @ [G, out]
