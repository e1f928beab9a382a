"""`axon_kernels.workers.run_chunks`: every chunk runs exactly once, on any thread count, and a
chunk's exception reaches the caller."""

import numba
import numpy as np
import pytest

from axon_kernels import workers


@pytest.fixture(params=[(1, "watch"), (2, "watch"), (2, "sleep")], ids=["1-thread", "2-threads", "2-threads-sleeping"])
def nthreads(request, monkeypatch):
    """Run the test with Numba (and so run_chunks) on 1 and on 2 threads (capped by the machine),
    the idle threads watching for work (`workers.SPIN_MICROSECONDS`) or going to sleep at once."""
    n, wait = request.param
    if wait == "sleep":
        monkeypatch.setattr(workers, "_spin_rounds", [0])
    before = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    yield numba.get_num_threads()
    numba.set_num_threads(before)


@pytest.mark.parametrize("n_chunks", [0, 1, 2, 7, 64])
def test_every_chunk_runs_once(nthreads, n_chunks):
    seen = np.zeros(n_chunks, np.int64)

    def fn(i):
        seen[i] += 1

    workers.run_chunks(fn, n_chunks)
    assert workers.threads() == nthreads
    np.testing.assert_array_equal(seen, np.ones(n_chunks, np.int64))


def test_sgemm_chunks_equal_one_sgemm(nthreads):
    """Column chunks written by the threads (each with its BLAS serial) give the full product."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((70, 33)).astype(np.float32), rng.standard_normal((33, 300)).astype(np.float32)
    y = np.empty((70, 300), np.float32)

    def fn(i):
        np.matmul(x, w[:, 64 * i:64 * (i + 1)], out=y[:, 64 * i:64 * (i + 1)])

    workers.run_chunks(fn, 5)
    np.testing.assert_allclose(y, x @ w, rtol=1e-5, atol=1e-5)


def test_an_exception_in_a_chunk_reaches_the_caller(nthreads):
    def fn(i):
        if i == 3:
            raise KeyError("chunk 3")

    with pytest.raises(KeyError, match="chunk 3"):
        workers.run_chunks(fn, 8)
    done = []
    workers.run_chunks(done.append, 4)                   # the pool still works afterwards
    assert sorted(done) == [0, 1, 2, 3]


def test_a_chunk_that_splits_again_runs_its_chunks_itself(nthreads):
    """Nested calls (e.g. a chunk calling `blas.gemm`) must not wait for a pool whose threads
    are all busy waiting: the inner chunks run on the chunk's own thread."""
    out = np.zeros((6, 5), np.int64)

    def outer(i):
        def inner(j):
            out[i, j] = i * 10 + j

        workers.run_chunks(inner, 5)

    workers.run_chunks(outer, 6)
    np.testing.assert_array_equal(out, np.arange(6)[:, None] * 10 + np.arange(5)[None, :])


def test_many_jobs_in_a_row_each_run_every_chunk_once(nthreads):
    """Jobs back to back (the helpers still watching from the last one) and with pauses between
    them (the helpers asleep): every chunk of every job runs once, and no helper piles up."""
    import threading
    import time

    for job in range(300):
        seen = np.zeros(7, np.int64)

        def fn(i, seen=seen):
            seen[i] += 1

        workers.run_chunks(fn, 7)
        np.testing.assert_array_equal(seen, np.ones(7, np.int64))
        if job % 50 == 0:
            time.sleep(0.002)                              # longer than the watch: the helpers sleep
    assert sum(t.name.startswith("axon-worker") for t in threading.enumerate()) <= max(1, nthreads - 1) + 1


def test_a_second_caller_while_the_pool_is_busy_runs_its_chunks_itself(nthreads):
    """Two threads calling run_chunks at once: one job holds the helpers, the other runs on its
    own thread; both complete with every chunk once."""
    import threading

    results = {}
    barrier = threading.Barrier(2)

    def caller(name):
        seen = np.zeros(16, np.int64)

        def fn(i):
            seen[i] += 1
            x = np.ones((64, 64), np.float32)
            x @ x                                            # a little GIL-free work

        barrier.wait()
        for _ in range(50):
            workers.run_chunks(fn, 16)
        results[name] = seen

    threads = [threading.Thread(target=caller, args=(k,)) for k in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    for seen in results.values():
        np.testing.assert_array_equal(seen, np.full(16, 50))


def test_watch_sees_a_change_and_times_out():
    if numba.config.DISABLE_JIT:
        pytest.skip("_watch is an atomic-load loop compiled by Numba (its intrinsics have no Python form); "
                    "without the JIT the pool never watches, it sleeps at once")
    flag = np.zeros(1, np.int64)
    assert workers._watch(flag, 0, True, 5)                  # already equal
    assert not workers._watch(flag, 1, True, 1000)           # never becomes 1: gives up
    assert workers._watch(flag, 1, False, 5)                 # differs from 1 at once
    assert not workers._watch(flag, 0, False, 1000)


def test_a_forked_child_gets_its_own_pool():
    import os

    if not hasattr(os, "fork"):
        pytest.skip("fork is POSIX-only")
    workers.run_chunks(lambda i: None, 4)                    # the parent's pool exists
    pid = os.fork()
    if pid == 0:                                             # the child: its own helpers, not the parent's
        code = 1
        try:
            seen = np.zeros(9, np.int64)

            def fn(i):
                seen[i] += 1

            workers.run_chunks(fn, 9)
            code = 0 if (seen == 1).all() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
