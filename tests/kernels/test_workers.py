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
