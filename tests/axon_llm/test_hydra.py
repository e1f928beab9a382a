"""Hydra (Mamba mixers + sliding-window attention): window semantics, ring-buffer decoding,
training, configs. The Mamba mixer is SSM's (its transformers parity is tested in test_ssm.py)."""

from __future__ import annotations

import numpy as np
import pytest

import axon
from axon_llm import ConfigError
from axon_llm.mamba import MambaMixer, MambaState
from axon_llm.models.hydra import HydraConfig, HydraModel, WindowAttention, WindowKVCache

from tests.axon_llm.model_checks import (
    check_cache_matches_full, check_causal, check_every_parameter_gets_gradient, check_gradients_by_central_differences, check_learns, logits_np,
    next_token_loss,
)


@pytest.fixture(scope="module")
def small_window():
    """The tiny preset with a window of 3, so sequences of ~12 tokens really slide it."""
    axon.manual_seed(0)
    return HydraModel(HydraConfig.tiny().replace(sliding_window=3))


def test_layers_alternate_mamba_and_window_attention():
    model = HydraModel(HydraConfig.tiny())
    kinds = [type(layer.mixer if layer.is_mamba else layer.self_attn) for layer in model.model.layers]
    assert kinds == [MambaMixer, WindowAttention, MambaMixer, WindowAttention]


@pytest.mark.parametrize("W", [1, 3])
def test_window_attention_sees_exactly_the_last_w_positions(W):
    axon.manual_seed(0)
    attn = WindowAttention(HydraConfig.tiny().replace(sliding_window=W))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 10, 64)).astype(np.float32)
    base = logits_np(attn, axon.tensor(x))
    p = 7                                                   # query position under test
    for j in range(10):
        other = x.copy()
        other[0, j] += 1.0
        changed = not np.allclose(logits_np(attn, axon.tensor(other))[0, p], base[0, p], atol=1e-6)
        assert changed == (p - W < j <= p), f"W={W}: position {j} {'should not' if not (p - W < j <= p) else 'should'} affect query {p}"


def test_causal(small_window):
    check_causal(small_window, small_window.config.vocab_size)


def test_every_parameter_gets_a_gradient(small_window):
    ids = np.random.default_rng(0).integers(0, small_window.config.vocab_size, (2, 10))
    check_every_parameter_gets_gradient(small_window, next_token_loss(small_window(ids), ids))


def test_gradients_match_central_differences():
    axon.manual_seed(0)
    model = HydraModel(HydraConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                   state_size=4, intermediate_size=32, sliding_window=3))
    check_gradients_by_central_differences(model, model.config.vocab_size)


def test_cached_decoding_equals_full_forward_past_the_window(small_window):
    # 12 tokens through a window of 3: the ring wraps several times; the prefill (5) and the
    # 3-token chunk are each >= W
    check_cache_matches_full(small_window, small_window.config.vocab_size)


def test_cache_size_does_not_grow_with_length(small_window):
    short, long = small_window.new_cache(2, 16), small_window.new_cache(2, 100_000)
    assert short.nbytes == long.nbytes
    kinds = [type(s) for s in short.layers]
    assert kinds == [MambaState, WindowKVCache, MambaState, WindowKVCache]
    assert short.layers[1].k.shape[2] == 3                   # a W-long ring


def test_left_padded_batch_generates_like_the_unpadded_prompt(small_window):
    rng = np.random.default_rng(3)
    vocab = small_window.config.vocab_size
    prompt = rng.integers(1, vocab, (1, 6))
    padded = np.concatenate([np.zeros((1, 2), np.int64), prompt], axis=1)
    other = rng.integers(1, vocab, (1, 8))
    batch = np.concatenate([padded, other], axis=0)
    mask = np.ones_like(batch)
    mask[0, :2] = 0
    solo = small_window.generate(prompt, max_new_tokens=6, eos_token_id=None)   # both rows run all 6 steps
    both = small_window.generate(batch, attention_mask=mask, max_new_tokens=6, eos_token_id=None)
    np.testing.assert_array_equal(both[0, 2:], solo[0])


def test_tiny_learns():
    axon.manual_seed(0)
    model = HydraModel(HydraConfig.tiny())
    check_learns(model, model.config.vocab_size, steps=20, lr=1e-2)


def test_save_pretrained_round_trip(small_window, tmp_path):
    from axon_llm.auto import from_pretrained

    small_window.save_pretrained(tmp_path)
    again = from_pretrained(tmp_path)
    assert isinstance(again, HydraModel) and again.config.sliding_window == 3
    ids = np.random.default_rng(0).integers(0, small_window.config.vocab_size, (2, 9))
    np.testing.assert_array_equal(logits_np(again, ids), logits_np(small_window, ids))


def test_presets():
    rows = [  # vocab / d / layers / heads / d_state / ffn / window
        (HydraConfig.base(), (32000, 768, 24, 12, 16, 3072, 256)),
        (HydraConfig.small(), (32000, 256, 8, 4, 16, 1024, 128)),
        (HydraConfig.tiny(), (1000, 64, 4, 4, 8, 256, 64)),
    ]
    for c, want in rows:
        assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.state_size,
                c.intermediate_size, c.sliding_window) == want
        assert (c.expand, c.conv_kernel) == (2, 4)


@pytest.mark.parametrize("preset", [HydraConfig.base, HydraConfig.small, HydraConfig.tiny])
def test_parameter_count_is_arithmetic_and_build_is_lazy(preset):
    c = preset()
    params = list(HydraModel(c).parameters())
    assert sum(p.numel() for p in params) == c.num_parameters()
    assert not any(p.is_materialized for p in params)


def test_bad_configs_are_rejected():
    with pytest.raises(ConfigError, match="sliding_window"):
        HydraConfig.tiny().replace(sliding_window=0)
    with pytest.raises(ConfigError, match="num_key_value_heads"):
        HydraConfig.tiny().replace(num_key_value_heads=3)
    with pytest.raises(ConfigError, match="divisible"):
        HydraConfig.tiny().replace(num_attention_heads=5)
