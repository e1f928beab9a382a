"""The engine: accumulation, un-broadcasting, freeing, no_grad, error cases, deep graphs."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import axon
from axon.autograd import Function
from axon.testing import assert_close


def test_grads_accumulate_on_leaves_across_backward_calls():
    x = axon.tensor([1.0, 2.0], requires_grad=True)
    (x * 3).sum().backward()
    (x * x).sum().backward()
    assert_close(x.grad, np.array([3 + 2, 3 + 4], np.float32))
    assert isinstance(x.grad, axon.Tensor)


def test_diamond_graph_sums_both_paths():
    x = axon.tensor(2.0, requires_grad=True)
    y = x * x  # used twice below
    z = y * 3 + y.exp()
    z.backward()
    assert_close(x.grad, np.float32(2 * 2 * 3 + np.exp(4.0) * 2 * 2), rtol=1e-6, atol=0)


def test_same_tensor_as_both_operands():
    x = axon.tensor([3.0], requires_grad=True)
    (x * x + x + x).sum().backward()
    assert_close(x.grad, np.array([8.0], np.float32))


def test_leaf_grads_are_independent_arrays():
    """a + b gives the same upstream array to both leaves: scaling one grad must not touch the other."""
    a = axon.ones(3, requires_grad=True)
    b = axon.ones(3, requires_grad=True)
    (a + b).sum().backward()
    a.grad.data *= 5
    assert_close(b.grad, np.ones(3, np.float32))


def test_broadcast_gradients_are_reduced_to_the_input_shape():
    x = axon.randn(4, 3, requires_grad=True)
    bias = axon.randn(3, requires_grad=True)
    col = axon.randn(4, 1, requires_grad=True)
    scalar = axon.tensor(2.0, requires_grad=True)
    ((x + bias) * col * scalar).sum().backward()
    assert bias.grad.shape == (3,) and col.grad.shape == (4, 1) and scalar.grad.shape == ()
    assert_close(bias.grad, np.full(3, (col.data * scalar.data).sum(), np.float32), rtol=1e-5, atol=1e-5)


def test_engine_asserts_gradient_shape():
    class Bad(Function):
        @staticmethod
        def forward(ctx, a):
            return a * 2

        @staticmethod
        def backward(ctx, grad):
            return (np.ones((7,), grad.dtype),)

    x = axon.randn(3, requires_grad=True)
    with pytest.raises((AssertionError, ValueError)):
        Bad.apply(x).sum().backward()


def test_saved_arrays_are_freed_and_second_backward_explains_retain_graph():
    x = axon.randn(3, requires_grad=True)
    y = (x.exp() * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()


def test_retain_graph_allows_a_second_backward():
    x = axon.randn(3, requires_grad=True)
    y = (x.exp() * x).sum()
    y.backward(retain_graph=True)
    g1 = x.grad.numpy().copy()
    y.backward()
    assert_close(x.grad, 2 * g1)


def test_context_drops_saved_arrays_after_backward():
    x = axon.randn(3, requires_grad=True)
    y = x.exp()
    ctx = y._ctx
    assert len(ctx.saved_tensors) == 1
    y.sum().backward()
    assert ctx.released and ctx._saved == () and ctx.inputs is None


def test_backward_on_non_scalar_needs_a_gradient():
    x = axon.randn(2, 3, requires_grad=True)
    y = x * 2
    with pytest.raises(RuntimeError, match=r"non-scalar.*\(2, 3\)"):
        y.backward()
    y.backward(axon.ones(2, 3))
    assert_close(x.grad, np.full((2, 3), 2.0, np.float32))
    with pytest.raises(ValueError, match="shape"):
        (x * 2).backward(np.ones((3, 2)))


def test_integer_tensors_never_require_grad():
    with pytest.raises(TypeError, match="floating"):
        axon.tensor([1, 2, 3], requires_grad=True)
    ids = axon.tensor([1, 2, 3])
    with pytest.raises(TypeError):
        ids.requires_grad_()
    with pytest.raises(TypeError, match="dtype int64"):
        ids.sum().backward()


def test_no_grad_records_nothing_and_save_for_backward_is_a_no_op():
    x = axon.randn(3, requires_grad=True)
    with axon.no_grad():
        y = x.exp() * 2
        assert axon.is_grad_enabled() is False
        with axon.enable_grad():
            z = x * 2
    assert not y.requires_grad and y._ctx is None
    assert z.requires_grad
    assert axon.is_grad_enabled()

    saved = []

    class Probe(Function):
        @staticmethod
        def forward(ctx, a):
            ctx.save_for_backward(a)
            saved.append(ctx._saved)
            return a

        @staticmethod
        def backward(ctx, grad):
            return (grad,)

    with axon.no_grad():
        Probe.apply(x)
    assert saved == [()]

    @axon.no_grad()
    def f(t):
        return t * 2

    assert not f(x).requires_grad


def test_detach_cuts_the_graph():
    x = axon.randn(3, requires_grad=True)
    y = (x * 2).detach()
    assert not y.requires_grad and y.grad_fn is None
    ((x * y).sum()).backward()
    assert_close(x.grad, y.data)


def test_only_tensors_requiring_grad_get_grads():
    a = axon.randn(3, requires_grad=True)
    b = axon.randn(3)
    (a * b).sum().backward()
    assert b.grad is None and a.grad is not None


def test_deep_chain_does_not_hit_the_recursion_limit():
    x = axon.tensor(1.0, requires_grad=True)
    y = x
    n = 100_000
    assert n > sys.getrecursionlimit()
    for _ in range(n):
        y = y + 1e-6
    y.backward()
    assert_close(x.grad, np.float32(1.0))


def test_numpy_errors_come_out_as_one_clear_error():
    with pytest.raises(ValueError, match=r"Add.*\(2, 3\).*\(4,\)") as err:
        axon.randn(2, 3) + axon.randn(4)
    assert err.value.__suppress_context__  # no chained NumPy traceback
    with pytest.raises(ValueError, match=r"\(6,\)"):
        axon.randn(6).reshape(4, 2)
    with pytest.raises(IndexError):
        axon.randn(3)[5]
    with pytest.raises(IndexError, match="Dimension out of range"):
        axon.randn(3).sum(dim=2)
    with pytest.raises(TypeError, match="unsupported dtype"):
        axon.tensor(np.array(["a", "b"]))


def test_grad_dtype_matches_parameter_dtype_in_mixed_precision():
    w = axon.randn(3, requires_grad=True)  # float32
    x = axon.tensor(np.ones(3))  # float64
    (w * x).sum().backward()
    assert w.grad.dtype == np.float32


def test_retain_grad_on_an_intermediate():
    x = axon.tensor([1.0, 2.0], requires_grad=True)
    h = x * 3
    h.retain_grad()
    (h * h).sum().backward()
    assert_close(h.grad, np.array([6.0, 12.0], np.float32))
    assert_close(x.grad, np.array([18.0, 36.0], np.float32))
