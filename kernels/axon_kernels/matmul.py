"""Batched matrix multiply: `matmul_ref` (NumPy, the definition) and `matmul_nb` (Numba).

    c = matmul(a, b)    # [..., M, K] @ [..., K, N] -> [..., M, N], batch dims broadcast

The Numba kernel is a cache-blocked loop nest (row blocks of A in parallel, K and N blocked so
the packed block of B stays in L2) whose innermost loop updates four rows of C from four rows
of B (16 FMAs per 4 loads of B), over 1-D buffers with compile-time row strides so LLVM can
vectorise it with a single alias check (with separate row views it gave up and emitted
scalar code). It keeps no register tile like an optimised BLAS, so BLAS stays faster on large
dense float32 products (see docs/kernels.md for the measured ratio); `axon` calls BLAS for those.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._jit import CONTRACT, float_array, jit_disabled, result_float_dtype

__all__ = ["matmul", "matmul_ref", "matmul_nb"]

_MC, _KC, _NC = 64, 256, 512  # rows of A per task, K block, N block (the packed B block stays in L2)
_MR = 4  # rows of C updated together by the inner loop


def _validate(a, b):
    a = float_array("a", a)
    b = float_array("b", b)
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"matmul needs a [..., M, K] and b [..., K, N], got shapes {a.shape} and {b.shape}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul inner dimensions differ: a {a.shape} has K={a.shape[-1]}, b {b.shape} has K={b.shape[-2]}")
    try:
        batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ValueError(f"matmul batch dimensions do not broadcast: {a.shape[:-2]} and {b.shape[:-2]}") from None
    return a, b, batch


def matmul_ref(a, b):
    """Reference: `a @ b` for float arrays [..., M, K] @ [..., K, N] (batch dims broadcast)."""
    a, b, _ = _validate(a, b)
    dtype = result_float_dtype(a, b)
    return np.matmul(a.astype(dtype, copy=False), b.astype(dtype, copy=False))


@njit(parallel=True, cache=True, nogil=True, fastmath=CONTRACT, error_model="numpy")
def _matmul_kernel(a, b, a_index, b_index, c):
    # a [Ba, M, K], b [Bb, K, N], c [Bt, M, N] zeroed; batch t uses a[a_index[t]], b[b_index[t]]
    n_batch, m, n = c.shape
    k_total = a.shape[2]
    row_blocks = (m + _MC - 1) // _MC
    for task in prange(n_batch * row_blocks):
        t = task // row_blocks
        i0 = (task % row_blocks) * _MC
        i1 = min(m, i0 + _MC)
        at = a[a_index[t]]
        bt = b[b_index[t]]
        ct = c[t]
        # 1-D buffers with compile-time row strides: LLVM sees every B row (and every C row) of the
        # inner loop as one object at constant offsets, so one alias check covers them all
        bp = np.empty(_KC * _NC, c.dtype)  # packed [KC, NC] block of B
        tile = np.empty(_MR * _NC, c.dtype)  # _MR rows of C, [MR, NC]
        for j0 in range(0, n, _NC):
            j1 = min(n, j0 + _NC)
            width = j1 - j0
            for k0 in range(0, k_total, _KC):
                k1 = min(k_total, k0 + _KC)
                for kk in range(k1 - k0):
                    for j in range(width):
                        bp[kk * _NC + j] = bt[k0 + kk, j0 + j]
                for i in range(i0, i1, _MR):
                    rows = min(_MR, i1 - i)
                    for r in range(rows):
                        for j in range(width):
                            tile[r * _NC + j] = ct[i + r, j0 + j]
                    r1 = i + 1 if rows > 1 else i  # rows past the end repeat row i (computed, never stored)
                    r2 = i + 2 if rows > 2 else i
                    r3 = i + 3 if rows > 3 else i
                    kk = 0
                    while kk + 3 < k1 - k0:
                        k = k0 + kk
                        x00 = at[i, k]; x01 = at[i, k + 1]; x02 = at[i, k + 2]; x03 = at[i, k + 3]
                        x10 = at[r1, k]
                        x11 = at[r1, k + 1]
                        x12 = at[r1, k + 2]
                        x13 = at[r1, k + 3]
                        x20 = at[r2, k]
                        x21 = at[r2, k + 1]
                        x22 = at[r2, k + 2]
                        x23 = at[r2, k + 3]
                        x30 = at[r3, k]
                        x31 = at[r3, k + 1]
                        x32 = at[r3, k + 2]
                        x33 = at[r3, k + 3]
                        o = kk * _NC
                        for j in range(width):  # 4 rows of C x 4 rows of B per pass: 16 FMAs per 4 B loads
                            b0 = bp[o + j]
                            b1 = bp[o + _NC + j]
                            b2 = bp[o + 2 * _NC + j]
                            b3 = bp[o + 3 * _NC + j]
                            tile[j] += x00 * b0 + x01 * b1 + x02 * b2 + x03 * b3
                            tile[_NC + j] += x10 * b0 + x11 * b1 + x12 * b2 + x13 * b3
                            tile[2 * _NC + j] += x20 * b0 + x21 * b1 + x22 * b2 + x23 * b3
                            tile[3 * _NC + j] += x30 * b0 + x31 * b1 + x32 * b2 + x33 * b3
                        kk += 4
                    while kk < k1 - k0:
                        k = k0 + kk
                        x0 = at[i, k]
                        x1 = at[r1, k]
                        x2 = at[r2, k]
                        x3 = at[r3, k]
                        o = kk * _NC
                        for j in range(width):
                            b0 = bp[o + j]
                            tile[j] += x0 * b0
                            tile[_NC + j] += x1 * b0
                            tile[2 * _NC + j] += x2 * b0
                            tile[3 * _NC + j] += x3 * b0
                        kk += 1
                    for r in range(rows):
                        for j in range(width):
                            ct[i + r, j0 + j] = tile[r * _NC + j]


def matmul_nb(a, b):
    """Numba tiled matmul, same contract as `matmul_ref` (always runs the `@njit` kernel)."""
    a, b, batch = _validate(a, b)
    dtype = result_float_dtype(a, b)
    m, k = a.shape[-2:]
    n = b.shape[-1]
    if not (m and n and k) or 0 in batch:
        return np.zeros((*batch, m, n), dtype)
    a3 = np.ascontiguousarray(a.astype(dtype, copy=False)).reshape(-1, m, k)  # [..., M, K] -> [Ba, M, K]
    b3 = np.ascontiguousarray(b.astype(dtype, copy=False)).reshape(-1, k, n)  # [..., K, N] -> [Bb, K, N]
    a_index = np.broadcast_to(np.arange(a3.shape[0]).reshape(a.shape[:-2]), batch).ravel()
    b_index = np.broadcast_to(np.arange(b3.shape[0]).reshape(b.shape[:-2]), batch).ravel()
    c = np.zeros((a_index.size, m, n), dtype)  # [Bt, M, N]
    _matmul_kernel(a3, b3, a_index.astype(np.int64), b_index.astype(np.int64), c)
    return c.reshape(*batch, m, n)


def matmul(a, b):
    """`a @ b` for float32/float64 arrays [..., M, K] @ [..., K, N] with broadcast batch dims.

    Runs the Numba kernel (`matmul_nb`), or `matmul_ref` when the JIT is disabled. The result is
    float32 when both inputs are float32, float64 otherwise.
    """
    if jit_disabled():
        return matmul_ref(a, b)
    return matmul_nb(a, b)
