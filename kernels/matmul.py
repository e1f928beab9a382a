"""Batched matrix multiply: `matmul_ref` (NumPy, the definition) and `matmul_nb` (Numba).

    c = matmul(a, b)    # [..., M, K] @ [..., K, N] -> [..., M, N], batch dims broadcast

The Numba kernel is a cache-blocked loop nest (row blocks of A in parallel, K and N blocked so
the touched rows of B and C stay in cache) whose innermost loop is an axpy over a slice of a
row of C, four rows of B at a time, which LLVM vectorises (with two rows of C in the same loop
it did not: too many possible aliases to check). It does not pack panels or keep a register
tile like an optimised BLAS, so BLAS stays faster on large dense float32 products (see
docs/kernels.md for the measured ratio); `axon` calls BLAS for those.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._jit import CONTRACT, float_array, jit_disabled, result_float_dtype

__all__ = ["matmul", "matmul_ref", "matmul_nb"]

_MC, _KC, _NC = 32, 256, 512  # rows of A per task, K block, N block (a C row slice + 4 B row slices fit L1)


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
        for j0 in range(0, n, _NC):
            j1 = min(n, j0 + _NC)
            width = j1 - j0
            for k0 in range(0, k_total, _KC):
                k1 = min(k_total, k0 + _KC)
                for i in range(i0, i1):
                    # one row of C (a contiguous slice: LLVM vectorises the axpy with a simple alias check)
                    c_row = ct[i, j0:j1]
                    a_row = at[i]
                    k = k0
                    while k + 3 < k1:  # four rows of B per pass over the C row
                        b0 = bt[k, j0:j1]
                        b1 = bt[k + 1, j0:j1]
                        b2 = bt[k + 2, j0:j1]
                        b3 = bt[k + 3, j0:j1]
                        x0, x1, x2, x3 = a_row[k], a_row[k + 1], a_row[k + 2], a_row[k + 3]
                        for j in range(width):
                            c_row[j] += x0 * b0[j] + x1 * b1[j] + x2 * b2[j] + x3 * b3[j]
                        k += 4
                    while k < k1:
                        bk = bt[k, j0:j1]
                        x0 = a_row[k]
                        for j in range(width):
                            c_row[j] += x0 * bk[j]
                        k += 1


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
