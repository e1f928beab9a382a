"""axon_kernels.blas_attention (the no-autograd attention used by prefill and decoding) against
the composite definition in axon.nn.functional, and attend's choice between the two."""

from __future__ import annotations

import numpy as np
import pytest

import axon
import axon.nn.functional as F
import axon_kernels as kernels
from axon_llm.attention import attend


@pytest.mark.parametrize("t, s, causal, window", [
    (1, 7, True, None), (5, 5, False, None), (3, 9, False, None), (300, 300, True, None), (40, 300, True, None),
    (200, 200, True, 50), (1, 90, True, 30), (130, 130, True, 7), (2, 2, True, 1),
])
def test_equals_the_sdpa_definition(t, s, causal, window):
    rng = np.random.default_rng(t * 1000 + s)
    q = rng.standard_normal((2, 6, t, 16)).astype(np.float32)       # GQA: 6 query heads over 2 K/V heads
    k = rng.standard_normal((2, 2, s, 16)).astype(np.float32)
    v = rng.standard_normal((2, 2, s, 16)).astype(np.float32)
    ref = F._sdpa_reference(axon.tensor(q), axon.tensor(k), axon.tensor(v), None, 0.0, causal, 0.25, window).numpy()
    got = kernels.blas_attention(q, k, v, causal, window, 0.25, block_q=64)    # several query blocks at t >= 130
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


@pytest.mark.parametrize("rotary_dim, window", [(8, None), (4, None), (8, 3)])   # full / partial RoPE, window
def test_multi_head_attention_inference_path_equals_the_autograd_path(rotary_dim, window):
    """MultiHeadAttention under no_grad (arrays, no graph) gives what the autograd path gives,
    over a prefill and then single-token steps through a KV cache."""
    from axon_llm.attention import AttentionContext, MultiHeadAttention
    from axon_llm.cache import KVCache
    from axon_llm.rope import RotaryEmbedding

    rotary = RotaryEmbedding(rotary_dim, 64)
    mha = MultiHeadAttention(16, 4, 2, 8, layer_idx=0, rotary=rotary, sliding_window=window).eval()
    x = np.random.default_rng(7).standard_normal((2, 9, 16)).astype(np.float32)
    results = []
    for grad in (True, False):
        cache = KVCache(1, 2, 16, 2, 8)
        outs = []
        with axon.set_grad_enabled(grad):
            for lo, hi in ((0, 6), (6, 7), (7, 8), (8, 9)):
                ctx = AttentionContext.build(2, hi - lo, None, cache)
                out = mha(axon.tensor(x[:, lo:hi]), ctx)
                ctx.finish()
                assert out.requires_grad == grad
                outs.append(out.detach().numpy())
        results.append(np.concatenate(outs, axis=1))
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5, atol=1e-6)


def test_gated_mlp_inference_path_is_bitwise_the_autograd_path():
    from axon_llm.blocks import GatedMLP

    mlp = GatedMLP(16, 24, "silu")
    x = axon.tensor(np.random.default_rng(3).standard_normal((2, 5, 16)).astype(np.float32) * 4)
    with_grad = mlp(x)
    assert with_grad.requires_grad
    with axon.no_grad():
        fast = mlp(x)
    np.testing.assert_array_equal(fast.numpy(), with_grad.detach().numpy())
