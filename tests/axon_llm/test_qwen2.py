"""Qwen2: parity with transformers' Qwen2ForCausalLM (q/k/v biases, sliding window on the upper
layers, tied embeddings), cached decoding past the window, config checks."""

from __future__ import annotations

import numpy as np
import pytest

from axon_llm import ConfigError
from axon_llm.models import Qwen2Config, Qwen2ForCausalLM

from tests.axon_llm.model_checks import (
    check_cached_equals_uncached, check_causal_parity, check_left_padding, check_trains, load_case,
)

CASES = ["qwen2", "qwen2_untied"]


def micro(**kw) -> Qwen2Config:
    base = dict(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, use_sliding_window=True, sliding_window=3,
                max_window_layers=1)
    base.update(kw)
    return Qwen2Config(**base)


@pytest.mark.parametrize("case", CASES)
def test_matches_transformers(case):
    check_causal_parity(case)


def test_the_fixture_really_has_biases_and_windowed_upper_layers():
    model, _ = load_case("qwen2")
    layers = model.model.layers
    assert layers[0].self_attn.q_proj.bias is not None and layers[0].self_attn.o_proj.bias is None
    assert [layer.self_attn.sliding_window for layer in layers] == [None, 5, 5]
    assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.parametrize("kw", [{}, {"use_sliding_window": False}, {"max_window_layers": 0, "sliding_window": 1}])
def test_cached_decode_equals_full_forward_past_the_window(kw):
    model = Qwen2ForCausalLM(micro(**kw)).eval()
    check_cached_equals_uncached(model, 50, prompt=4, steps=8)
    check_left_padding(model, 50)


def test_every_parameter_trains():
    check_trains(Qwen2ForCausalLM(micro(tie_word_embeddings=True)), 50)


def test_layer_types_follow_transformers_rule():
    assert micro().layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    assert micro(use_sliding_window=False).layer_types == ["full_attention"] * 3
    assert Qwen2Config.from_dict({**micro().to_dict(), "layer_types": None}).layer_types == micro().layer_types


@pytest.mark.parametrize("bad", [{"layer_types": ["full_attention"]}, {"layer_types": ["local"] * 3},
                                 {"use_sliding_window": 1}, {"sliding_window": 0}, {"sliding_window": True}])
def test_bad_config_is_a_config_error(bad):
    with pytest.raises(ConfigError):
        micro(**bad)


def test_parameter_count_matches_the_published_sizes():
    n = Qwen2Config.qwen2_5_0_5b().num_parameters()
    assert abs(n - 494_032_768) / 494_032_768 < 0.01
    n = Qwen2Config.qwen2_5_1_5b().num_parameters()
    assert abs(n - 1_543_714_304) / 1_543_714_304 < 0.01
    model = Qwen2ForCausalLM(micro())
    model.materialize()
    assert sum(p.numpy().size for p in {id(p): p for p in model.parameters()}.values()) == micro().num_parameters()
