"""selective_scan: Numba kernel == reference (forward, backward, one-step decode); the
reference backward == central differences; the step function replays the scan."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

import axon_kernels as kernels
from axon_kernels._jit import jit_disabled
from axon_kernels.scan import selective_scan_backward_nb, selective_scan_nb, selective_scan_step_nb
from axon_kernels.testing import scan_inputs, check_kernel

SMALL = dict(max_len=5, max_channels=9, max_state=3) if jit_disabled() else {}
EXAMPLES = 10 if jit_disabled() else 40


@settings(max_examples=EXAMPLES, deadline=None)
@given(scan_inputs(**SMALL))
def test_numba_kernel_equals_reference(args):
    check_kernel(selective_scan_nb, kernels.selective_scan_ref, **args.kwargs, return_last_state=True, reduction=args.reduction)


@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(scan_inputs(**SMALL))
def test_public_name_equals_reference(args):
    check_kernel(kernels.selective_scan, kernels.selective_scan_ref, **args.kwargs, reduction=args.reduction)


@settings(max_examples=EXAMPLES, deadline=None)
@given(scan_inputs(**SMALL))
def test_backward_numba_kernel_equals_reference(args):
    kw = args.kwargs
    rng = np.random.default_rng(0)
    dtype = kw["u"].dtype
    dout = rng.standard_normal(kw["u"].shape).astype(dtype)
    dlast = rng.standard_normal(kw["u"].shape[:2] + (kw["A"].shape[1],)).astype(dtype)
    check_kernel(selective_scan_backward_nb, kernels.selective_scan_backward_ref, dout=dout, dlast_state=dlast,
                 **kw, reduction=4 * args.reduction * kw["u"].shape[1])


@settings(max_examples=6, deadline=None)
@given(scan_inputs(max_len=4, max_channels=3, max_state=2))
def test_reference_backward_equals_central_differences(args):
    kw = {k: (np.array(v, dtype=np.float64) if isinstance(v, np.ndarray) else v) for k, v in args.kwargs.items()}
    names = [n for n in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias") if kw.get(n) is not None]
    rng = np.random.default_rng(2)
    y, last = kernels.selective_scan_ref(**kw, return_last_state=True)
    dout = rng.standard_normal(y.shape)
    dlast = rng.standard_normal(last.shape)

    def loss(**over):
        y, last = kernels.selective_scan_ref(**{**kw, **over}, return_last_state=True)
        return (y * dout).sum() + (last * dlast).sum()

    grads = dict(zip(("u", "delta", "A", "B", "C", "D", "z", "delta_bias"),
                     kernels.selective_scan_backward_ref(dout=dout, dlast_state=dlast, **kw)))
    eps = 1e-6
    for name in names:
        x = kw[name]
        num = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            plus, minus = x.copy(), x.copy()
            plus[idx] += eps
            minus[idx] -= eps
            num[idx] = (loss(**{name: plus}) - loss(**{name: minus})) / (2 * eps)
        np.testing.assert_allclose(grads[name], num, rtol=1e-5, atol=1e-7, err_msg=f"d{name}")
    for name in ("D", "z", "delta_bias"):
        assert (grads[name] is None) == (kw.get(name) is None)


@pytest.mark.parametrize("step", [selective_scan_step_nb, kernels.selective_scan_step_ref, kernels.selective_scan_step])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_replays_the_scan(step, dtype):
    rng = np.random.default_rng(0)
    b, d, l, n = 2, 5, 7, 3
    u, z = (rng.standard_normal((b, d, l)).astype(dtype) for _ in range(2))
    delta = rng.standard_normal((b, d, l)).astype(dtype)
    A = -np.exp(rng.standard_normal((d, n))).astype(dtype)
    B, C = (rng.standard_normal((b, n, l)).astype(dtype) for _ in range(2))
    D, bias = (rng.standard_normal(d).astype(dtype) for _ in range(2))
    y, last = kernels.selective_scan_ref(u, delta, A, B, C, D, z, bias, delta_softplus=True, return_last_state=True)
    state = np.zeros((b, d, n), dtype)
    ys = [step(state, u[..., t], delta[..., t], A, B[..., t], C[..., t], D, z[..., t], bias, True) for t in range(l)]
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(np.stack(ys, axis=-1), y, rtol=tol, atol=tol)
    np.testing.assert_allclose(state, last, rtol=tol, atol=tol)


@pytest.mark.parametrize("fn", [kernels.selective_scan, kernels.selective_scan_ref, selective_scan_nb])
def test_nan_propagates(fn):
    rng = np.random.default_rng(0)
    u = rng.standard_normal((1, 3, 6)).astype(np.float32)
    delta = np.full((1, 3, 6), 0.5, np.float32)
    A = -np.ones((3, 2), np.float32)
    B = C = rng.standard_normal((1, 2, 6)).astype(np.float32)
    u[0, 1, 2] = np.nan
    y = fn(u, delta, A, B, C)
    assert np.isnan(y[0, 1, 2:]).all()  # the NaN stays in the state of channel 1 from t = 2 on
    assert np.isfinite(y[0, 1, :2]).all() and np.isfinite(y[0, [0, 2]]).all()


@pytest.mark.parametrize("fn", [kernels.selective_scan, kernels.selective_scan_ref, selective_scan_nb])
def test_bad_inputs_raise_clear_errors(fn):
    u = np.zeros((1, 3, 4), np.float32)
    A = np.zeros((3, 2), np.float32)
    B = np.zeros((1, 2, 4), np.float32)
    with pytest.raises(ValueError, match="u must have 3 dimensions"):
        fn(u[0], u, A, B, B)
    with pytest.raises(ValueError, match=r"B must be \[b, n, l\]"):
        fn(u, u, A, B[:, :1], B)
    with pytest.raises(ValueError, match=r"A must be \[d, n\]"):
        fn(u, u, A[:2], B, B)
    with pytest.raises(TypeError, match="float32 or float64"):
        fn(u.astype(np.int64), u, A, B, B)
    with pytest.raises(ValueError, match="D must be"):
        fn(u, u, A, B, B, D=np.zeros(2, np.float32))


def test_step_requires_a_writeable_float_state():
    x = np.zeros((1, 3), np.float32)
    A = np.zeros((3, 2), np.float32)
    B = np.zeros((1, 2), np.float32)
    with pytest.raises(TypeError, match="state must be"):
        kernels.selective_scan_step(np.zeros((1, 3, 2), np.int32), x, x, A, B, B)
    with pytest.raises(ValueError, match="writeable"):
        kernels.selective_scan_step(np.broadcast_to(np.zeros((1, 3, 2), np.float32), (1, 3, 2)), x, x, A, B, B)


def test_backward_bad_inputs_raise_clear_errors():
    u = np.zeros((1, 3, 4), np.float32)
    A = np.zeros((3, 2), np.float32)
    B = np.zeros((1, 2, 4), np.float32)
    with pytest.raises(ValueError, match="u must have 3 dimensions"):
        kernels.selective_scan_backward(u[0], u, A, B, B, u)
    with pytest.raises(ValueError, match=r"dout must have shape \(1, 3, 4\)"):
        kernels.selective_scan_backward(u, u, A, B, B, u[..., :3])
    with pytest.raises(ValueError, match=r"dlast_state must have shape \(1, 3, 2\)"):
        kernels.selective_scan_backward(u, u, A, B, B, u, dlast_state=np.zeros((1, 3, 3), np.float32))
