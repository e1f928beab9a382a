"""RoPE: the rotate_half convention, rope_scaling types, partial rotary, relative-position property."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import axon
from axon_llm.rope import RotaryEmbedding, apply_rotary_pos_emb, compute_inv_freq, rotate_half


def test_rotate_half_convention():
    x = axon.tensor(np.arange(6, dtype=np.float32).reshape(1, 1, 1, 6))
    np.testing.assert_array_equal(rotate_half(x).numpy().ravel(), [-3, -4, -5, 0, 1, 2])


def test_rope_rotates_channel_pairs_i_and_i_plus_half():
    """Pair (x_i, x_{i+D/2}) is rotated by angle p * theta^(-2i/D), as a complex multiplication."""
    d, p, theta = 8, 5, 10000.0
    rope = RotaryEmbedding(d, 64, theta)
    x = np.random.default_rng(0).standard_normal((1, 1, 1, d)).astype(np.float32)
    cos, sin = rope.cos_sin(np.array([[p]]))
    out = apply_rotary_pos_emb(axon.tensor(x), cos, sin).numpy().ravel()
    z = x.ravel()[: d // 2] + 1j * x.ravel()[d // 2:]
    angles = p * theta ** (-np.arange(0, d, 2) / d)
    expected = z * np.exp(1j * angles)
    np.testing.assert_allclose(out, np.concatenate([expected.real, expected.imag]), rtol=1e-5, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(p=st.integers(0, 200), shift=st.integers(0, 200), seed=st.integers(0, 1000))
def test_scores_depend_only_on_the_distance(p, shift, seed):
    rope = RotaryEmbedding(16, 512, 10000.0)
    rng = np.random.default_rng(seed)
    q, k = (axon.tensor(rng.standard_normal((1, 1, 1, 16))) for _ in range(2))

    def score(i, j):
        cq, sq = rope.cos_sin(np.array([[i]]))
        ck, sk = rope.cos_sin(np.array([[j]]))
        return float((apply_rotary_pos_emb(q, cq, sq) * apply_rotary_pos_emb(k, ck, sk)).sum().item())

    assert math.isclose(score(p + 7, p), score(p + shift + 7, p + shift), rel_tol=1e-3, abs_tol=1e-3)


def test_partial_rotary_leaves_the_tail_untouched():
    rope = RotaryEmbedding(4, 64)
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 10)).astype(np.float32)
    cos, sin = rope.cos_sin(np.tile(np.arange(5), (2, 1)))
    out = apply_rotary_pos_emb(axon.tensor(x), cos, sin).numpy()
    np.testing.assert_array_equal(out[..., 4:], x[..., 4:])
    assert np.abs(out[..., 1:, :4] - x[..., 1:, :4]).max() > 1e-3
    np.testing.assert_allclose(out[:, :, 0], x[:, :, 0], atol=1e-7)      # position 0: no rotation


def test_scaling_types():
    d, base = 16, 10000.0
    default = compute_inv_freq(d, base)
    np.testing.assert_allclose(compute_inv_freq(d, base, {"rope_type": "linear", "factor": 4.0}), default / 4)
    dyn = {"rope_type": "dynamic", "factor": 2.0}
    np.testing.assert_array_equal(compute_inv_freq(d, base, dyn, max_position_embeddings=32, seq_len=20), default)
    longer = compute_inv_freq(d, base, dyn, max_position_embeddings=32, seq_len=64)
    scaled_base = base * ((2.0 * 64 / 32) - 1.0) ** (d / (d - 2))
    np.testing.assert_allclose(longer, 1.0 / scaled_base ** (np.arange(0, d, 2) / d), rtol=1e-5)
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192}
    f = compute_inv_freq(d, base, llama3)
    wavelen = 2 * np.pi / default
    high = wavelen < 8192 / 4                       # short wavelengths kept
    low = wavelen > 8192 / 1                        # long wavelengths divided by the factor
    assert high.any() and low.any() and (~high & ~low).any()
    np.testing.assert_allclose(f[high], default[high])
    np.testing.assert_allclose(f[low], default[low] / 8, rtol=1e-6)
    mid = ~high & ~low
    assert ((f[mid] < default[mid]) & (f[mid] > default[mid] / 8)).all()


def test_dynamic_tables_follow_the_longest_position_of_the_call():
    rope = RotaryEmbedding(8, 4, 10000.0, {"rope_type": "dynamic", "factor": 2.0})
    short_cos, _ = rope.cos_sin(np.array([[0, 1, 2]]))
    long_cos, _ = rope.cos_sin(np.array([[0, 1, 2, 3, 4, 5, 6, 7]]))
    assert not np.allclose(short_cos[..., :3, :], long_cos[..., :3, :])


@pytest.mark.parametrize("rot", [8, 4])                 # full and partial rotary
def test_apply_rotary_pos_emb_equals_the_rotate_half_composite_and_its_gradient(rot):
    """apply_rotary_pos_emb is one autograd node; the composite x cos + rotate_half(x) sin is its reference."""
    rng = np.random.default_rng(rot)
    x = rng.standard_normal((2, 3, 5, 8))
    cos, sin = RotaryEmbedding(rot, 32).cos_sin(np.arange(5)[None].repeat(2, 0))
    fast_x, ref_x = axon.tensor(x, requires_grad=True), axon.tensor(x, requires_grad=True)
    fast = apply_rotary_pos_emb(fast_x, cos, sin)
    c, s = axon.tensor(np.asarray(cos, np.float64)), axon.tensor(np.asarray(sin, np.float64))
    rotated = ref_x[..., :rot] * c + rotate_half(ref_x[..., :rot]) * s
    ref = axon.cat([rotated, ref_x[..., rot:]], dim=-1) if rot < 8 else rotated
    np.testing.assert_allclose(fast.detach().numpy(), ref.detach().numpy(), rtol=1e-12, atol=1e-12)
    w = axon.tensor(rng.standard_normal(x.shape))
    (fast * w).sum().backward()
    (ref * w).sum().backward()
    np.testing.assert_allclose(fast_x.grad.numpy(), ref_x.grad.numpy(), rtol=1e-12, atol=1e-12)
