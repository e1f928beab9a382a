"""Work split for the kernels and products: a few long-lived Python threads take chunks from a shared counter.

Why not Numba's parallel regions or OpenBLAS's own threads for the prefill? Both split the work
statically and then wait for every thread: OpenBLAS's workers spin, and a thread that the
scheduler parked behind another program holds everyone up. With one core kept busy by another
process, a 500-token prefill of SmolLM2 went from ~1 s to 10-40 s that way, the many small
attention sgemms (each a wake-up of the BLAS pool) being the worst. Here every chunk is a
*serial* Numba kernel (``nogil``) or a *single-threaded* sgemm (OpenBLAS's per-thread
``openblas_set_num_threads_local(1)``), both of which release the GIL, and the threads pull the
next chunk when they finish theirs (dynamic scheduling): a thread that got less CPU simply does
fewer chunks. The calling thread is one of the threads (its BLAS set to one thread while it takes
chunks, then set back), so ``n`` threads means ``n - 1`` helpers. A thread that runs out of work
watches for the next job for a moment (`SPIN_MICROSECONDS`, see "waiting" below) before it
sleeps. The thread count is Numba's (``numba.get_num_threads()``, what
``axon_kernels._jit.set_threads`` / ``--threads`` sets).

Results do not depend on the split: each chunk computes disjoint outputs with the same
operations whichever thread runs it.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import platform
import threading
import time

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from axon_kernels._jit import jit_disabled, openblas_functions

__all__ = ["INLINE_WORK", "SPIN_MICROSECONDS", "run_chunks", "threads"]

_lock = threading.Lock()
_pool: _Pool | None = None
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


_in_helper = threading.local()     # .yes on a thread while it runs chunks (the pool's, or a caller's)


# --------------------------------------------------------------------------------------------
# waiting without sleeping, for a moment
# --------------------------------------------------------------------------------------------
#
# Waking a sleeping thread costs ~0.1-0.3 ms here (a futex wake; on this VM a halted virtual CPU
# has to be scheduled again), which is a third of a 1024 x 256 x 128 product. A training step
# makes ~60 products in a row with a little Python between them, so the helper that finished
# one product watches for the next one for `SPIN_MICROSECONDS` before it goes to sleep, and
# the caller watches for the last chunk the same way. The watching runs in a nogil Numba loop of
# atomic loads and ``pause`` instructions (a Python loop would hold the GIL), and is bounded, so
# an idle process stops using CPU almost at once, and another program on the machine loses at
# most that moment per product -- unlike OpenBLAS's workers, which spin for ~0.1 s.

#: how long a thread that ran out of chunks watches for more before it sleeps (0: never watch)
SPIN_MICROSECONDS = 300

# LLVM's name for the CPU's spin-wait hint (``pause`` on x86-64); no hint elsewhere
_PAUSE = {"x86_64": "llvm.x86.sse2.pause", "amd64": "llvm.x86.sse2.pause"}.get(platform.machine().lower())


@intrinsic
def _load_acquire(typingctx, flag):
    """``flag[0]`` as an atomic (acquire) load: re-read on every call, never hoisted out of a loop."""
    sig = types.int64(flag)

    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.load_atomic(arr.data, "acquire", 8)

    return sig, codegen


@intrinsic
def _cpu_relax(typingctx):
    """The CPU's spin-wait hint (``pause`` on x86-64; nothing elsewhere)."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if _PAUSE is not None:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []), _PAUSE)
            builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


@njit(nogil=True, cache=True)
def _watch(flag, value, until_equal, rounds):
    """Watch ``flag[0]`` for at most ``rounds`` checks, without the GIL: until it equals ``value``
    (``until_equal``) or until it differs from it. True when that happened, False on timeout."""
    for _ in range(rounds):
        if (_load_acquire(flag) == value) == until_equal:
            return True
        _cpu_relax()
    return False


_spin_rounds: list[int] = []                   # checks per SPIN_MICROSECONDS, measured once


def _rounds() -> int:
    """How many `_watch` checks take about `SPIN_MICROSECONDS`, measured once (compiling `_watch`
    if the disk cache lacks it, ~0.1 s); 0 -- sleep at once -- while the kernels run on their
    references (``NUMBA_DISABLE_JIT=1``, or a first run answering while the kernels compile, which
    `axon_kernels.first_run` makes compile `_watch` in the background too)."""
    if _spin_rounds:
        return _spin_rounds[0]
    if SPIN_MICROSECONDS <= 0 or jit_disabled():
        return 0
    probe = np.zeros(1, np.int64)
    _watch(probe, 1, True, 10)                    # compile / load
    n = 20000
    t0 = time.perf_counter()
    _watch(probe, 1, True, n)
    per_check = max((time.perf_counter() - t0) / n, 1e-9)
    _spin_rounds.append(max(1, int(SPIN_MICROSECONDS * 1e-6 / per_check)))
    return _spin_rounds[0]


# --------------------------------------------------------------------------------------------
# the pool
# --------------------------------------------------------------------------------------------


class _Job:
    """One `run_chunks` call: chunks handed out by a counter, each counted when done."""

    __slots__ = ("fn", "n", "next", "done", "lock", "failed", "finished")

    def __init__(self, fn, n: int):
        self.fn, self.n = fn, n
        self.next = itertools.count()             # next chunk to take (atomic under the GIL)
        self.done = np.zeros(1, np.int64)         # chunks finished; read by `_watch` without the GIL
        self.lock = threading.Lock()              # for writing `done`
        self.failed: list[BaseException] = []
        self.finished = threading.Event()

    def run(self) -> None:
        """Take and run chunks until none is left; after a failure the rest only count as done."""
        while True:
            i = next(self.next)
            if i >= self.n:
                return
            if not self.failed:
                try:
                    self.fn(i)
                except BaseException as e:        # noqa: BLE001 - re-raised by the caller
                    self.failed.append(e)
            with self.lock:
                self.done[0] += 1
                last = self.done[0] == self.n
            if last:
                self.finished.set()


class _Pool:
    """``n`` helper threads (serial BLAS each) that run the chunks of the current job with the caller."""

    def __init__(self, n: int):
        self.job: _Job | None = None
        self.generation = np.zeros(1, np.int64)   # bumped for every job; helpers watch it
        self.wake = threading.Condition()
        self.busy = threading.Lock()              # one job at a time
        self.closed = False
        self.threads = [threading.Thread(target=self._helper, name=f"axon-worker_{i}", daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def _helper(self) -> None:
        _in_helper.yes = True
        if _set_local is not None:
            _set_local(1)
        seen = 0
        while not self.closed:
            rounds = _rounds()
            if not (rounds and _watch(self.generation, seen, False, rounds)):
                with self.wake:
                    while self.generation[0] == seen and not self.closed:
                        self.wake.wait()
            seen = int(self.generation[0])
            job = self.job
            if job is not None:
                job.run()

    def run(self, fn, n_chunks: int) -> bool:
        """Run the job with the helpers and the calling thread; False (nothing run) while the
        pool is busy with another caller's job."""
        if not self.busy.acquire(blocking=False):
            return False
        try:
            job = _Job(fn, n_chunks)
            self.job = job
            with self.wake:
                self.generation[0] += 1
                self.wake.notify_all()
            _in_helper.yes = True                 # the caller takes chunks too: nested calls inline,
            previous = _set_local(1)              # its BLAS serial meanwhile
            try:
                job.run()
            finally:
                _set_local(previous)
                _in_helper.yes = False
            rounds = _rounds()
            if not (rounds and _watch(job.done, job.n, True, rounds)):
                job.finished.wait()
            self.job = None
        finally:
            self.busy.release()
        if job.failed:
            raise job.failed[0]
        return True

    def close(self) -> None:
        self.closed = True
        with self.wake:
            self.wake.notify_all()


def threads() -> int:
    """How many threads :func:`run_chunks` uses: Numba's thread count (``set_threads``)."""
    return max(1, numba.get_num_threads())


def _helpers(n: int) -> _Pool:
    """The pool of ``n`` helper threads with serial BLAS (made again after a fork or a change of thread count)."""
    global _pool, _pool_key
    key = (os.getpid(), n)
    with _lock:
        if _pool_key != key:
            if _pool is not None and _pool_key[0] == key[0]:
                _pool.close()
            _pool = _Pool(n)
            _pool_key = key
        return _pool


#: below this many multiply-adds, a caller should do its chunks itself on the calling thread rather
#: than through :func:`run_chunks`: waking a sleeping helper (~0.1-0.3 ms) costs more than the work.
#: A decode step's attention (one query per row) is always below it; a prefill's is far above.
INLINE_WORK = 1 << 21


def run_chunks(fn, n_chunks: int) -> None:
    """Call ``fn(i)`` for every ``i`` in ``range(n_chunks)``, spread over :func:`threads` threads
    (the caller and ``threads() - 1`` helpers) that take the next ``i`` when done with theirs.
    ``fn`` must write disjoint outputs and should spend its time in GIL-free code (serial
    ``nogil`` Numba kernels, sgemm). The first exception raised by a chunk is re-raised here (the
    remaining chunks are skipped). A call made inside a chunk, or while another thread's call
    holds the helpers, runs its chunks on the calling thread."""
    n = min(threads(), n_chunks)
    nested = getattr(_in_helper, "yes", False)
    if n <= 1 or nested or _set_local is None or not _helpers(threads() - 1).run(fn, n_chunks):
        for i in range(n_chunks):
            fn(i)
