"""matmul: the Numba kernel and the public name equal the reference on every layout and batch broadcast."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

import axon_kernels as kernels
from axon_kernels._jit import jit_disabled
from axon_kernels.matmul import matmul_nb
from axon_kernels.testing import check_kernel, matmul_inputs

SMALL = dict(max_side=5, max_batch_dims=1) if jit_disabled() else dict(max_side=40)


@settings(max_examples=10 if jit_disabled() else 40, deadline=None)
@given(matmul_inputs(**SMALL))
def test_numba_kernel_equals_reference(args):
    out = check_kernel(matmul_nb, kernels.matmul_ref, **args.kwargs, reduction=args.reduction)
    want = np.float32 if all(a.dtype == np.float32 for a in args.kwargs.values()) else np.float64
    assert out.dtype == want


@settings(max_examples=10, deadline=None)
@given(matmul_inputs(**SMALL))
def test_public_name_equals_reference(args):
    check_kernel(kernels.matmul, kernels.matmul_ref, **args.kwargs, reduction=args.reduction)


def test_blocks_and_odd_sizes():
    """Sizes that cross every tile boundary (64 rows, 256 K, 512 N), leave 3 rows for the 4-row loop, and a K not a multiple of 4."""
    if jit_disabled():
        pytest.skip("covered by the hypothesis test at small sizes; this size is too slow as plain Python")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((67, 515)).astype(np.float32)
    b = rng.standard_normal((515, 521)).astype(np.float32)
    np.testing.assert_allclose(matmul_nb(a, b), a.astype(np.float64) @ b, rtol=1e-4, atol=515 * 8 * 1.2e-7 * 10)


def test_nan_and_inf_propagate():
    a = np.ones((3, 4), np.float32)
    b = np.ones((4, 2), np.float32)
    a[1, 2] = np.nan
    b[0, 1] = np.inf
    out = matmul_nb(a, b)
    assert np.isnan(out[1]).all() and np.isinf(out[[0, 2], 1]).all() and np.isfinite(out[[0, 2], 0]).all()


@pytest.mark.parametrize("fn", [kernels.matmul, kernels.matmul_ref, matmul_nb])
def test_bad_inputs_raise_clear_errors(fn):
    a = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="inner dimensions"):
        fn(a, a)
    with pytest.raises(ValueError, match=r"\[\.\.\., M, K\]"):
        fn(a[0], a.T)
    with pytest.raises(TypeError, match="float32 or float64"):
        fn(a.astype(np.int32), a.T)
    with pytest.raises(ValueError, match="do not broadcast"):
        fn(np.zeros((2, 2, 3)), np.zeros((3, 3, 2)))
