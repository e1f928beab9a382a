"""axon_kernels.testing: the strategies really produce every layout, and check_kernel fails on the
mistakes it exists to catch (wrong values, wrong shapes, NaN in the wrong place, mutated inputs)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import axon_kernels as kernels
from axon_kernels.testing import (
    LAYOUTS, array_and_dim, arrays, broadcastable_pair, check_kernel, default_tolerance, matmul_inputs,
)


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_arrays_have_the_requested_layout(data):
    layout = data.draw(st.sampled_from(LAYOUTS))
    a = data.draw(arrays((3, 4), np.float32, layout=layout))
    assert a.shape == (3, 4) and a.dtype == np.float32
    if layout == "contiguous":
        assert a.flags.c_contiguous
    elif layout == "transposed":
        assert a.flags.f_contiguous and not a.flags.c_contiguous
    elif layout == "sliced":
        assert not a.flags.c_contiguous and not a.flags.f_contiguous
    else:
        assert 0 in a.strides and not a.flags.writeable


def test_tolerance_scales_with_reduction_length():
    assert default_tolerance(np.float32, 100) == pytest.approx(100 * default_tolerance(np.float32, 1))
    assert default_tolerance(np.float64, 10) < default_tolerance(np.float32, 10)


@settings(max_examples=10, deadline=None)
@given(matmul_inputs(max_side=6))
def test_check_kernel_accepts_a_correct_kernel(args):
    check_kernel(lambda a, b: np.matmul(a, b), kernels.matmul_ref, **args.kwargs, reduction=args.reduction)


def test_check_kernel_rejects_wrong_values():
    a = np.ones((3, 4), np.float32)
    with pytest.raises(AssertionError, match="differs"):
        check_kernel(lambda a, b: np.matmul(a, b) * (1 + 1e-3), kernels.matmul_ref, a, a.T, reduction=4)


def test_check_kernel_rejects_wrong_shape_and_missing_output():
    a = np.ones((3, 4), np.float32)
    with pytest.raises(AssertionError, match="shape"):
        check_kernel(lambda a, b: np.matmul(a, b)[:2], kernels.matmul_ref, a, a.T)
    with pytest.raises(AssertionError, match="outputs"):
        check_kernel(lambda a, b: (np.matmul(a, b), None), kernels.matmul_ref, a, a.T)


def test_check_kernel_rejects_nan_in_the_wrong_place():
    a = np.ones((2, 2))

    def bad(a, b):
        out = np.matmul(a, b)
        out[0, 0] = np.nan
        return out

    with pytest.raises(AssertionError):
        check_kernel(bad, kernels.matmul_ref, a, a)


def test_check_kernel_rejects_a_kernel_that_writes_its_inputs():
    def sneaky(a, b):
        a *= 1.0 + 1e-3
        return np.matmul(a, b)

    with pytest.raises(AssertionError, match="modified an input"):
        check_kernel(sneaky, kernels.matmul_ref, np.ones((2, 2)), np.ones((2, 2)))


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_hypothesis_values_stay_in_bounds_in_the_allowed_layouts(data):
    shape = data.draw(st.sampled_from([(3,), (2, 3), (2, 3, 2)]))
    allowed = ("sliced", "transposed")
    a = data.draw(arrays(shape, np.float64, lo=-0.5, hi=2.0, layouts=allowed, values="hypothesis"))
    assert a.shape == shape and a.dtype == np.float64
    assert np.all((a >= -0.5) & (a <= 2.0))
    assert a.flags.writeable and (len(shape) == 1 or not a.flags.c_contiguous)   # never contiguous / broadcast here


@settings(max_examples=30, deadline=None)
@given(pair=broadcastable_pair(), ad=array_and_dim())
def test_pairs_broadcast_and_dims_are_valid(pair, ad):
    np.broadcast_shapes(pair[0].shape, pair[1].shape)
    a, dim = ad
    assert -a.ndim <= dim < a.ndim


@settings(max_examples=1, deadline=None)
@given(st.data())
def test_unknown_layout_or_values_is_a_clear_error(data):
    with pytest.raises(ValueError, match="layout"):
        data.draw(arrays((2,), layout="diagonal"))
    with pytest.raises(ValueError, match="values"):
        data.draw(arrays((2,), values="normal"))
