"""`axon_kernels.blas.gemm` (rows of a product split over Python threads) against `gemm_ref`."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from axon_kernels import blas


@pytest.fixture
def two_threads():
    before = blas.gemm_threads()
    blas.set_gemm_threads(2)
    yield
    blas.set_gemm_threads(before)


@pytest.mark.parametrize("shape", [(1024, 256, 688), (300, 200, 100), (96, 1000, 64), (7, 5, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_equals_reference(two_threads, shape, dtype):
    m, k, n = shape
    rng = np.random.default_rng(m)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    got = blas.gemm(a, b)
    want = blas.gemm_ref(a, b)
    assert got.dtype == want.dtype and got.shape == (m, n)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.sqrt(k))


def test_gemm_transposed_operands_and_out(two_threads):
    rng = np.random.default_rng(1)
    g = rng.standard_normal((1024, 300)).astype(np.float32)   # [N, out]
    x = rng.standard_normal((1024, 256)).astype(np.float32)   # [N, in]
    w = rng.standard_normal((300, 256)).astype(np.float32)    # [out, in]
    np.testing.assert_allclose(blas.gemm(g.T, x), g.T @ x, rtol=1e-4, atol=1e-3)   # the weight gradient
    np.testing.assert_allclose(blas.gemm(x, w.T), x @ w.T, rtol=1e-4, atol=1e-3)   # the forward
    out = np.full((1024, 256), np.nan, np.float32)
    assert blas.gemm(g, w, out=out) is out
    np.testing.assert_allclose(out, g @ w, rtol=1e-4, atol=1e-3)


def test_gemm_propagates_nan_and_inf(two_threads):
    a = np.ones((512, 128), np.float32)
    b = np.ones((128, 256), np.float32)
    a[300, 5] = np.nan
    b[7, 9] = np.inf
    got = blas.gemm(a, b)
    want = a @ b
    assert np.array_equal(np.isnan(got), np.isnan(want)) and np.array_equal(np.isinf(got), np.isinf(want))


def test_gemm_from_several_caller_threads(two_threads):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((512, 256)).astype(np.float32)
    b = rng.standard_normal((256, 384)).astype(np.float32)
    want = a @ b
    errors = []

    def call():
        for _ in range(5):
            if not np.allclose(blas.gemm(a, b), want, rtol=1e-4, atol=1e-3):
                errors.append("mismatch")

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_gemm_bad_shapes_and_thread_counts(two_threads):
    with pytest.raises(ValueError):
        blas.gemm(np.ones((512, 256), np.float32), np.ones((255, 512), np.float32))
    with pytest.raises(ValueError, match="positive"):
        blas.set_gemm_threads(0)


def _policy_in_subprocess(env_extra: dict) -> dict:
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = ("import json, os, ctypes, numba; import axon_kernels; from axon_kernels import blas\n"
            "paths = {l.split()[-1] for l in open('/proc/self/maps') if 'openblas' in l.lower() and '/' in l}\n"
            "n = None\n"
            "for p in paths:\n"
            "    lib = ctypes.CDLL(p)\n"
            "    for name in ('scipy_openblas_get_num_threads64_', 'openblas_get_num_threads64_', 'openblas_get_num_threads'):\n"
            "        if hasattr(lib, name): n = getattr(lib, name)(); break\n"
            "print(json.dumps({'gemm': blas.gemm_threads(), 'blas': n, 'cores': numba.config.NUMBA_NUM_THREADS,"
            " 'wait': os.environ.get('OMP_WAIT_POLICY')}))")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "GOTO_NUM_THREADS",
                                                            "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update(env_extra, PYTHONPATH=os.pathsep.join([str(root), str(root / "kernels")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_policy_and_the_users_settings():
    """Importing axon_kernels puts OpenBLAS on one thread and splits products over the cores, with
    passive OpenMP waiting; a BLAS thread count or wait policy the user set is left alone."""
    default = _policy_in_subprocess({})
    assert default["wait"] == "PASSIVE"
    if default["blas"] is not None:                              # NumPy's BLAS is an OpenBLAS
        assert default["blas"] == 1 and default["gemm"] == default["cores"]
    else:                                                        # another BLAS keeps its threads
        assert default["gemm"] == 1
    user = _policy_in_subprocess({"OPENBLAS_NUM_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"})
    assert user["gemm"] == 1 and user["wait"] == "ACTIVE"
    if user["blas"] is not None:
        assert user["blas"] == min(2, os.cpu_count())           # OpenBLAS caps its count at the cores


def test_gemm_into_a_column_block(two_threads):
    """``out`` may be a strided view: the quantised prefill writes each chunk of W's rows into a
    column block of its result."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 256)).astype(np.float32)
    dense = rng.standard_normal((256, 300)).astype(np.float32)
    y = np.zeros((500, 700), np.float32)
    blas.gemm(x, dense, out=y[:, 100:400])
    np.testing.assert_allclose(y[:, 100:400], x @ dense, rtol=1e-4, atol=1e-3)
    assert not y[:, :100].any() and not y[:, 400:].any()


def test_bench_threads_gemm_part_runs(capsys):
    """benchmarks/bench_threads.py's product comparison runs and names OpenBLAS's two threads as
    the peer of every ratio."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_threads.py"
    spec = importlib.util.spec_from_file_location("bench_threads", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    before = blas.gemm_threads()
    try:
        assert bench.main(["--part", "gemm", "--rounds", "1", "--busy", "no"]) == 0
    finally:
        blas.set_gemm_threads(before)
    out = capsys.readouterr().out
    assert "OpenBLAS 2 threads" in out and "gemm split 2 (axon)" in out and "x)" in out


def test_bench_gemm_split_smoke(capsys):
    """benchmarks/bench_gemm_split.py runs in its smoke size (numbers mean nothing there) and
    prints each question's answer line."""
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "benchmarks"
    sys.path.insert(0, str(root))
    try:
        spec = importlib.util.spec_from_file_location("bench_gemm_split", root / "bench_gemm_split.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        before = blas.gemm_threads()
        try:
            assert bench.main(["--smoke", "--step"]) == 0
        finally:
            blas.set_gemm_threads(before)
    finally:
        sys.path.remove(str(root))
    out = capsys.readouterr().out
    assert "1 chunk" in out and "side by side" in out and "summed medians" in out
    assert "3. training step" in out
