"""Test helpers: ``gradcheck`` (float64 central differences) and ``assert_close``."""

from __future__ import annotations

import numpy as np

from .tensor import Tensor

__all__ = ["gradcheck", "numerical_grad", "assert_close"]

_DEFAULT_TOL = {  # (rtol, atol) per dtype, torch.testing's defaults
    np.dtype(np.float16): (1e-3, 1e-5),
    np.dtype(np.float32): (1.3e-6, 1e-5),
    np.dtype(np.float64): (1e-7, 1e-7),
}


def _arr(x) -> np.ndarray:
    return x.data if isinstance(x, Tensor) else np.asarray(x)


def assert_close(actual, expected, rtol: float | None = None, atol: float | None = None, msg: str = "") -> None:
    """Raise AssertionError unless ``|actual - expected| <= atol + rtol * |expected|`` everywhere.

    Shapes must be equal; NaNs must sit in the same places. Default tolerances follow the
    less precise dtype (as torch.testing.assert_close).
    """
    a, e = _arr(actual), _arr(expected)
    if a.shape != e.shape:
        raise AssertionError(f"{msg}shape mismatch: actual {a.shape} vs expected {e.shape}")
    if rtol is None or atol is None:
        kinds = [d for d in (a.dtype, e.dtype) if d in _DEFAULT_TOL]
        dr, da = max((_DEFAULT_TOL[d] for d in kinds), default=(0.0, 0.0))
        rtol = dr if rtol is None else rtol
        atol = da if atol is None else atol
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    nan_a, nan_e = np.isnan(a64), np.isnan(e64)
    if not np.array_equal(nan_a, nan_e):
        raise AssertionError(f"{msg}NaN positions differ")
    with np.errstate(invalid="ignore"):
        diff = np.where(nan_a, 0.0, np.abs(a64 - e64))
        same_inf = np.isinf(a64) & (a64 == e64)
        diff = np.where(same_inf, 0.0, diff)
        bad = ~(diff <= atol + rtol * np.abs(np.where(np.isinf(e64), 0, e64)))
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, diff, -1)), a.shape) if a.ndim else ()
        n = int(bad.sum())
        raise AssertionError(
            f"{msg}{n} of {a.size} elements differ (rtol={rtol}, atol={atol}); worst at index {tuple(int(j) for j in i)}: "
            f"actual {a64[i]!r} vs expected {e64[i]!r} (abs diff {diff[i]:.3g})"
        )


def numerical_grad(fn, inputs, index: int, eps: float = 1e-6, weights=None) -> np.ndarray:
    """Central-difference d(sum(fn(*inputs) * weights))/d(inputs[index]) in float64."""
    x = inputs[index].data
    grad = np.zeros(x.shape, dtype=np.float64)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        plus = _arr(fn(*inputs)).astype(np.float64)
        x[i] = old - eps
        minus = _arr(fn(*inputs)).astype(np.float64)
        x[i] = old
        if weights is not None:
            plus, minus = plus * weights, minus * weights
        grad[i] = (plus.sum() - minus.sum()) / (2 * eps)
    return grad


def gradcheck(fn, inputs, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3, seed: int = 0) -> bool:
    """Compare autograd's gradients of ``fn`` with float64 central differences.

    ``inputs`` are Tensors; the float ones are cast to float64 copies that require grad. The
    output is reduced with fixed random weights (so every output element matters). Raises
    AssertionError naming the input and the worst element on mismatch; returns True otherwise.
    """
    ins = []
    for t in inputs:
        t = t if isinstance(t, Tensor) else Tensor(np.asarray(t))
        if t.dtype.kind == "f":
            t = Tensor(t.data.astype(np.float64), requires_grad=True)
        ins.append(t)
    out = fn(*ins)
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal(out.shape)
    (out * Tensor(weights)).sum().backward()
    analytic = [t.grad.data.copy() if t.grad is not None else None for t in ins]
    for i, t in enumerate(ins):
        if not t.requires_grad:
            continue
        num = numerical_grad(fn, ins, i, eps=eps, weights=weights)
        got = analytic[i] if analytic[i] is not None else np.zeros_like(num)
        assert_close(got, num, rtol=rtol, atol=atol, msg=f"gradcheck input {i} (shape {t.shape}): ")
    return True
