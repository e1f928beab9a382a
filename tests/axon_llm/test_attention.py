"""Attention: GQA, the sliding-window rule across cache steps, padding masks, the generic blocks."""

from __future__ import annotations

import numpy as np
import pytest

import axon
from axon_llm.attention import AttentionContext, MultiHeadAttention, attend
from axon_llm.blocks import TransformerDecoder, TransformerEncoder
from axon_llm.cache import KVCache
from axon_llm.rope import RotaryEmbedding

from tests.axon_llm.model_checks import check_cached_equals_uncached, check_trains


def reference(q, k, v, allowed):
    """softmax(q k^T / sqrt(D) masked) v in float64, K/V heads repeated (repeat_interleave)."""
    g = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    s = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1])
    s = np.where(allowed, s, -np.inf)
    with np.errstate(invalid="ignore"):              # rows with no allowed key are NaN here (never compared)
        p = np.exp(s - s.max(-1, keepdims=True))
        return (p / p.sum(-1, keepdims=True)) @ v


@pytest.mark.parametrize("window", [None, 1, 3])
@pytest.mark.parametrize("t", [1, 4, 9])
def test_gqa_window_against_reference(window, t):
    rng = np.random.default_rng(0)
    s = 9
    q = rng.standard_normal((2, 4, t, 8))
    k, v = rng.standard_normal((2, 2, s, 8)), rng.standard_normal((2, 2, s, 8))
    qp, kp = np.arange(s - t, s)[:, None], np.arange(s)[None]
    allowed = kp <= qp
    if window is not None:
        allowed &= kp > qp - window
    ctx = AttentionContext.build(2, t)
    out = attend(axon.tensor(q), axon.tensor(k), axon.tensor(v), ctx, causal=True, window=window).numpy()
    np.testing.assert_allclose(out, reference(q, k, v, allowed), atol=1e-10)


def test_padding_mask_and_window_together():
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 2, 6, 4)) for _ in range(3))
    mask = np.ones((2, 6), dtype=np.int64)
    mask[0, :2] = 0
    ctx = AttentionContext.build(2, 6, mask)
    out = attend(axon.tensor(q), axon.tensor(k), axon.tensor(v), ctx, causal=True, window=3).numpy()
    qp, kp = np.arange(6)[:, None], np.arange(6)[None]
    allowed = (kp <= qp) & (kp > qp - 3) & mask[:, None, None, :].astype(bool)
    np.testing.assert_allclose(out[0, :, 2:], reference(q, k, v, allowed)[0, :, 2:], atol=1e-10)
    np.testing.assert_allclose(out[1], reference(q, k, v, allowed)[1], atol=1e-10)
    assert np.isfinite(out).all()                       # padding queries see nothing, yet stay finite


def test_window_rule_holds_after_the_cache_outgrows_the_window():
    """Decoding one token at a time through a cache 4x longer than W equals one windowed forward."""
    rng = np.random.default_rng(2)
    attn = MultiHeadAttention(16, 4, 2, 4, layer_idx=0, rotary=RotaryEmbedding(4, 64), sliding_window=3).eval()
    x = axon.tensor(rng.standard_normal((1, 12, 16)).astype(np.float32))
    with axon.no_grad():
        full = attn(x, AttentionContext.build(1, 12)).numpy()
        cache = KVCache(1, 1, 12, 2, 4)
        steps = []
        for t in range(12):
            ctx = AttentionContext.build(1, 1, None, cache)
            steps.append(attn(x[:, t:t + 1], ctx).numpy())
            ctx.finish()
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_attention_mask_shapes_are_checked():
    from axon_llm import InputError

    with pytest.raises(InputError, match="attention_mask"):
        AttentionContext.build(2, 3, np.ones((2, 4)))
    with pytest.raises(InputError, match="only 0 and 1"):
        AttentionContext.build(1, 2, np.array([[1, 2]]))


def test_positions_follow_the_mask_like_transformers_generate():
    ctx = AttentionContext.build(2, 5, np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]))
    np.testing.assert_array_equal(ctx.positions[0, 2:], [0, 1, 2])
    np.testing.assert_array_equal(ctx.positions[1], [0, 1, 2, 3, 4])


def test_sinusoidal_positions():
    from axon_llm.embeddings import PositionalEmbedding

    pe = PositionalEmbedding(8, max_len=16)
    table = pe(np.arange(20)[None]).numpy()[0]                 # grows past max_len on demand
    p = np.arange(20)[:, None]
    i = np.arange(0, 8, 2)[None]
    np.testing.assert_allclose(table[:, 0::2], np.sin(p / 10000 ** (i / 8)), atol=1e-6)
    np.testing.assert_allclose(table[:, 1::2], np.cos(p / 10000 ** (i / 8)), atol=1e-6)


def test_generic_decoder_and_encoder():
    dec = TransformerDecoder(40, 16, 2, 2, 32).eval()
    check_cached_equals_uncached(dec, 40)
    check_trains(TransformerDecoder(40, 16, 2, 2, 32), 40)
    enc = TransformerEncoder(2, 16, 2, 32)
    x = axon.tensor(np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with axon.no_grad():
        a = enc(x, attention_mask=mask).numpy()
        b = enc(x[:1, :3]).numpy()
    np.testing.assert_allclose(a[0, :3], b[0], atol=1e-5)
