"""attend_inference (the no-autograd attention used by prefill and decoding) against the
composite definition in axon.nn.functional, and attend's choice between the two."""

from __future__ import annotations

import numpy as np
import pytest

import axon
import axon.nn.functional as F
from axon_llm import attention
from axon_llm.attention import attend, attend_inference


@pytest.mark.parametrize("t, s, causal, window", [
    (1, 7, True, None), (5, 5, False, None), (3, 9, False, None), (300, 300, True, None), (40, 300, True, None),
    (200, 200, True, 50), (1, 90, True, 30), (130, 130, True, 7), (2, 2, True, 1),
])
def test_equals_the_sdpa_definition(t, s, causal, window, monkeypatch):
    monkeypatch.setattr(attention, "INFERENCE_QUERY_BLOCK", 64)     # several query blocks at t >= 130
    rng = np.random.default_rng(t * 1000 + s)
    q = rng.standard_normal((2, 6, t, 16)).astype(np.float32)       # GQA: 6 query heads over 2 K/V heads
    k = rng.standard_normal((2, 2, s, 16)).astype(np.float32)
    v = rng.standard_normal((2, 2, s, 16)).astype(np.float32)
    ref = F._sdpa_reference(axon.tensor(q), axon.tensor(k), axon.tensor(v), None, 0.0, causal, 0.25, window).numpy()
    got = attend_inference(q, k, v, causal, window, 0.25)
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=2e-6)


def test_attend_uses_autograd_only_when_a_gradient_is_wanted():
    rng = np.random.default_rng(0)
    q, k, v = (axon.tensor(rng.standard_normal((1, 2, 4, 8)).astype(np.float32), requires_grad=True) for _ in range(3))
    out = attend(q, k, v, None, causal=True)
    assert out.requires_grad
    out.sum().backward()
    assert q.grad is not None and np.isfinite(q.grad).all()
    with axon.no_grad():
        fast = attend(q, k, v, None, causal=True)
    assert not fast.requires_grad
    np.testing.assert_allclose(fast.numpy(), out.detach().numpy(), rtol=1e-5, atol=1e-6)
