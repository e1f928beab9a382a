"""`axon_kernels.workers.run_chunks`: every chunk runs exactly once, on any thread count, and a
chunk's exception reaches the caller."""

import numba
import numpy as np
import pytest

from axon_kernels import workers


@pytest.fixture(params=[1, 2])
def nthreads(request):
    """Run the test with Numba (and so run_chunks) on 1 and on 2 threads (capped by the machine)."""
    before = numba.get_num_threads()
    numba.set_num_threads(min(request.param, numba.config.NUMBA_NUM_THREADS))
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
    """Jobs back to back and with pauses between them (the helpers asleep): every chunk of every
    job runs once, and no helper piles up."""
    import threading
    import time

    for job in range(300):
        seen = np.zeros(7, np.int64)

        def fn(i, seen=seen):
            seen[i] += 1

        workers.run_chunks(fn, 7)
        np.testing.assert_array_equal(seen, np.ones(7, np.int64))
        if job % 50 == 0:
            time.sleep(0.002)                              # the helpers go to sleep
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


def test_a_deferred_call_runs_once_on_a_helper_or_at_result(nthreads):
    """`defer`: a helper runs the call when it has nothing else to do; ``result()`` waits for it,
    or runs it itself if nobody has started it (always so on one thread). Each call runs once."""
    import threading
    import time

    ran = []

    def call(i):
        ran.append((i, threading.current_thread().name))
        return i * i

    calls = [workers.defer(lambda i=i: call(i)) for i in range(20)]
    time.sleep(0.05)                                         # time for a helper to take some
    assert [d.result() for d in calls] == [i * i for i in range(20)]
    assert sorted(i for i, _ in ran) == list(range(20))     # each exactly once
    if nthreads == 1:
        assert {name for _, name in ran} == {threading.current_thread().name}


def test_a_deferred_calls_exception_reaches_result_and_the_pool_goes_on(nthreads):
    def boom():
        raise KeyError("deferred")

    d = workers.defer(boom)
    with pytest.raises(KeyError, match="deferred"):
        d.result()
    with pytest.raises(KeyError, match="deferred"):
        d.result()                                           # the same error again, not a second run
    assert workers.defer(lambda: 7).result() == 7
    seen = np.zeros(5, np.int64)

    def fn(i):
        seen[i] += 1

    workers.run_chunks(fn, 5)
    np.testing.assert_array_equal(seen, np.ones(5, np.int64))


def test_chunks_go_first_and_deferred_calls_fill_the_gaps(nthreads):
    """Jobs of chunks keep running while deferred calls wait: both finish, each call once."""
    x = np.ones((96, 96), np.float32)
    calls = [workers.defer(lambda: x @ x) for _ in range(30)]
    for _ in range(30):
        out = np.zeros((8, 96), np.float32)

        def fn(i, out=out):
            out[i] = (x @ x)[i]

        workers.run_chunks(fn, 8)
        assert (out == 96).all()
    for d in calls:
        assert (d.result() == 96).all()
