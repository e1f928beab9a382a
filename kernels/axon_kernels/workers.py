"""Work split for the kernels and products: a few long-lived Python threads take chunks from a shared counter.

Why not Numba's parallel regions or OpenBLAS's own threads for the prefill? Both split the work
statically and then wait for every thread: OpenBLAS's workers spin, and a thread that the
scheduler parked behind another program holds everyone up. With one core kept busy by another
process, a 500-token prefill of SmolLM2 went from ~1 s to 10-40 s that way, the many small
attention sgemms (each a wake-up of the BLAS pool) being the worst. Here every chunk is a
*serial* Numba kernel (``nogil``) or a *single-threaded* sgemm (OpenBLAS's per-thread
``openblas_set_num_threads_local(1)``), both of which release the GIL, and the threads pull the
next chunk when they finish theirs (dynamic scheduling): a thread that got less CPU simply does
fewer chunks, and nobody spins. The calling thread waits (asleep) for ``n`` helper threads, so its
own BLAS thread setting is never touched. The thread count is Numba's (``numba.get_num_threads()``, what
``axon_kernels._jit.set_threads`` / ``--threads`` sets).

Results do not depend on the split: each chunk computes disjoint outputs with the same
operations whichever thread runs it.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba

from axon_kernels._jit import openblas_functions

__all__ = ["INLINE_WORK", "run_chunks", "threads"]

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_key: tuple[int, int] | None = None          # (pid, helper count) the pool was made for


def _blas_local_setter():
    """OpenBLAS's ``openblas_set_num_threads_local`` (OpenBLAS >= 0.3.27) of the library NumPy
    loaded, or None: it sets the BLAS thread count of the calling thread only."""
    fns = openblas_functions("openblas_set_num_threads_local", "scipy_openblas_set_num_threads_local64_",
                             "scipy_openblas_set_num_threads_local")
    if not fns:
        return None
    fn = fns[0]
    fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
    return fn


_set_local = _blas_local_setter()


_in_helper = threading.local()     # .yes on the pool's own threads


def _single_threaded_blas() -> None:
    """Start a helper thread: its BLAS calls run on it alone, and it is marked as a helper (a
    chunk that calls `run_chunks` again runs the inner chunks itself instead of waiting for a
    pool whose threads may all be waiting too)."""
    _in_helper.yes = True
    if _set_local is not None:
        _set_local(1)


def threads() -> int:
    """How many threads :func:`run_chunks` uses: Numba's thread count (``set_threads``)."""
    return max(1, numba.get_num_threads())


def _helpers(n: int) -> ThreadPoolExecutor:
    """The pool of ``n`` helper threads with serial BLAS (made again after a fork or a change of thread count)."""
    global _pool, _pool_key
    key = (os.getpid(), n)
    with _lock:
        if _pool_key != key:
            if _pool is not None and _pool_key[0] == key[0]:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(n, thread_name_prefix="axon-worker", initializer=_single_threaded_blas)
            _pool_key = key
        return _pool


#: below this many multiply-adds, a caller should do its chunks itself on the calling thread rather
#: than through :func:`run_chunks`: waking the helpers (~0.1-0.3 ms a call) costs more than the work.
#: A decode step's attention (one query per row) is always below it; a prefill's is far above.
INLINE_WORK = 1 << 21


def run_chunks(fn, n_chunks: int) -> None:
    """Call ``fn(i)`` for every ``i`` in ``range(n_chunks)``, spread over :func:`threads` threads
    that take the next ``i`` when done with theirs. ``fn`` must write disjoint outputs and should
    spend its time in GIL-free code (serial ``nogil`` Numba kernels, sgemm). The first exception
    raised by a chunk is re-raised here (the remaining chunks are skipped)."""
    n = min(threads(), n_chunks)
    nested = getattr(_in_helper, "yes", False)
    if n <= 1 or nested or _set_local is None:   # one thread, inside a chunk, or no way to keep BLAS serial per thread
        for i in range(n_chunks):
            fn(i)
        return
    counter = itertools.count()
    failed: list[BaseException] = []

    def work() -> None:
        while not failed:
            i = next(counter)                                 # atomic under the GIL
            if i >= n_chunks:
                return
            try:
                fn(i)
            except BaseException as e:                       # noqa: BLE001 - re-raised by the caller
                failed.append(e)
                return

    pool = _helpers(threads())                                # one pool of the full size, n of it busy
    futures = [pool.submit(work) for _ in range(n)]
    for f in futures:
        f.result()
    if failed:
        raise failed[0]
