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
chunks, then set back), so ``n`` threads means ``n - 1`` helpers, and nobody waits for a helper
to wake just to learn that the job is done. Idle helpers sleep; between jobs they run deferred
calls (`defer`): work off the critical path, such as a linear layer's weight gradient, which a
helper computes while the caller goes on. The thread count is Numba's
(``numba.get_num_threads()``, what ``axon_kernels._jit.set_threads`` / ``--threads`` sets).

Results do not depend on the split: each chunk computes disjoint outputs with the same
operations whichever thread runs it.
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import os
import threading

import numba

from axon_kernels._jit import openblas_functions

__all__ = ["INLINE_WORK", "Deferred", "defer", "run_chunks", "threads"]

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
# the pool
# --------------------------------------------------------------------------------------------


class _Job:
    """One `run_chunks` call: chunks handed out by a counter, each counted when done."""

    __slots__ = ("done", "failed", "finished", "fn", "lock", "n", "next")

    def __init__(self, fn, n: int):
        self.fn, self.n = fn, n
        self.next = itertools.count()             # next chunk to take (atomic under the GIL)
        self.done = 0                             # chunks finished
        self.lock = threading.Lock()              # for counting them
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
                self.done += 1
                last = self.done == self.n
            if last:
                self.finished.set()


class Deferred:
    """A call to make later: a helper thread runs it when it has no chunks to run, or the first
    thread to ask for :meth:`result` runs it itself (`defer`)."""

    __slots__ = ("error", "event", "fn", "lock", "state", "value")

    def __init__(self, fn):
        self.fn = fn
        self.lock = threading.Lock()
        self.state = 0                            # 0 waiting, 1 running, 2 done
        self.value = self.error = None
        self.event = threading.Event()

    def _take(self) -> bool:
        with self.lock:
            if self.state:
                return False
            self.state = 1
            return True

    def _run(self) -> None:
        try:
            self.value = self.fn()
        except BaseException as e:                # noqa: BLE001 - re-raised by result()
            self.error = e
        finally:
            self.fn = None
            self.state = 2
            self.event.set()

    def result(self):
        """The call's value (running it here if nobody has started it), or its exception."""
        if self._take():
            self._run()
        else:
            self.event.wait()
        if self.error is not None:
            raise self.error
        return self.value


def defer(fn) -> Deferred:
    """Run ``fn()`` on a helper thread when it has nothing else to do; ``.result()`` waits for it
    (or runs it, if no helper has). Work off the critical path -- a layer's weight gradient,
    needed only when the whole backward is done -- so the helpers fill the time the calling
    thread spends in serial code. On one thread, or inside a chunk, it simply runs at ``result()``."""
    d = Deferred(fn)
    if threads() > 1 and not getattr(_in_helper, "yes", False) and _set_local is not None:
        _helpers(threads() - 1).push(d)
    return d


class _Pool:
    """``n`` helper threads (serial BLAS each) that run the chunks of the current job with the
    caller, and deferred calls (`defer`) when there is no job."""

    def __init__(self, n: int):
        self.background = collections.deque()     # Deferred calls waiting for a free helper
        self.job: _Job | None = None
        self.generation = 0                       # bumped for every job and deferred call
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
            if self.generation != seen:           # a new job (or a deferred call): chunks first
                seen = self.generation
                job = self.job
                if job is not None:
                    job.run()
                continue
            if self.background:
                try:
                    d = self.background.popleft()
                except IndexError:
                    continue
                if d._take():
                    d._run()
                continue
            with self.wake:                       # nothing to do: sleep until the next job or call
                while self.generation == seen and not self.closed:
                    self.wake.wait()

    def push(self, d: Deferred) -> None:
        """Queue a deferred call and wake a helper for it."""
        self.background.append(d)
        with self.wake:
            self.generation += 1
            self.wake.notify_all()

    def run(self, fn, n_chunks: int) -> bool:
        """Run the job with the helpers and the calling thread; False (nothing run) while the
        pool is busy with another caller's job."""
        if not self.busy.acquire(blocking=False):
            return False
        try:
            job = _Job(fn, n_chunks)
            self.job = job
            with self.wake:
                self.generation += 1
                self.wake.notify_all()
            _in_helper.yes = True                 # the caller takes chunks too: nested calls inline,
            previous = _set_local(1)              # its BLAS serial meanwhile
            try:
                job.run()
            finally:
                _set_local(previous)
                _in_helper.yes = False
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
