"""Zero-length axes give empty (or zero) results of the right shape from every implementation,
never a NumPy error from inside a kernel."""

from __future__ import annotations

import numpy as np
import pytest

import axon_kernels as kernels
from axon_kernels.attention import flash_attention_backward_nb, flash_attention_nb
from axon_kernels.matmul import matmul_nb
from axon_kernels.scan import selective_scan_backward_nb, selective_scan_nb
from axon_kernels.ternary import ternary_matmul_nb


@pytest.mark.parametrize("fwd,bwd", [(flash_attention_nb, flash_attention_backward_nb),
                                     (kernels.flash_attention_ref, kernels.flash_attention_backward_ref)])
@pytest.mark.parametrize("tk", [0, 3])
def test_attention_without_queries(fwd, bwd, tk):
    q = np.zeros((1, 2, 0, 4), np.float32)
    k = np.ones((1, 2, tk, 4), np.float32)
    out, lse = fwd(q, k, k)
    assert out.shape == (1, 2, 0, 4) and lse.shape == (1, 2, 0)
    dq, dk, dv = bwd(q, k, k, out, lse, out)
    assert dq.shape == q.shape and dk.shape == k.shape and not dk.any() and not dv.any()


@pytest.mark.parametrize("fwd,bwd", [(selective_scan_nb, selective_scan_backward_nb),
                                     (kernels.selective_scan_ref, kernels.selective_scan_backward_ref)])
def test_scan_of_length_zero(fwd, bwd):
    u = np.zeros((1, 3, 0), np.float32)
    A = np.zeros((3, 2), np.float32)
    B = np.zeros((1, 2, 0), np.float32)
    y, last = fwd(u, u, A, B, B, return_last_state=True)
    assert y.shape == (1, 3, 0) and last.shape == (1, 3, 2) and not last.any()
    grads = bwd(u, u, A, B, B, u)
    assert [g.shape for g in grads[:5]] == [(1, 3, 0), (1, 3, 0), (3, 2), (1, 2, 0), (1, 2, 0)]


@pytest.mark.parametrize("fn", [matmul_nb, kernels.matmul_ref])
def test_matmul_with_empty_axes(fn):
    assert fn(np.zeros((0, 3), np.float32), np.zeros((3, 2), np.float32)).shape == (0, 2)
    np.testing.assert_array_equal(fn(np.zeros((2, 0)), np.zeros((0, 2))), np.zeros((2, 2)))
    assert fn(np.zeros((0, 2, 3)), np.zeros((3, 2))).shape == (0, 2, 2)


@pytest.mark.parametrize("fn", [ternary_matmul_nb, kernels.ternary_matmul_ref])
def test_ternary_with_empty_axes(fn):
    packed, scale = kernels.ternary_quantize(np.zeros((3, 0), np.float32))
    np.testing.assert_array_equal(fn(np.zeros((2, 0), np.float32), packed, scale, 0), np.zeros((2, 3)))
    packed, scale = kernels.ternary_quantize(np.ones((3, 5), np.float32))
    assert fn(np.zeros((0, 5), np.float32), packed, scale, 5).shape == (0, 3)
