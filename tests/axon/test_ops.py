"""Property tests for every differentiable primitive: values against NumPy, gradients against
float64 central differences, and the same gradients whatever the input's memory layout
(contiguous, transposed, strided or broadcast — see axon_kernels.testing)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import axon
from axon.testing import assert_close, gradcheck
from axon_kernels.testing import LAYOUTS, array, array_and_dim, arrays, broadcastable_pair, matmul_inputs, shapes

FAST = settings(max_examples=25, deadline=None)
OP = dict(dtype=np.float64, lo=-3.0, hi=3.0, values="hypothesis")   # small op tests: shrinkable values
NO_TIES = tuple(x for x in LAYOUTS if x != "broadcast")  # repeated values make max/sort kinks

_erf = np.vectorize(math.erf)


def parity(a, b) -> np.ndarray:
    """A fixed checkerboard condition of the broadcast shape (independent of the values)."""
    shape = np.broadcast_shapes(a.shape, b.shape)
    return np.indices(shape).sum(0) % 2 == 0


def distinct(a: np.ndarray, gap: float = 1e-3) -> bool:
    """No two values closer than ``gap`` (so max/sort are differentiable at ``a``)."""
    return bool(np.all(np.diff(np.sort(a, axis=None)) > gap))


def check(fn_axon, fn_np, *arrays, grad: bool = True, rtol: float = 1e-7, atol: float = 1e-9):
    """Values vs NumPy on the given (possibly non-contiguous) arrays, then gradcheck, then
    the gradient through the non-contiguous view equals the gradient through a contiguous copy."""
    ts = [axon.Tensor(a) for a in arrays]
    assert_close(fn_axon(*ts), np.asarray(fn_np(*arrays)), rtol=rtol, atol=atol)
    if not grad:
        return
    gradcheck(fn_axon, [axon.Tensor(np.ascontiguousarray(a)) for a in arrays])
    views = [axon.Tensor(a, requires_grad=True) for a in arrays]
    copies = [axon.Tensor(np.array(a), requires_grad=True) for a in arrays]
    w = np.random.default_rng(1).standard_normal(np.shape(fn_np(*arrays)))
    (fn_axon(*views) * axon.Tensor(w)).sum().backward()
    (fn_axon(*copies) * axon.Tensor(w)).sum().backward()
    for v, c in zip(views, copies):
        assert_close(v.grad, c.grad, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- elementwise

UNARY = {
    "neg": (lambda t: -t, lambda a: -a, (-3, 3)),
    "exp": (lambda t: t.exp(), np.exp, (-3, 3)),
    "log": (lambda t: t.log(), np.log, (0.1, 3)),
    "sqrt": (lambda t: t.sqrt(), np.sqrt, (0.1, 3)),
    "rsqrt": (lambda t: t.rsqrt(), lambda a: 1 / np.sqrt(a), (0.1, 3)),
    "tanh": (lambda t: t.tanh(), np.tanh, (-3, 3)),
    "sigmoid": (lambda t: t.sigmoid(), lambda a: 1 / (1 + np.exp(-a)), (-3, 3)),
    "sin": (lambda t: t.sin(), np.sin, (-3, 3)),
    "cos": (lambda t: t.cos(), np.cos, (-3, 3)),
    "gelu": (lambda t: t.gelu(), lambda a: 0.5 * a * (1 + _erf(a / np.sqrt(2))), (-3, 3)),
    "gelu_tanh": (
        lambda t: t.gelu_tanh(),
        lambda a: 0.5 * a * (1 + np.tanh(np.sqrt(2 / np.pi) * (a + 0.044715 * a**3))),
        (-3, 3),
    ),
    "silu": (lambda t: t.silu(), lambda a: a / (1 + np.exp(-a)), (-3, 3)),
    "softplus": (lambda t: t.softplus(), lambda a: np.log1p(np.exp(a)), (-3, 3)),
    "square": (lambda t: t**2, lambda a: a * a, (-3, 3)),
    "pow3": (lambda t: t**3, lambda a: a**3, (-3, 3)),
    "pow_frac": (lambda t: t**1.5, lambda a: a**1.5, (0.1, 3)),
    "reciprocal": (lambda t: t.reciprocal(), lambda a: 1 / a, (0.2, 3)),
    "scalar_ops": (lambda t: (2.0 - t) * 3 / 4 + 1, lambda a: (2.0 - a) * 3 / 4 + 1, (-3, 3)),
    "rdiv": (lambda t: 2.0 / t, lambda a: 2.0 / a, (0.2, 3)),
}

KINKED = {  # not differentiable at the listed points: inputs stay away from them
    "relu": (lambda t: t.relu(), lambda a: np.maximum(a, 0), [0.0]),
    "abs": (lambda t: t.abs(), np.abs, [0.0]),
    "clamp": (lambda t: t.clamp(-1.0, 0.5), lambda a: np.clip(a, -1.0, 0.5), [-1.0, 0.5]),
    "clamp_min": (lambda t: t.clamp(min=0.5), lambda a: np.maximum(a, 0.5), [0.5]),
    # torch's softplus switches to the identity above beta * x > threshold (x = 2 here)
    "softplus_beta": (lambda t: t.softplus(beta=2.0, threshold=4.0),
                      lambda a: np.where(2 * a > 4, a, np.log1p(np.exp(2 * a)) / 2), [2.0]),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@FAST
@given(data=st.data())
def test_unary(name, data):
    fn, ref, (lo, hi) = UNARY[name]
    a = data.draw(array(lo=lo, hi=hi))
    check(fn, ref, a)


@pytest.mark.parametrize("name", sorted(KINKED))
@FAST
@given(a=array())
def test_kinked_unary(name, a):
    fn, ref, kinks = KINKED[name]
    assume(all(np.all(np.abs(a - k) > 1e-3) for k in kinks))
    check(fn, ref, a)


BINARY = {
    "add": (lambda x, y: x + y, np.add, (-3, 3)),
    "sub": (lambda x, y: x - y, np.subtract, (-3, 3)),
    "mul": (lambda x, y: x * y, np.multiply, (-3, 3)),
    "div": (lambda x, y: x / y, np.divide, (0.3, 3)),
    "pow": (lambda x, y: x**y, np.power, (0.3, 2)),
    "where": (lambda x, y: axon.where(parity(x, y), x, y), lambda a, b: np.where(parity(a, b), a, b), (-3, 3)),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@FAST
@given(data=st.data())
def test_binary_broadcast(name, data):
    fn, ref, (lo, hi) = BINARY[name]
    a, b = data.draw(broadcastable_pair(lo=lo, hi=hi))
    check(fn, ref, a, b)


@pytest.mark.parametrize("name", ["maximum", "minimum"])
@FAST
@given(pair=broadcastable_pair())
def test_maximum_minimum(name, pair):
    a, b = pair
    assume(np.all(np.abs(a - b) > 1e-3))  # ties split the gradient: tested separately below
    fn = (lambda x, y: x.maximum(y)) if name == "maximum" else (lambda x, y: x.minimum(y))
    check(fn, getattr(np, name), a, b)


def test_maximum_tie_splits_gradient_evenly():
    a = axon.tensor([1.0, 2.0], requires_grad=True)
    b = axon.tensor([1.0, 0.0], requires_grad=True)
    a.maximum(b).sum().backward()
    assert_close(a.grad, np.array([0.5, 1.0], np.float32))
    assert_close(b.grad, np.array([0.5, 0.0], np.float32))


# --------------------------------------------------------------------------- reductions

REDUCE = {
    "sum": (lambda t, d: t.sum(dim=d), lambda a, d: a.sum(axis=d)),
    "sum_keep": (lambda t, d: t.sum(dim=d, keepdim=True), lambda a, d: a.sum(axis=d, keepdims=True)),
    "mean": (lambda t, d: t.mean(dim=d), lambda a, d: a.mean(axis=d)),
    "var": (lambda t, d: t.var(dim=d), lambda a, d: a.var(axis=d, ddof=1)),
    "var_biased": (lambda t, d: t.var(dim=d, unbiased=False, keepdim=True), lambda a, d: a.var(axis=d, keepdims=True)),
    "logsumexp": (lambda t, d: t.logsumexp(d), lambda a, d: np.log(np.exp(a).sum(axis=d))),
    "cumsum": (lambda t, d: t.cumsum(d), lambda a, d: np.cumsum(a, axis=d)),
    "prod": (lambda t, d: t.prod(dim=d), lambda a, d: np.prod(a, axis=d)),
    "softmax": (lambda t, d: t.softmax(d), lambda a, d: np.exp(a) / np.exp(a).sum(axis=d, keepdims=True)),
    "log_softmax": (lambda t, d: t.log_softmax(d), lambda a, d: a - np.log(np.exp(a).sum(axis=d, keepdims=True))),
    "norm": (lambda t, d: t.norm(dim=d), lambda a, d: np.sqrt((a * a).sum(axis=d))),
}


@pytest.mark.parametrize("name", sorted(REDUCE))
@FAST
@given(ad=array_and_dim())
def test_reduction_over_dim(name, ad):
    a, d = ad
    if name == "var":
        assume(a.shape[d] > 1)
    if name == "norm":
        assume(np.all(np.abs(a).sum(axis=d) > 1e-2))
    fn, ref = REDUCE[name]
    check(lambda t: fn(t, d), lambda x: ref(x, d), a)


@FAST
@given(a=array(), dims=st.sampled_from([None, (0,), (0, -1)]))
def test_sum_mean_over_several_dims(a, dims):
    axis = None if dims is None else tuple(sorted({d % a.ndim for d in dims}))
    check(lambda t: t.sum(dim=dims), lambda x: np.sum(x, axis=axis), a)
    check(lambda t: t.mean(dim=dims, keepdim=True), lambda x: np.mean(x, axis=axis, keepdims=True), a)


@FAST
@given(data=st.data())
def test_max_min_argmax(data):
    shape = data.draw(shapes())
    a = data.draw(arrays(shape, layouts=NO_TIES, **OP))
    assume(distinct(a))
    d = data.draw(st.integers(-a.ndim, a.ndim - 1))
    check(lambda t: t.max(d).values, lambda x: x.max(axis=d), a)
    check(lambda t: t.min(d, keepdim=True).values, lambda x: x.min(axis=d, keepdims=True), a)
    check(lambda t: t.amax(d), lambda x: x.max(axis=d), a)
    check(lambda t: t.max(), lambda x: x.max(), a)
    assert np.array_equal(axon.Tensor(a).max(d).indices.numpy(), a.argmax(axis=d))
    assert np.array_equal(axon.Tensor(a).argmax(d).numpy(), a.argmax(axis=d))
    assert axon.Tensor(a).argmax(d).dtype == np.int64


def test_max_over_all_with_ties_shares_gradient():
    x = axon.tensor([3.0, 1.0, 3.0], requires_grad=True)
    x.max().backward()
    assert_close(x.grad, np.array([0.5, 0.0, 0.5], np.float32))


def test_softmax_of_fully_masked_row_is_zero_not_nan():
    x = axon.tensor([[-np.inf, -np.inf], [0.0, -np.inf]])
    assert_close(x.softmax(-1), np.array([[0.0, 0.0], [1.0, 0.0]], np.float32))


def test_softmax_is_stable_for_large_inputs():
    x = axon.tensor([[1000.0, 1001.0], [-1000.0, -1001.0]])
    out = x.softmax(-1).numpy()
    assert np.all(np.isfinite(out))
    assert_close(out.sum(-1), np.ones(2, np.float32))
    assert np.all(np.isfinite(x.log_softmax(-1).numpy()))


# --------------------------------------------------------------------------- matmul


@FAST
@given(args=matmul_inputs(max_side=4, **OP))
def test_matmul_batched_broadcast(args):
    a, b = args.kwargs["a"], args.kwargs["b"]
    check(lambda x, y: x @ y, np.matmul, a, b)


@FAST
@given(data=st.data())
def test_matmul_one_dimensional_operands(data):
    k = data.draw(st.integers(1, 4))
    v = data.draw(arrays((k,), **OP))
    m = data.draw(arrays((k, 3), **OP))
    check(lambda x, y: x @ y, np.matmul, v, m)
    check(lambda x, y: y.T @ x, lambda x, y: y.T @ x, v, m)
    check(lambda x, y: x @ y, np.matmul, v, data.draw(arrays((k,), **OP)))


def test_matmul_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)"):
        axon.randn(2, 3) @ axon.randn(4, 5)


# --------------------------------------------------------------------------- shape ops


@FAST
@given(a=array(min_dims=2, max_dims=3))
def test_reshape_permute_transpose(a):
    check(lambda t: t.reshape(-1), lambda x: x.reshape(-1), a)
    check(lambda t: t.view(a.shape[0], -1), lambda x: x.reshape(a.shape[0], -1), a)
    check(lambda t: t.transpose(0, -1), lambda x: np.swapaxes(x, 0, -1), a)
    perm = tuple(reversed(range(a.ndim)))
    check(lambda t: t.permute(*perm) * 2, lambda x: x.transpose(perm) * 2, a)
    check(lambda t: t.T, lambda x: x.transpose(), a)
    check(lambda t: t.flatten(1), lambda x: x.reshape(x.shape[0], -1), a)


@FAST
@given(a=array())
def test_unsqueeze_squeeze_expand(a):
    check(lambda t: t.unsqueeze(0), lambda x: x[None], a)
    check(lambda t: t.unsqueeze(-1).squeeze(-1), lambda x: x, a)
    check(lambda t: t.unsqueeze(1).expand(a.shape[0], 3, *a.shape[1:]),
          lambda x: np.broadcast_to(x[:, None], (a.shape[0], 3) + a.shape[1:]), a)
    check(lambda t: t.repeat(2, *([1] * (a.ndim - 1))), lambda x: np.tile(x, (2,) + (1,) * (a.ndim - 1)), a)


@FAST
@given(data=st.data())
def test_cat_stack_split_chunk(data):
    shape = data.draw(shapes(min_dims=1, max_dims=3))
    d = data.draw(st.integers(-len(shape), len(shape) - 1))
    a = data.draw(arrays(shape, **OP))
    other = list(shape)
    other[d] = data.draw(st.integers(1, 3))
    b = data.draw(arrays(tuple(other), **OP))
    check(lambda x, y: axon.cat([x, y], dim=d), lambda x, y: np.concatenate([x, y], axis=d), a, b)
    c = data.draw(arrays(shape, **OP))
    check(lambda x, y: axon.stack([x, y], dim=d), lambda x, y: np.stack([x, y], axis=d), a, c)
    n = shape[d]
    check(lambda x: x.split(2, dim=d)[-1], lambda x: np.split(x, range(2, n, 2), axis=d)[-1], a)
    check(lambda x: x.chunk(2, dim=d)[0] * 3, lambda x: np.array_split(x, [-(-n // 2)], axis=d)[0] * 3, a)


@FAST
@given(a=array(min_dims=2, max_dims=3), pads=st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)))
def test_pad_tril_triu_flip_repeat_interleave(a, pads):
    lo, hi, top = pads
    ref_pad = [(0, 0)] * (a.ndim - 2) + [(top, 0), (lo, hi)]
    check(lambda t: axon.pad(t, (lo, hi, top, 0), value=0.5), lambda x: np.pad(x, ref_pad, constant_values=0.5), a)
    check(lambda t: t.tril(), np.tril, a)
    check(lambda t: t.triu(1), lambda x: np.triu(x, 1), a)
    check(lambda t: t.flip(0), lambda x: np.flip(x, 0), a)
    check(lambda t: t.repeat_interleave(2, dim=1), lambda x: np.repeat(x, 2, axis=1), a)


@FAST
@given(a=array(min_dims=2, max_dims=3), shift=st.integers(-3, 3))
def test_roll_clone_narrow_unbind_std(a, shift):
    check(lambda t: t.roll(shift, 0), lambda x: np.roll(x, shift, 0), a)
    check(lambda t: t.clone() * 2, lambda x: x * 2, a)
    check(lambda t: t.narrow(1, 0, 1), lambda x: x[:, 0:1], a)
    check(lambda t: t.unbind(0)[-1], lambda x: x[-1], a)
    if a.shape[-1] > 1:
        assume(np.all(a.std(-1) > 1e-2))
        check(lambda t: t.std(-1), lambda x: x.std(-1, ddof=1), a)


# --------------------------------------------------------------------------- indexing


@FAST
@given(a=array(min_dims=2, max_dims=3), i=st.integers(-2, 1))
def test_basic_indexing(a, i):
    i = i % a.shape[0]
    check(lambda t: t[i], lambda x: x[i], a)
    check(lambda t: t[:, ::2], lambda x: x[:, ::2], a)
    check(lambda t: t[..., -1], lambda x: x[..., -1], a)
    check(lambda t: t[None, i:], lambda x: x[None, i:], a)


@FAST
@given(a=array(min_dims=1, max_dims=3), data=st.data())
def test_advanced_indexing_with_repeats_and_masks(a, data):
    n = a.shape[0]
    idx = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=6)))
    check(lambda t: t[idx], lambda x: x[idx], a)  # repeated ids accumulate gradient
    check(lambda t: t[axon.tensor(idx)], lambda x: x[idx], a)
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    check(lambda t: t[mask], lambda x: x[mask], a)
    full_mask = a > 0
    check(lambda t: t[full_mask], lambda x: x[full_mask], a)


@FAST
@given(data=st.data())
def test_gather_index_select_scatter_add(data):
    a, d = data.draw(array_and_dim(max_dims=3))
    n = a.shape[d]
    idx_shape = list(a.shape)
    idx_shape[d] = data.draw(st.integers(1, 4))
    idx = np.random.default_rng(data.draw(st.integers(0, 99))).integers(0, n, size=idx_shape)
    check(lambda t: t.gather(d, idx), lambda x: np.take_along_axis(x, idx, axis=d), a)
    flat = idx.reshape(-1)[:3]
    check(lambda t: t.index_select(d, flat), lambda x: np.take(x, flat, axis=d), a)
    src = np.random.default_rng(0).standard_normal(idx.shape)

    def ref_scatter(x, s):
        out = x.copy()
        np.add.at(out, axon.ops._along_axis_index(idx, d % x.ndim), s)
        return out

    check(lambda t, s: t.scatter_add(d, idx, s), ref_scatter, a, src)


@FAST
@given(a=array(min_dims=2, max_dims=3))
def test_masked_fill(a):
    mask = a[..., :1] > 0  # broadcast over the last dim
    check(lambda t: t.masked_fill(mask, -7.0), lambda x: np.where(mask, -7.0, x), a)
    check(lambda t: t.masked_fill(axon.tensor(mask), float("-inf")).exp(), lambda x: np.exp(np.where(mask, -np.inf, x)), a)


@FAST
@given(data=st.data())
def test_topk_and_sort(data):
    shape = data.draw(shapes(min_dims=1, max_dims=2))
    a = data.draw(arrays(shape, layouts=NO_TIES, **OP))
    assume(distinct(a))
    k = data.draw(st.integers(1, a.shape[-1]))
    check(lambda t: t.topk(k).values, lambda x: -np.sort(-x, axis=-1)[..., :k], a)
    check(lambda t: t.topk(k, largest=False).values, lambda x: np.sort(x, axis=-1)[..., :k], a)
    check(lambda t: t.sort(descending=True).values, lambda x: -np.sort(-x, axis=-1), a)
    assert np.array_equal(axon.Tensor(a).topk(k).indices.numpy(), np.argsort(-a, axis=-1)[..., :k])


def test_one_hot_and_comparisons_have_no_grad():
    x = axon.randn(3, requires_grad=True)
    assert not (x > 0).requires_grad and (x > 0).dtype == np.bool_
    assert axon.one_hot(axon.tensor([0, 2]), 3).tolist() == [[1, 0, 0], [0, 0, 1]]
    assert not x.argmax().requires_grad


# --------------------------------------------------------------------------- dtype casts


def test_float32_erf_is_accurate_to_a_few_ulp():
    from axon._erf import erf, erf_exact

    x = np.linspace(-7, 7, 20001)
    exact = np.array([math.erf(v) for v in x.astype(np.float32).astype(np.float64)])
    assert np.abs(erf(x.astype(np.float32)).astype(np.float64) - exact).max() < 6e-7
    assert np.array_equal(erf(x), erf_exact(x))  # float64 is libm's erf
    assert erf(x.astype(np.float32)).dtype == np.float32
    g32 = axon.tensor(x.astype(np.float32)).gelu().numpy().astype(np.float64)
    g64 = axon.tensor(x.astype(np.float32).astype(np.float64)).gelu().numpy()
    assert_close(g32, g64, rtol=1.3e-6, atol=1e-6)


def test_float16_stays_float16():
    x = axon.ones(3, dtype=np.float16, requires_grad=True)
    for y in (x.gelu(), x.silu(), x.gelu_tanh(), x.softmax(-1), x * 2.0, x.exp()):
        assert y.dtype == np.float16, y
    x.gelu().sum().backward()
    assert x.grad.dtype == np.float16


def test_cast_backward_returns_to_the_source_dtype():
    x = axon.tensor(np.array([1.0, 2.0]), requires_grad=True)  # float64
    y = x.float() * 3
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float64
    assert_close(x.grad, np.array([3.0, 3.0]))
