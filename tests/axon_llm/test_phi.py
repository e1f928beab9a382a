"""Phi-1/2 (parallel block, partial RoPE) and Phi-3 (fused projections): parity, cache, training."""

from __future__ import annotations

import numpy as np
import pytest

import axon.nn.functional as F
from axon_llm import ConfigError
from axon_llm.models import Phi3Config, PhiConfig
from axon_llm.models import PhiForCausalLM

from tests.axon_llm.model_checks import (
    check_cached_equals_uncached, check_causal_parity, check_gradcheck, check_left_padding, check_trains,
)

CASES = ["phi", "phi_rand0", "phi_rand1", "phi3", "phi3_rand0", "phi3_rand1"]


def micro_phi(**kw) -> PhiConfig:
    base = dict(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=32, partial_rotary_factor=0.5)
    base.update(kw)
    return PhiConfig(**base)


def micro_phi3(**kw) -> Phi3Config:
    base = dict(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=32)
    base.update(kw)
    return Phi3Config(**base)


@pytest.mark.parametrize("case", CASES)
def test_matches_transformers(case):
    check_causal_parity(case)


@pytest.mark.parametrize("config", [micro_phi(), micro_phi(qk_layernorm=True, partial_rotary_factor=0.25),
                                    micro_phi3(), micro_phi3(partial_rotary_factor=0.5, sliding_window=3)],
                         ids=["phi", "phi-qk-ln", "phi3", "phi3-partial-window"])
def test_cached_decode_equals_full_forward(config):
    model = PhiForCausalLM(config).eval()
    check_cached_equals_uncached(model, 50)
    check_left_padding(model, 50)


@pytest.mark.parametrize("config", [micro_phi(qk_layernorm=True), micro_phi3()], ids=["phi", "phi3"])
def test_every_parameter_trains(config):
    check_trains(PhiForCausalLM(config), 50)


@pytest.mark.parametrize("make", [micro_phi, micro_phi3], ids=["phi", "phi3"])
def test_gradcheck_float64(make):
    ids = np.random.default_rng(1).integers(0, 30, (1, 5))
    model = PhiForCausalLM(make(vocab_size=30, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=2))
    check_gradcheck(model, lambda m: F.cross_entropy(m(ids)[0, :-1], ids[0, 1:]))


def test_variants_have_the_hf_structure():
    phi = PhiForCausalLM(micro_phi())
    names = {n for n, _ in phi.named_parameters()}
    assert {"model.layers.0.self_attn.dense.weight", "model.layers.0.mlp.fc1.bias", "model.final_layernorm.bias",
            "lm_head.bias"} <= names
    phi3 = PhiForCausalLM(micro_phi3())
    names = {n for n, _ in phi3.named_parameters()}
    assert {"model.layers.0.self_attn.qkv_proj.weight", "model.layers.0.mlp.gate_up_proj.weight",
            "model.norm.weight"} <= names
    assert "lm_head.bias" not in names
    assert phi3.hf_architecture == "Phi3ForCausalLM" and phi.hf_architecture == "PhiForCausalLM"


def test_partial_rotary_must_give_an_even_dimension():
    with pytest.raises(ConfigError, match="rotary dimension"):
        micro_phi(partial_rotary_factor=0.4)   # head_dim 8 -> 3 channels
