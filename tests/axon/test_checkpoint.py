"""axon.checkpoint: recomputing a block in backward gives the gradients of keeping its graph."""

from __future__ import annotations

import numpy as np

import axon
import axon.nn as nn
import axon.nn.functional as F
from axon.checkpoint import checkpoint
from axon.testing import gradcheck


def _block():
    axon.manual_seed(0)
    lin1, lin2 = nn.Linear(5, 7, dtype=np.float64), nn.Linear(7, 5, dtype=np.float64)
    lin1.weight.materialize(), lin2.weight.materialize(), lin1.bias.materialize(), lin2.bias.materialize()
    params = list(lin1.parameters()) + list(lin2.parameters())
    return (lambda x: lin2(F.dropout(lin1(x).tanh(), 0.3, True)) + x), params


def _grads(use_checkpoint: bool, x_requires_grad: bool):
    fn, params = _block()
    x = axon.tensor(np.random.default_rng(1).standard_normal((3, 5)), requires_grad=x_requires_grad)
    axon.manual_seed(5)                                     # the dropout masks
    y = checkpoint(fn, x, params) if use_checkpoint else fn(x)
    (y * y).sum().backward()
    return y.numpy(), [p.grad.numpy() for p in params], (x.grad.numpy() if x_requires_grad else None)


def test_checkpoint_equals_keeping_the_graph_with_dropout():
    for x_grad in (True, False):                  # False: only the parameters need a gradient (LoRA's first layer)
        y0, g0, dx0 = _grads(False, x_grad)
        y1, g1, dx1 = _grads(True, x_grad)
        np.testing.assert_array_equal(y1, y0)
        for a, b in zip(g1, g0):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        if x_grad:
            np.testing.assert_allclose(dx1, dx0, rtol=1e-12, atol=1e-12)


def test_checkpoint_gradcheck_float64():
    w = axon.tensor(np.random.default_rng(2).standard_normal((4, 4)))
    assert gradcheck(lambda x: checkpoint(lambda h: (h @ w).tanh() * h, x), [axon.tensor(np.ones((2, 4)) * 0.3)])
