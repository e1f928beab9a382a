"""The sparse MoE layer: routing (softmax, top-k, renormalise), sparse dispatch, load-balancing loss."""

from __future__ import annotations

import numpy as np
import pytest

import axon
from axon_llm.moe import SparseMoE, load_balancing_loss


def dense_reference(moe: SparseMoE, x: np.ndarray) -> np.ndarray:
    """Every token through its top-k experts, weights renormalised — in float64 NumPy."""
    g = moe.gate.weight.data.astype(np.float64)
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    logits = flat @ g.T
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.zeros_like(flat)
    silu = lambda z: z / (1 + np.exp(-z))
    for n in range(flat.shape[0]):
        top = np.argsort(-p[n], kind="stable")[: moe.top_k]
        w = p[n, top] / p[n, top].sum()
        for j, e in enumerate(top):
            ex = moe.experts[e]
            h = silu(flat[n] @ ex.w1.weight.data.T) * (flat[n] @ ex.w3.weight.data.T)
            out[n] += w[j] * (h @ ex.w2.weight.data.T)
    return out.reshape(x.shape)


@pytest.mark.parametrize("experts,top_k", [(4, 2), (3, 1), (5, 5)])
def test_matches_dense_reference(experts, top_k):
    moe = SparseMoE(8, 12, experts, top_k)
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    with axon.no_grad():
        y, router_logits = moe(axon.tensor(x))
    assert router_logits.shape == (10, experts)
    np.testing.assert_allclose(y.numpy(), dense_reference(moe, x), atol=1e-5, rtol=1e-4)


def test_routing_weights_are_renormalised_top_k():
    moe = SparseMoE(8, 12, 4, 2)
    x = axon.tensor(np.random.default_rng(1).standard_normal((6, 8)).astype(np.float32))
    _, weights, top = moe.route(x)
    w = weights.numpy()
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
    assert ((w > 0).sum(-1) == 2).all() and top.shape == (6, 2)


def test_every_expert_and_the_router_get_gradients():
    moe = SparseMoE(8, 12, 4, 2)
    x = axon.tensor(np.random.default_rng(2).standard_normal((4, 16, 8)).astype(np.float32))
    y, router_logits = moe(x)
    ((y ** 2).mean() + 0.01 * load_balancing_loss(router_logits, 2)).backward()
    for name, p in moe.named_parameters():
        assert p.grad is not None and np.isfinite(p.grad.numpy()).all() and np.abs(p.grad.numpy()).max() > 0, name


def test_load_balancing_loss_value_and_gradient():
    uniform = axon.tensor(np.zeros((8, 4), np.float32), requires_grad=True)
    loss = load_balancing_loss(uniform, top_k=2)
    assert abs(loss.item() - 1.0) < 1e-6               # E * sum_i f_i / E = 1 for a uniform router
    logits = axon.tensor(np.random.default_rng(3).standard_normal((8, 4)).astype(np.float32), requires_grad=True)
    l2 = load_balancing_loss([logits[:4], logits[4:]], top_k=2)
    l2.backward()
    assert np.abs(logits.grad.numpy()).max() > 0
