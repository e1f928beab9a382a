"""Matrix products on a few Python threads, each calling a one-threaded OpenBLAS.

    c = gemm(a, b)              # [M, K] @ [K, N] -> [M, N], rows of c split between threads
    gemm(a, b, out=c)           # into an existing [M, N] array (or view)

Why not OpenBLAS's own threads: they wait for work by spinning (about 2^28 cycles by default),
and a product is split statically between them, so on a machine where other programs hold a
core the caller waits on a descheduled worker, while the spinning workers take CPU from
everything else (the training step of `benchmarks/bench_train.py` at load 6: 2.3 s wall and
1.0 s CPU with two OpenBLAS threads, 0.65 s wall and 0.37 s CPU with one; docs/performance.md
"Threads"). Here OpenBLAS runs on one thread (``axon_kernels._jit.set_threads``), the rows of
C are cut into one chunk per thread, and the threads of `axon_kernels.workers.run_chunks` (the
same pool the inference kernels use) take the chunks; idle threads sleep (no spinning). NumPy
releases the GIL inside the BLAS call, so the chunks run in parallel. Every chunk packs all of
``b`` again, so more chunks cost more: two per thread (a stalled thread then holds up only a
quarter of the product) took 1.03-1.08x the time of one on the training step's shapes
(`benchmarks/bench_gemm_split.py`).

Independent products are better side by side, one thread each, than one after the other, each
split (nobody packs an operand twice: 1.03-1.20x on the same shapes, the small ones gaining
most): a linear layer's backward computes its input gradient on the calling thread while a
helper computes the weight gradient (`axon.nn._fused.Linear`, `axon_kernels.workers.defer`).

`gemm_ref` (plain ``np.matmul``) is the definition; `gemm` gives the same values up to float
rounding (each chunk is an ordinary BLAS product of a row block).
"""

from __future__ import annotations

import numpy as np

from ._jit import _set_gemm_split, gemm_split
from .workers import run_chunks

__all__ = ["gemm", "gemm_ref", "set_gemm_threads", "gemm_threads", "GEMM_MIN_WORK"]

#: products with fewer multiply-adds (M * K * N) than this run as one BLAS call on the caller's
#: thread: handing a chunk to a worker costs tens of microseconds
GEMM_MIN_WORK = 1 << 22
_MIN_ROWS = 32          # no chunk is thinner than this many rows of C
_CHUNKS_PER_THREAD = 1  # one chunk per thread: each chunk packs all of b (see `gemm`)


def set_gemm_threads(n: int) -> None:
    """Split `gemm`'s products for ``n`` threads (``n >= 1``; 1 = one BLAS call on the caller)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"gemm threads must be a positive integer, got {n!r}")
    _set_gemm_split(n)


def gemm_threads() -> int:
    """How many threads `gemm` splits a large product for (set by `axon_kernels._jit.set_threads`)."""
    return gemm_split()


def gemm_ref(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a @ b`` for 2-d arrays (``np.matmul``, optionally into ``out``): the definition of `gemm`."""
    return np.matmul(a, b, out=out)


def gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a [M, K] @ b [K, N] -> [M, N]`` with the rows of the result split over `gemm_threads`
    threads (module doc); small products and other ranks run `gemm_ref`. ``out`` may be a
    strided view (a column block of a larger array): each chunk writes its rows of it."""
    threads = gemm_split()
    if threads == 1 or a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        return np.matmul(a, b, out=out)
    m, k = a.shape
    n = b.shape[1]
    if m * k * n < GEMM_MIN_WORK or m < 2 * _MIN_ROWS:
        return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty((m, n), dtype=np.result_type(a.dtype, b.dtype))
    elif out.shape != (m, n):
        return np.matmul(a, b, out=out)                   # NumPy's own error
    chunks = min(threads * _CHUNKS_PER_THREAD, m // _MIN_ROWS)
    bounds = [m * i // chunks for i in range(chunks + 1)]

    def chunk(i: int) -> None:  # rows bounds[i]:bounds[i+1] of the product
        r0, r1 = bounds[i], bounds[i + 1]
        np.matmul(a[r0:r1], b, out=out[r0:r1])  # [rows, K] @ [K, N]

    run_chunks(chunk, chunks)
    return out
