"""Gemma 3 (text): parity with transformers' Gemma3ForCausalLM on tiny random models (QK-norm,
(1 + w) norms, sqrt(d) embedding scale, interleaved local/global layers with their own RoPE bases,
query_pre_attn_scalar, final soft-capping), cached decoding past the window, config reading."""

from __future__ import annotations

import numpy as np
import pytest

from axon_llm import ConfigError, UnsupportedError
from axon_llm.models import Gemma3Config, Gemma3ForCausalLM

from tests.axon_llm.model_checks import (
    check_cached_equals_uncached, check_causal_parity, check_left_padding, check_trains, load_case,
)

CASES = ["gemma3", "gemma3_softcap"]


def micro(**kw) -> Gemma3Config:
    base = dict(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=1, head_dim=8, query_pre_attn_scalar=6, max_position_embeddings=64,
                sliding_window=3, sliding_window_pattern=2)
    base.update(kw)
    return Gemma3Config(**base)


@pytest.mark.parametrize("case", CASES)
def test_matches_transformers(case):
    check_causal_parity(case)


def test_the_fixture_exercises_every_difference():
    model, _ = load_case("gemma3_softcap")
    c = model.config
    assert c.layer_types == ["sliding_attention", "full_attention"] * 2
    assert c.head_dim * c.num_attention_heads != c.hidden_size and c.query_pre_attn_scalar != c.head_dim
    assert c.final_logit_softcapping == 10.0 and c.rope_scaling["rope_type"] == "linear"
    assert c.rope_local_base_freq == 1e4 and c.rope_theta == 1e6
    rotary = model.model.layers[0].self_attn.rotary, model.model.layers[1].self_attn.rotary
    assert rotary[0].base == 1e4 and rotary[1].base == 1e6 and rotary[1].scaling is not None


@pytest.mark.parametrize("kw", [{}, {"final_logit_softcapping": 2.0}, {"sliding_window": 1}])
def test_cached_decode_equals_full_forward_past_the_window(kw):
    model = Gemma3ForCausalLM(micro(**kw)).eval()
    check_cached_equals_uncached(model, 50, prompt=4, steps=8)
    check_left_padding(model, 50)


def test_every_parameter_trains():
    check_trains(Gemma3ForCausalLM(micro()), 50)


def test_config_reads_both_rope_styles():
    v5 = {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 5e5},
                              "sliding_attention": {"rope_type": "default", "rope_theta": 2e4}},
          "hidden_activation": "gelu_pytorch_tanh"}
    v4 = {"rope_theta": 5e5, "rope_local_base_freq": 2e4, "hidden_activation": "gelu_pytorch_tanh"}
    for d in (v5, v4):
        c = Gemma3Config.from_dict({**micro().to_dict(), **d})
        assert (c.rope_theta, c.rope_local_base_freq) == (5e5, 2e4)
    assert "hidden_activation" in micro().to_dict() and "hidden_act" not in micro().to_dict()


@pytest.mark.parametrize("bad", [{"sliding_window_pattern": 0}, {"query_pre_attn_scalar": -1},
                                 {"final_logit_softcapping": float("inf")}, {"rope_local_base_freq": 0},
                                 {"layer_types": ["full_attention"]}, {"sliding_window": True}])
def test_bad_config_is_a_config_error(bad):
    with pytest.raises(ConfigError):
        micro(**bad)


def test_bidirectional_variant_is_unsupported():
    with pytest.raises(UnsupportedError, match="bidirectional"):
        Gemma3Config.from_dict({**micro().to_dict(), "use_bidirectional_attention": True})


def test_parameter_counts():
    assert abs(Gemma3Config.gemma3_270m().num_parameters() - 268_098_176) / 268_098_176 < 0.01
    assert abs(Gemma3Config.gemma3_1b().num_parameters() - 999_885_952) / 999_885_952 < 0.01
    model = Gemma3ForCausalLM(micro())
    model.materialize()
    assert sum(p.numpy().size for p in {id(p): p for p in model.parameters()}.values()) == micro().num_parameters()
