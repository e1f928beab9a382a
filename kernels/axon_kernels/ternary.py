"""BitNet b1.58 ternary weights: absmean quantisation, 2-bit packing, int8 x ternary matmul.

Formulas (../docs/kernels.md, BitNet b1.58; `round` is half-to-even like np.round / torch.round),
all in float32:

    weights      s = 1 / max(mean|W|, 1e-5)                 one scale per tensor
                 t = clip(round(W s), -1, 1)                 ternary codes, W ~ t / s
    activations  a = 127 / max(max|x|, 1e-5)                 one scale per token (last axis),
                                                             evaluated as 127 * (1 / m) like torch
                 q = clip(round(x a), -128, 127)             int8, x ~ q / a
    output       y = (q @ t^T) / (a s)                       integer accumulation, one rescale

which equals act_quant(x) @ weight_quant(W)^T with act_quant(x) = q / a, weight_quant(W) = t / s.

Packing (`ternary_pack`): W [out, in] -> uint8 [out, G] with G = ceil(in / 4). Byte j of row o
holds the codes t + 1 in {0, 1, 2} of the four columns j, j + G, j + 2G, j + 3G in bits 0-1,
2-3, 4-5, 6-7 (columns >= in are padding with code 1, i.e. weight 0). Splitting each row into
four contiguous quarters, rather than four neighbouring columns a byte, lets the kernel's inner
loop read four contiguous slices of the activations and vectorise.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._jit import jit_disabled

__all__ = [
    "ternary_quantize",
    "ternary_quantize_ref",
    "ternary_codes",
    "ternary_pack",
    "ternary_unpack",
    "quantize_activations",
    "ternary_matmul",
    "ternary_matmul_ref",
    "ternary_matmul_nb",
]

_ROWS = 64  # output rows per Numba task (their packed bytes stay in L2 across tokens)


def ternary_pack(ternary) -> np.ndarray:
    """Ternary integers [out, in] (values -1, 0, 1) -> uint8 [out, ceil(in/4)] (layout: module doc)."""
    t = np.asarray(ternary)
    if t.ndim != 2:
        raise ValueError(f"ternary weights must be 2-D [out, in], got shape {t.shape}")
    if t.dtype.kind not in "iuf" or t.size and not np.isin(t, (-1, 0, 1)).all():
        raise ValueError("ternary weights must contain only -1, 0 and 1")
    out, n_in = t.shape
    groups = (n_in + 3) // 4
    codes = np.ones((out, 4 * groups), dtype=np.uint8)  # padding columns: code 1 = weight 0
    codes[:, :n_in] = (t + 1).astype(np.uint8)
    quarters = codes.reshape(out, 4, groups)  # [out, 4G] -> [out, 4, G]: quarter k holds columns kG..kG+G-1
    return (quarters[:, 0] | (quarters[:, 1] << 2) | (quarters[:, 2] << 4) | (quarters[:, 3] << 6)).astype(np.uint8)


def ternary_unpack(packed, in_features: int) -> np.ndarray:
    """uint8 [out, ceil(in/4)] -> int8 ternary [out, in] (inverse of `ternary_pack`)."""
    packed = _check_packed(packed, in_features)
    codes = np.concatenate([(packed >> (2 * k)) & 3 for k in range(4)], axis=1)  # [out, 4G]
    if (codes == 3).any():
        raise ValueError("packed ternary weights contain the invalid 2-bit code 3")
    return codes[:, :in_features].astype(np.int8) - 1


def _check_packed(packed, in_features):
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 2:
        raise TypeError(f"packed ternary weights must be a 2-D uint8 array [out, ceil(in/4)], got {packed.dtype} {packed.shape}")
    if isinstance(in_features, bool) or not isinstance(in_features, (int, np.integer)) or in_features < 0:
        raise ValueError(f"in_features must be a non-negative int, got {in_features!r}")
    if packed.shape[1] != (in_features + 3) // 4:
        raise ValueError(f"packed weights have {packed.shape[1]} bytes a row, in_features={in_features} needs {(in_features + 3) // 4}")
    return packed


def ternary_codes(W):
    """absmean ternary codes before packing: W [out, in] float -> (int8 t [out, in], float s).

    `s = 1 / max(mean|W|, 1e-5)` and `t = clip(round(W s), -1, 1)` in float32; W ~ t / s.
    """
    w = np.asarray(W)
    if w.dtype not in (np.float32, np.float64, np.float16):
        raise TypeError(f"W must be a float array, got dtype {w.dtype}")
    if w.ndim != 2:
        raise ValueError(f"W must be 2-D [out, in], got shape {w.shape}")
    w = w.astype(np.float32, copy=False)
    if not np.isfinite(w).all():
        raise ValueError("W contains NaN or Inf: it cannot be quantised to ternary codes")
    s = np.float32(1.0) / np.maximum(np.abs(w).mean(dtype=np.float32) if w.size else np.float32(0), np.float32(1e-5))
    t = np.clip(np.round(w * s), -1, 1)
    return t.astype(np.int8), float(s)


def ternary_quantize_ref(W):
    """absmean ternary quantisation: W [out, in] float -> (uint8 [out, ceil(in/4)], float scale s).

    The codes and `s` are `ternary_codes(W)`; the dequantised weight is `ternary_unpack(packed, in) / s`.
    """
    t, s = ternary_codes(W)
    return ternary_pack(t), s


def ternary_quantize(W):
    """Same as `ternary_quantize_ref` (one vectorised NumPy pass; there is nothing for Numba to win)."""
    return ternary_quantize_ref(W)


def quantize_activations(x):
    """Per-token absmax int8 quantisation: x [..., in] -> (q int8 [..., in], a float32 [..., 1]).

    `a = 127 / max(max|x|, 1e-5)`, `q = clip(round(x a), -128, 127)`, in float32. A token with
    a NaN or Inf gets a = NaN (and q = 0), so its outputs come out NaN.
    """
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64, np.float16):
        raise TypeError(f"x must be a float array, got dtype {x.dtype}")
    if x.ndim < 1:
        raise ValueError("x must have at least one dimension [..., in]")
    x = x.astype(np.float32, copy=False)
    absmax = np.abs(x).max(axis=-1, keepdims=True) if x.shape[-1] else np.zeros(x.shape[:-1] + (1,), np.float32)
    bad = ~np.isfinite(absmax)  # [..., 1]
    # 127 * (1 / m), two float32 roundings: torch evaluates transformers' `127 / m` as m.reciprocal() * 127,
    # and 127 / m rounded once differs from it in the last bit for ~1/4 of tokens (moving codes at ties)
    a = np.float32(127.0) * (np.float32(1.0) / np.maximum(np.where(bad, np.float32(1.0), absmax), np.float32(1e-5)))
    q = np.clip(np.round(x * a), -128, 127)
    q = np.where(bad, np.float32(0.0), q).astype(np.int8)
    return q, np.where(bad, np.float32(np.nan), a).astype(np.float32)


def _check_matmul_args(x, packed, scale, in_features):
    packed = _check_packed(packed, in_features)
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64, np.float16):
        raise TypeError(f"x must be a float array, got dtype {x.dtype}")
    if x.ndim < 1 or x.shape[-1] != in_features:
        raise ValueError(f"x must be [..., in_features={in_features}], got shape {x.shape}")
    try:
        s = np.float32(scale)
    except (TypeError, ValueError):
        raise TypeError(f"scale must be a float, got {type(scale).__name__}") from None
    if np.ndim(scale) != 0 or not np.isfinite(s) or s <= 0:
        raise ValueError(f"scale must be a positive finite float, got {scale!r}")
    return x, packed, s


def ternary_matmul_ref(x, packed, scale, in_features):
    """Reference: `(q @ t^T) / (a s)` with q, a from `quantize_activations` and t the unpacked codes.

    x [..., in] float -> float32 [..., out]; equals act_quant(x) @ weight_quant(W)^T.
    """
    x, packed, s = _check_matmul_args(x, packed, scale, in_features)
    q, a = quantize_activations(x)
    t = ternary_unpack(packed, in_features)  # [out, in]
    acc = np.matmul(q.astype(np.int64), t.T.astype(np.int64))  # [..., out], exact integers
    return acc.astype(np.float32) / (a * s)


@njit(cache=True, nogil=True, error_model="numpy")
def _quantize_tokens(x, q, a_out, q_sum):
    # x [T, in] float32 -> q [T, 4G] int16 (zero-padded), a_out [T] float32, q_sum [T] int32.
    # The same float32 operations as `quantize_activations` (np.rint rounds half to even).
    n_tok, n_in = x.shape
    for t in range(n_tok):
        row = x[t]
        absmax = np.float32(0.0)
        finite = True
        for i in range(n_in):
            v = abs(row[i])
            if v > absmax:
                absmax = v
            if not v < np.inf:  # NaN or Inf
                finite = False
        if not finite:  # the token's outputs become NaN (a = NaN, q = 0)
            a_out[t] = np.nan
            q_sum[t] = 0
            continue
        a = np.float32(127.0) * (np.float32(1.0) / max(absmax, np.float32(1e-5)))  # as torch: see quantize_activations
        total = 0
        for i in range(n_in):
            r = min(max(np.rint(row[i] * a), np.float32(-128.0)), np.float32(127.0))
            q[t, i] = np.int16(r)
            total += np.int32(r)
        a_out[t] = a
        q_sum[t] = total


@njit(cache=True, nogil=True, error_model="numpy")
def _ternary_rows(q, packed, acc, o0, o1):
    # acc[t, o] = sum_k q_k code_k for output rows o0..o1-1 and every token (see _ternary_kernel).
    # Kept apart from the float rescale and outside the prange body: mixed with them, LLVM
    # vectorised this loop nest worse (about half the speed when timed during development).
    groups = packed.shape[1]
    two, four, six, three = np.int16(2), np.int16(4), np.int16(6), np.int16(3)
    for tok in range(q.shape[0]):
        q0 = q[tok, 0:groups]
        q1 = q[tok, groups:2 * groups]
        q2 = q[tok, 2 * groups:3 * groups]
        q3 = q[tok, 3 * groups:4 * groups]
        for o in range(o0, o1):
            row = packed[o]
            total = np.int32(0)
            for j in range(groups):
                p = np.int16(row[j])
                part = np.int16(q0[j] * (p & three) + q1[j] * ((p >> two) & three)
                                + q2[j] * ((p >> four) & three) + q3[j] * ((p >> six) & three))
                total += np.int32(part)
            acc[tok, o] = total


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _ternary_kernel(q, q_sum, a, scale, packed, acc, y):
    # q [T, 4G] int16 (quarters of the activations, zero-padded); packed [out, G] uint8;
    # acc [T, out] int32 scratch; y [T, out] float32.
    # sum_k q_k (code_k - 1) = sum_k q_k code_k - sum(q); then y = that / (a s) in float32.
    # The four products of one byte fit int16 (|sum| <= 4 * 128 * 3), so the inner loop runs on
    # 16-bit lanes (twice as many per vector as int32) and widens once per byte.
    n_tok = q.shape[0]
    n_out = packed.shape[0]
    tasks = (n_out + _ROWS - 1) // _ROWS
    for task in prange(tasks):  # one task per block of rows: their packed bytes stay in cache across tokens
        o0 = task * _ROWS
        o1 = min(n_out, o0 + _ROWS)
        _ternary_rows(q, packed, acc, o0, o1)
        for tok in range(n_tok):
            denom = a[tok] * scale
            for o in range(o0, o1):
                y[tok, o] = np.float32(acc[tok, o] - q_sum[tok]) / denom


@njit(cache=True, nogil=True, error_model="numpy")
def _ternary_kernel_serial(q, q_sum, a, scale, packed, acc, y):
    # `_ternary_kernel` on one thread, for small products where starting threads costs more
    n_out = packed.shape[0]
    _ternary_rows(q, packed, acc, 0, n_out)
    for tok in range(q.shape[0]):
        denom = a[tok] * scale
        for o in range(n_out):
            y[tok, o] = np.float32(acc[tok, o] - q_sum[tok]) / denom


_PARALLEL_MIN_BYTES = 1 << 18  # tokens x packed bytes below which one thread is faster (~20 us of work)


def ternary_matmul_nb(x, packed, scale, in_features):
    """Numba int8 x ternary matmul (always runs the `@njit` kernels); same contract as the reference."""
    x, packed, s = _check_matmul_args(x, packed, scale, in_features)
    lead = x.shape[:-1]
    n_out, groups = packed.shape
    n_tok = int(np.prod(lead, dtype=np.int64))
    x2 = np.ascontiguousarray(x.reshape(n_tok, in_features), dtype=np.float32)  # [..., in] -> [T, in]
    q = np.zeros((n_tok, 4 * groups), np.int16)  # [T, 4G]
    a = np.empty(n_tok, np.float32)
    q_sum = np.empty(n_tok, np.int32)
    acc = np.empty((n_tok, n_out), np.int32)  # [T, out] integer sums
    y = np.empty((n_tok, n_out), np.float32)  # [T, out]
    if n_tok:
        _quantize_tokens(x2, q, a, q_sum)
        if n_out:
            kernel = _ternary_kernel if n_tok * packed.size >= _PARALLEL_MIN_BYTES else _ternary_kernel_serial
            kernel(q, q_sum, a, np.float32(s), np.ascontiguousarray(packed), acc, y)
    return y.reshape(*lead, n_out)  # [T, out] -> [..., out]


def ternary_matmul(x, packed, scale, in_features):
    """`act_quant(x) @ weight_quant(W).T` from packed ternary weights, integer accumulation.

    x [..., in] float; packed uint8 [out, ceil(in/4)] and scale s from `ternary_quantize`;
    returns float32 [..., out]. Runs the Numba kernel, or the reference when the JIT is off.
    """
    if jit_disabled():
        return ternary_matmul_ref(x, packed, scale, in_features)
    return ternary_matmul_nb(x, packed, scale, in_features)
