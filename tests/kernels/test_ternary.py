"""Ternary (BitNet b1.58) kernels: packing round-trips, quantisation follows the formulas, the
int8 x ternary kernel equals its reference exactly and act_quant(x) @ weight_quant(W).T."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

import axon_kernels as kernels
from axon_kernels.ternary import ternary_matmul_nb
from axon_kernels.testing import check_kernel, ternary_inputs


def weight_quant(w):
    """The b1.58 weight formula, written independently of the kernels (float32, half-to-even)."""
    w = w.astype(np.float32)
    s = np.float32(1) / max(np.abs(w).mean(dtype=np.float32), np.float32(1e-5))
    return np.clip(np.round(w * s), -1, 1) / s


def act_quant(x):
    x = x.astype(np.float32)
    a = np.float32(127) * (np.float32(1) / np.maximum(np.abs(x).max(-1, keepdims=True), np.float32(1e-5)))  # torch's 127/m
    return np.clip(np.round(x * a), -128, 127) / a


@settings(max_examples=40, deadline=None)
@given(ternary_inputs())
def test_kernel_equals_reference_and_the_float_formula(args):
    w, x = args.kwargs["W"], args.kwargs["x"]
    packed, scale = kernels.ternary_quantize(w)
    n_in = w.shape[1]
    assert packed.dtype == np.uint8 and packed.shape == (w.shape[0], (n_in + 3) // 4)
    got = check_kernel(ternary_matmul_nb, kernels.ternary_matmul_ref, x, packed, scale, n_in, rtol=0, atol=0)
    assert got.dtype == np.float32 and got.shape == x.shape[:-1] + (w.shape[0],)
    want = act_quant(x).astype(np.float64) @ weight_quant(w).astype(np.float64).T
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(initial=1.0))
    check_kernel(kernels.ternary_matmul, kernels.ternary_matmul_ref, x, packed, scale, n_in, rtol=0, atol=0)


@settings(max_examples=30, deadline=None)
@given(ternary_inputs())
def test_pack_unpack_round_trip_and_quantize_formula(args):
    w = args.kwargs["W"]
    packed, scale = kernels.ternary_quantize(w)
    t = kernels.ternary_unpack(packed, w.shape[1])
    # mean|W| may round differently in the last bit depending on the summation order (layout)
    np.testing.assert_allclose(t / np.float32(scale), weight_quant(w), rtol=4 * np.finfo(np.float32).eps, atol=0)
    np.testing.assert_array_equal(kernels.ternary_pack(t), packed)


def test_rounding_is_half_to_even_and_packing_layout():
    w = np.array([[0.5, -0.5, 1.5, -1.5, 2.0, 0.0]], np.float32)  # mean|w| = 1 -> s = 1
    packed, scale = kernels.ternary_quantize(w)
    assert scale == 1.0
    np.testing.assert_array_equal(kernels.ternary_unpack(packed, 6), [[0, 0, 1, -1, 1, 0]])
    # G = 2 bytes a row; byte j holds columns j, j+2, j+4, j+6 (col 6, 7 are padding = code 1)
    codes = [[1, 2, 2, 1], [1, 0, 1, 1]]  # codes t + 1 of columns (0, 2, 4, pad) and (1, 3, 5, pad)
    assert packed.tolist() == [[sum(c << (2 * k) for k, c in enumerate(codes[j])) for j in range(2)]]


def test_weight_memory_is_one_sixteenth():
    w = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    packed, _ = kernels.ternary_quantize(w)
    assert packed.nbytes * 16 == w.nbytes


@pytest.mark.parametrize("fn", [kernels.ternary_matmul, kernels.ternary_matmul_ref, ternary_matmul_nb])
def test_non_finite_token_gives_nan_row(fn):
    rng = np.random.default_rng(0)
    packed, scale = kernels.ternary_quantize(rng.standard_normal((5, 8)).astype(np.float32))
    x = rng.standard_normal((3, 8)).astype(np.float32)
    x[1, 3] = np.nan
    x[2, 0] = np.inf
    y = fn(x, packed, scale, 8)
    assert np.isfinite(y[0]).all() and np.isnan(y[1:]).all()


def test_bad_inputs_raise_clear_errors():
    w = np.zeros((4, 8), np.float32)
    packed, scale = kernels.ternary_quantize(w)
    with pytest.raises(ValueError, match="NaN or Inf"):
        kernels.ternary_quantize(np.full((2, 2), np.nan, np.float32))
    with pytest.raises(TypeError, match="float"):
        kernels.ternary_quantize(np.zeros((2, 2), np.int8))
    with pytest.raises(ValueError, match="in_features"):
        kernels.ternary_matmul(np.zeros((1, 9), np.float32), packed, scale, 9)
    with pytest.raises(ValueError, match=r"\[\.\.\., in_features=8\]"):
        kernels.ternary_matmul(np.zeros((1, 7), np.float32), packed, scale, 8)
    with pytest.raises(ValueError, match="positive finite"):
        kernels.ternary_matmul(np.zeros((1, 8), np.float32), packed, -1.0, 8)
    with pytest.raises(TypeError, match="uint8"):
        kernels.ternary_matmul(np.zeros((1, 8), np.float32), packed.astype(np.int8), scale, 8)
    with pytest.raises(ValueError, match="only -1, 0 and 1"):
        kernels.ternary_pack(np.array([[2, 0]]))


def test_parallel_path_equals_reference():
    """Products of >= 2^18 packed bytes run the parallel kernel (smaller ones the serial one)."""
    from axon_kernels._jit import jit_disabled
    from axon_kernels.ternary import _PARALLEL_MIN_BYTES

    if jit_disabled():
        pytest.skip("same loop nest as the serial path, which the other tests cover; too slow as plain Python")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((520, 2050)).astype(np.float32)
    packed, scale = kernels.ternary_quantize(w)
    assert packed.size >= _PARALLEL_MIN_BYTES
    x = rng.standard_normal((3, 2050)).astype(np.float32)
    np.testing.assert_array_equal(ternary_matmul_nb(x, packed, scale, 2050), kernels.ternary_matmul_ref(x, packed, scale, 2050))
