"""Each fused op of ``axon.nn._fused`` equals its composite built from autograd primitives.

For every one of the eight ops (Linear, LayerNorm, RMSNorm, SwiGLU, Embedding, CrossEntropy,
Dropout, Conv1d), in float64:

* forward: the fused node's output equals the composite's;
* backward: the hand-written gradients of ``sum(out * W)`` (``W`` fixed random weights, so
  every output element matters) equal the gradients autograd derives through the composite;
* and the fused node passes float64 central differences (``axon.testing.gradcheck``).

Tolerance ``1e-10`` (relative and absolute): both sides compute the same function in float64
with different operation orders, so they differ by the float64 unit roundoff ``1.1e-16`` times
the longest reduction (here < 50 terms) times the values' magnitude (< 100): ~1e-12. A wrong
formula (a missing term, a wrong sign or scale, a gradient scattered to the wrong row) is
O(1) off; ``test_the_check_catches_a_wrong_backward`` shows one such mutation fails.
"""

from __future__ import annotations

import numpy as np
import pytest

import axon
from axon.nn import _fused
from axon.testing import assert_close, gradcheck

TOL = 1e-10


def _tensors(arrays):
    return [axon.Tensor(np.array(a), requires_grad=True) if isinstance(a, np.ndarray) and a.dtype.kind == "f"
            else a for a in arrays]


def check_against_composite(fused, composite, *inputs, numeric: bool = True) -> None:
    """``fused(*inputs)`` equals ``composite(*inputs)`` in value and in every float input's gradient,
    and (``numeric``) passes float64 central differences in every float input."""
    a, b = _tensors(inputs), _tensors(inputs)
    out_f, out_c = fused(*a), composite(*b)
    assert out_f.shape == out_c.shape
    assert_close(out_f, out_c.numpy(), rtol=TOL, atol=TOL)
    w = axon.Tensor(np.random.default_rng(7).standard_normal(out_f.shape))
    (out_f * w).sum().backward()
    (out_c * w).sum().backward()
    for i, (tf, tc) in enumerate(zip(a, b)):
        if isinstance(tf, axon.Tensor) and tf.requires_grad:
            assert tf.grad is not None and tc.grad is not None, f"input {i} got no gradient"
            assert_close(tf.grad, tc.grad.numpy(), rtol=TOL, atol=TOL)
    if not numeric:
        return
    idx = [i for i, x in enumerate(inputs) if isinstance(x, np.ndarray) and x.dtype.kind == "f"]

    def only(*ts):
        full = list(inputs)
        for i, t in zip(idx, ts):
            full[i] = t
        return fused(*full)

    gradcheck(only, [axon.Tensor(inputs[i]) for i in idx])


rng = np.random.default_rng(0)


def randn(*shape):
    return rng.standard_normal(shape)


# ------------------------------------------------------------------------------ linear
@pytest.mark.parametrize("bias", [True, False])
def test_linear(bias):
    def composite(x, w, b=None):
        y = x @ w.transpose(0, 1)                                         # [..., out]
        return y + b if b is not None else y

    def fused(x, w, b=None):
        return _fused.Linear.apply(x, w, b)

    args = (randn(2, 3, 4), randn(5, 4)) + ((randn(5),) if bias else ())
    check_against_composite(fused, composite, *args)


# ------------------------------------------------------------------------------ norms
@pytest.mark.parametrize("n, affine", [(1, True), (2, True), (1, False)])
def test_layer_norm(n, affine):
    eps = 1e-5
    dims = tuple(range(-n, 0))

    def composite(x, w=None, b=None):
        mu = x.mean(dims, keepdim=True)
        var = ((x - mu) * (x - mu)).mean(dims, keepdim=True)
        y = (x - mu) / (var + eps).sqrt()
        return y * w + b if w is not None else y

    def fused(x, w=None, b=None):
        return _fused.LayerNorm.apply(x, w, b, n=n, eps=eps)

    shape = (2, 3, 4)[-n:]
    args = (randn(2, 3, 4),) + ((randn(*shape), randn(*shape)) if affine else ())
    check_against_composite(fused, composite, *args)


@pytest.mark.parametrize("affine", [True, False])
def test_rms_norm(affine):
    eps = 1e-6

    def composite(x, w=None):
        y = x / ((x * x).mean(-1, keepdim=True) + eps).sqrt()
        return y * w if w is not None else y

    def fused(x, w=None):
        return _fused.RMSNorm.apply(x, w, eps=eps)

    check_against_composite(fused, composite, *((randn(2, 3, 5),) + ((randn(5),) if affine else ())))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rms_norm_kernels_equal_their_references(dtype):
    """The Numba RMSNorm forward and backward equal the NumPy definitions to the dtype's rounding
    (row sums over D=96 terms of magnitude < ~20: float32 ~1e-5 relative, float64 ~1e-12); a NaN
    or Inf in a row stays in that row."""
    from axon_kernels.rms_norm import (rms_norm_backward_nb, rms_norm_backward_ref, rms_norm_forward_nb,
                                       rms_norm_forward_ref)

    rng = np.random.default_rng(7)
    x = (rng.standard_normal((33, 96)) * 3).astype(dtype)
    w = rng.standard_normal(96).astype(dtype)
    g = rng.standard_normal((33, 96)).astype(dtype)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    y, rstd = rms_norm_forward_nb(x, w, 1e-6)
    y_ref, rstd_ref = rms_norm_forward_ref(x, w, 1e-6)
    assert y.dtype == rstd.dtype == dtype
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(rstd, rstd_ref, rtol=tol)
    gx, gw = rms_norm_backward_nb(g, x, rstd_ref, w)
    gx_ref, gw_ref = rms_norm_backward_ref(g, x, rstd_ref, w)
    assert gx.dtype == gw.dtype == dtype
    np.testing.assert_allclose(gx, gx_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(gw, gw_ref, rtol=tol, atol=tol * 10)
    x[3, 5], x[7, 0] = np.nan, np.inf
    y, rstd = rms_norm_forward_nb(x, w, 1e-6)
    assert np.isnan(y[3]).all() and not np.isfinite(y[7, 0]) and np.isfinite(np.delete(y, [3, 7], axis=0)).all()


# ------------------------------------------------------------------------------ SwiGLU
def test_swiglu():
    def composite(g, u):
        return g / (1 + (-g).exp()) * u                                   # silu(g) * u from primitives

    def fused(g, u):
        return _fused.SwiGLU.apply(g, u)

    g = randn(2, 3, 7) * 4                                                # both tails of the sigmoid
    check_against_composite(fused, composite, g, randn(2, 3, 7))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_swiglu_kernels_equal_their_references(dtype):
    """The Numba SwiGLU forward and backward equal the NumPy definitions to the dtype's rounding
    (a few ulp of products of values < ~100: float32 1e-5 relative, float64 1e-12); NaN and Inf
    give what the reference gives."""
    from axon_kernels.swiglu import swiglu_backward_nb, swiglu_backward_ref, swiglu_forward_nb, swiglu_forward_ref

    rng = np.random.default_rng(5)
    gate = (rng.standard_normal(500) * 6).astype(dtype)                  # both tails of the sigmoid
    up, g = rng.standard_normal(500).astype(dtype), rng.standard_normal(500).astype(dtype)
    gate[:4] = [np.nan, np.inf, -np.inf, -200.0]
    tol = 1e-5 if dtype == np.float32 else 1e-12
    y, y_ref = swiglu_forward_nb(gate, up), swiglu_forward_ref(gate, up)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
    for got, want in zip(swiglu_backward_nb(g, gate, up), swiglu_backward_ref(g, gate, up)):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_swiglu_rejects_mismatched_shapes():
    import axon.nn.functional as F

    with pytest.raises(ValueError, match="gate shape"):
        F.swiglu(axon.Tensor(np.zeros((2, 3))), axon.Tensor(np.zeros((2, 4))))


# ------------------------------------------------------------------------------ embedding
@pytest.mark.parametrize("padding_idx", [None, 2])
def test_embedding(padding_idx):
    ids = np.array([[1, 2, 1, 0], [4, 2, 2, 3]])                          # repeated ids sum their rows

    def composite(ids, w):
        rows = w[ids]                                                     # [..., D]
        if padding_idx is None:
            return rows
        pad = axon.Tensor((ids == padding_idx)[..., None].astype(np.float64))
        return rows * (1 - pad) + rows.detach() * pad                     # the padding row gets no gradient

    def fused(ids, w):
        return _fused.Embedding.apply(ids, w, padding_idx=padding_idx)

    # with padding_idx the padding row's gradient is 0 by definition (torch's), not the derivative
    check_against_composite(fused, composite, ids, randn(5, 3), numeric=padding_idx is None)


# ------------------------------------------------------------------------------ cross-entropy
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy(reduction, smoothing):
    ignore = -100
    target = np.array([0, 3, ignore, 1, 3, 2])

    def composite(logits, target):
        lp = logits.log_softmax(-1)                                       # [N, C]
        valid = target != ignore
        safe = np.where(valid, target, 0)
        nll = -lp[np.arange(len(target)), safe]                           # [N]
        loss = (1 - smoothing) * nll - smoothing * lp.mean(-1)
        loss = loss * axon.Tensor(valid.astype(np.float64))
        if reduction == "none":
            return loss
        return loss.sum() / (int(valid.sum()) if reduction == "mean" else 1)

    def fused(logits, target):
        return _fused.CrossEntropy.apply(logits, target, ignore_index=ignore, label_smoothing=smoothing,
                                         reduction=reduction)

    check_against_composite(fused, composite, randn(6, 4) * 3, target)


# ------------------------------------------------------------------------------ dropout
@pytest.mark.parametrize("p", [0.0, 0.3, 0.9])
def test_dropout(p):
    seed = 11

    def composite(x):
        keep = np.random.default_rng(seed).random(x.shape, dtype=np.float32) >= p   # the same draw
        return x * axon.Tensor(keep.astype(np.float64)) / (1 - p)

    def fused(x):
        return _fused.Dropout.apply(x, p=p, rng=np.random.default_rng(seed))

    check_against_composite(fused, composite, randn(4, 6))


# ------------------------------------------------------------------------------ conv1d
@pytest.mark.parametrize("cin, cout, k, stride, dilation, groups, bias", [
    (4, 6, 3, 1, 1, 1, True),       # dense
    (4, 6, 2, 2, 2, 2, True),       # grouped, strided, dilated
    (5, 5, 4, 1, 1, 5, True),       # depthwise (Mamba's causal conv)
    (3, 3, 2, 2, 3, 3, False),      # depthwise, strided, dilated, no bias
])
def test_conv1d(cin, cout, k, stride, dilation, groups, bias):
    length = 11

    def composite(x, w, b=None):
        # y[b, o, t] = sum_{i in o's group, j} w[o, i, j] x[b, i, t*stride + j*dilation] (+ bias[o])
        lout = (length - dilation * (k - 1) - 1) // stride + 1
        cin_g, cout_g = cin // groups, cout // groups
        outs = []
        for g in range(groups):
            xg = x[:, g * cin_g:(g + 1) * cin_g]                          # [B, Cin/G, L]
            wg = w[g * cout_g:(g + 1) * cout_g]                           # [Cout/G, Cin/G, K]
            yg = None
            for j in range(k):
                taps = xg[:, :, j * dilation: j * dilation + stride * (lout - 1) + 1: stride]   # [B, Cin/G, Lout]
                term = wg[:, :, j] @ taps                                 # [B, Cout/G, Lout]
                yg = term if yg is None else yg + term
            outs.append(yg)
        y = axon.cat(outs, dim=1)                                         # [B, Cout, Lout]
        return y + b.reshape(cout, 1) if b is not None else y

    def fused(x, w, b=None):
        return _fused.Conv1d.apply(x, w, b, stride=stride, dilation=dilation, groups=groups)

    args = (randn(2, cin, length), randn(cout, cin // groups, k)) + ((randn(cout),) if bias else ())
    check_against_composite(fused, composite, *args)


# ------------------------------------------------------------------------------ the check itself
def test_the_check_catches_a_wrong_backward(monkeypatch):
    """A mutation of one hand-written backward (RMSNorm's weight gradient scaled by 1.001)
    is caught: the tolerance sits far below a real bug."""
    real = _fused.RMSNorm.backward

    def wrong(ctx, grad):
        gx, gw = real(ctx, grad)
        return gx, gw * 1.001

    monkeypatch.setattr(_fused.RMSNorm, "backward", staticmethod(wrong))
    with pytest.raises(AssertionError):
        test_rms_norm(True)


# ------------------------------------------------------------------------------ the cross-entropy kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_entropy_kernels_equal_their_references(dtype, eps):
    """The Numba row statistics and gradient equal the NumPy definitions to the dtype's rounding
    (float32: sums over C=37 terms of magnitude <~ 40 -> ~1e-5 absolute; float64 ~1e-12)."""
    from axon_kernels.cross_entropy import (cross_entropy_grad_nb, cross_entropy_grad_ref, cross_entropy_rows_nb,
                                            cross_entropy_rows_ref)

    r = np.random.default_rng(5)
    logits = (r.standard_normal((23, 37)) * 8).astype(dtype)
    target = r.integers(0, 37, 23)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    for a, b in zip(cross_entropy_rows_nb(logits, target), cross_entropy_rows_ref(logits, target)):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    lse = cross_entropy_rows_ref(logits, target)[0]
    scale = r.standard_normal(23).astype(dtype)
    scale[3] = 0                                                          # an ignored row
    g = cross_entropy_grad_nb(logits, lse, target, scale, eps)
    np.testing.assert_allclose(g, cross_entropy_grad_ref(logits, lse, target, scale, eps), rtol=tol, atol=tol)
    assert not g[3].any()


def test_cross_entropy_kernel_propagates_nan_and_inf():
    """A NaN or +Inf logit makes that row's logsumexp NaN in both (no fastmath; max() skips NaN)."""
    from axon_kernels.cross_entropy import cross_entropy_rows_nb, cross_entropy_rows_ref

    logits = np.zeros((3, 5), np.float32)
    logits[0, 2], logits[1, 4] = np.nan, np.inf
    for fn in (cross_entropy_rows_nb, cross_entropy_rows_ref):
        with np.errstate(invalid="ignore"):
            lse = fn(logits, np.zeros(3, np.int64))[0]
        assert np.isnan(lse[0]) and np.isnan(lse[1]) and np.isfinite(lse[2])


def test_linear_weight_gradients_deferred_to_a_helper_are_the_same():
    """Large enough products on two threads: `Linear.backward` defers the weight gradient to a
    helper (`axon_kernels.workers.defer`) and the engine adds it to the leaf at the end. The
    gradients equal those of the one-thread run -- bit for bit where each is one product; for a
    weight used by two layers and outside them too, its three terms may be added in another order
    (the deferred one last), so to float32 rounding -- and a weight that is not a leaf (``w * 0.5``)
    gets its deferred gradient at once."""
    import numba

    from axon_kernels import blas

    g = np.random.default_rng(11)
    x0 = g.standard_normal((1024, 64)).astype(np.float32)
    w0 = g.standard_normal((128, 64)).astype(np.float32)
    v0 = g.standard_normal((128, 64)).astype(np.float32)
    assert 1024 * 128 * 64 >= blas.GEMM_MIN_WORK                        # so the weight gradient is deferred

    def run(threads):
        before_numba, before_gemm = numba.get_num_threads(), blas.gemm_threads()
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        blas.set_gemm_threads(threads)
        try:
            x = axon.Tensor(x0.copy(), requires_grad=True)
            w = axon.Tensor(w0.copy(), requires_grad=True)
            v = axon.Tensor(v0.copy(), requires_grad=True)
            import axon.nn.functional as F

            h = F.linear(x, w) + F.linear(x, w * 0.5)                     # w twice: once a leaf, once not
            y = F.linear(h @ axon.Tensor(np.eye(128, 64, dtype=np.float32)), v)
            loss = (y * y).sum() + (w * w).sum()                          # w also outside a linear layer
            loss.backward()
            return [t.grad.numpy() for t in (x, w, v)]
        finally:
            numba.set_num_threads(before_numba)
            blas.set_gemm_threads(before_gemm)

    (x1, w1, v1), (x2, w2, v2) = run(1), run(2)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(v1, v2)
    np.testing.assert_allclose(w1, w2, rtol=1e-6, atol=1e-6 * np.abs(w1).max())
