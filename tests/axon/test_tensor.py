"""Tensor construction, dtype rules, the torch-like surface, repr and conversions."""

from __future__ import annotations

import numpy as np
import pytest

import axon
from axon.testing import assert_close


def test_contract_example():
    x = axon.tensor(np.ones((2, 3)), requires_grad=True)
    assert x.dtype == np.float64
    w = axon.randn(3, 4, requires_grad=True)
    assert w.dtype == axon.float32
    y = (x.float() @ w).gelu().sum()
    y.backward()
    assert w.grad.numpy().shape == (3, 4)
    assert np.asarray(w.grad).shape == (3, 4)


def test_dtype_rules():
    assert axon.tensor(1.5).dtype == np.float32
    assert axon.tensor([1.0, 2.0]).dtype == np.float32
    assert axon.tensor([1, 2]).dtype == np.int64
    assert axon.tensor(np.arange(3, dtype=np.int32)).dtype == np.int32
    assert axon.tensor(np.ones(2)).dtype == np.float64
    assert axon.tensor([True]).dtype == np.bool_
    x = axon.ones(3)
    for y in (x * 2.5, x + 1, 2.0 - x, x / 3, x ** 2, x.exp() * np.float64(2.0)):
        assert y.dtype == np.float32, y
    ids = axon.tensor([1, 2])
    assert (ids * 2).dtype == np.int64
    assert (ids * 0.5).dtype == np.float32
    assert (ids / 2).dtype == np.float32
    assert axon.arange(5).dtype == np.int64 and axon.arange(0.0, 1.0, 0.25).dtype == np.float32


def test_tensor_copies_but_as_tensor_shares():
    a = np.zeros(3, np.float32)
    t = axon.tensor(a)
    a[0] = 1
    assert t.data[0] == 0
    assert axon.as_tensor(a).data is a


def test_torch_like_surface():
    t = axon.arange(24).float().reshape(2, 3, 4)
    assert t.shape == (2, 3, 4) and t.ndim == 3 and t.size(-1) == 4 and t.size() == (2, 3, 4)
    assert t.transpose(1, 2).shape == (2, 4, 3)
    assert t.permute(2, 0, 1).shape == (4, 2, 3)
    assert t.view(6, 4).shape == (6, 4) and t.reshape(-1).shape == (24,)
    assert t.unsqueeze(1).shape == (2, 1, 3, 4) and t.unsqueeze(-1).shape == (2, 3, 4, 1)
    assert t.sum(dim=-1, keepdim=True).shape == (2, 3, 1)
    assert t[0].T.shape == (4, 3)
    assert t.contiguous() is t
    assert t.numel() == 24 and len(t) == 2
    assert t[1, 2, 3].item() == 23.0
    assert isinstance(t.detach(), axon.Tensor)
    assert t.softmax(-1).shape == t.shape
    assert t.masked_fill(t.data > 5, 0.0).max().item() == 5.0
    assert t.mean().item() == pytest.approx(11.5)
    assert t.double().dtype == np.float64 and t.long().dtype == np.int64
    assert t.to(axon.float64).dtype == np.float64 and t.to("cpu") is t
    assert [c.shape for c in t.chunk(2, dim=2)] == [(2, 3, 2), (2, 3, 2)]
    assert [s.shape for s in t.split([1, 2], dim=1)] == [(2, 1, 4), (2, 2, 4)]
    v, i = t.max(dim=1)
    assert v.shape == (2, 4) and i.dtype == np.int64
    assert axon.cat([t, t], dim=0).shape == (4, 3, 4)
    assert axon.stack([t, t], dim=1).shape == (2, 2, 3, 4)
    assert axon.where(t > 3, t, 0.0).shape == t.shape
    assert t.flatten().shape == (24,) and t.flatten(1).shape == (2, 12)
    assert t.expand(5, 2, 3, 4).shape == (5, 2, 3, 4)
    assert axon.zeros_like(t).shape == t.shape and axon.full((2,), 7).dtype == np.int64


def test_setitem_and_inplace_respect_the_graph():
    t = axon.zeros(3)
    t[1] = 5.0
    assert t.tolist() == [0.0, 5.0, 0.0]
    p = axon.zeros(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="no_grad"):
        p[0] = 1.0
    with axon.no_grad():
        p[0] = 1.0
        p.add_(1.0)
    assert p.tolist() == [2.0, 1.0, 1.0]


def test_manual_seed_reproduces_random_tensors():
    axon.manual_seed(123)
    a = axon.randn(4)
    axon.manual_seed(123)
    assert np.array_equal(a.numpy(), axon.randn(4).numpy())


def test_repr_is_readable():
    assert repr(axon.tensor([1.0, 2.0])) == "tensor([1., 2.])"
    assert "requires_grad=True" in repr(axon.ones(2, requires_grad=True))
    assert "grad_fn=<Mul>" in repr(axon.ones(2, requires_grad=True) * 2)
    assert "dtype=float64" in repr(axon.tensor(np.ones(1)))


def test_scalar_conversions():
    t = axon.tensor([2.5])
    assert float(t) == 2.5 and int(axon.tensor([3])) == 3 and bool(axon.tensor([1.0]))
    with pytest.raises(ValueError, match="one-element"):
        axon.ones(2).item()
    with pytest.raises(ValueError, match="ambiguous"):
        bool(axon.ones(2))


def test_ndarray_on_the_left_gives_a_tensor():
    x = axon.ones(2, requires_grad=True)
    y = np.array([2.0, 3.0], np.float32) * x
    assert isinstance(y, axon.Tensor) and y.requires_grad
    y.sum().backward()
    assert_close(x.grad, np.array([2.0, 3.0], np.float32))


def test_shape_errors_name_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        axon.cat([axon.ones(2, 3), axon.ones(2, 4)], dim=0)
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        axon.stack([axon.ones(2), axon.ones(3)])
    with pytest.raises(TypeError, match="bool"):
        axon.ones(2).masked_fill(axon.tensor([1, 0]), 0.0)
