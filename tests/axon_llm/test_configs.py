"""Configs: presets and their published parameter counts, both config.json styles, validation, laziness."""

from __future__ import annotations

import json
import tracemalloc

import pytest

from axon_llm import ConfigError, UnsupportedError
from axon_llm.models import BertConfig, GPT2Config, LLaMAConfig, MistralConfig, Phi3Config, PhiConfig
from axon_llm.models import LLaMAForCausalLM, MistralForCausalLM

from tests.axon_llm.model_checks import HF

# published parameter counts (model cards / transformers num_parameters())
PUBLISHED = [
    (GPT2Config.small, 124_439_808), (GPT2Config.medium, 354_823_168), (GPT2Config.large, 774_030_080),
    (GPT2Config.xl, 1_557_611_200), (BertConfig.base, 109_482_240), (BertConfig.large, 335_141_888),
    (LLaMAConfig.llama2_7b, 6_738_415_616), (LLaMAConfig.llama2_13b, 13_015_864_320),
    (LLaMAConfig.llama3_8b, 8_030_261_248), (MistralConfig.mistral_7b, 7_241_732_096),
    (MistralConfig.mistral_7b_instruct, 7_241_732_096), (MistralConfig.mixtral_8x7b, 46_702_792_704),
    (PhiConfig.phi1, 1_418_270_720), (PhiConfig.phi2, 2_779_683_840), (PhiConfig.phi3_mini, 3_821_079_552),
]


@pytest.mark.parametrize("preset,count", PUBLISHED, ids=[p.__qualname__ for p, _ in PUBLISHED])
def test_presets_match_published_counts(preset, count):
    assert abs(preset().num_parameters() - count) <= 0.01 * count


def test_mixtral_active_parameters():
    assert abs(MistralConfig.mixtral_8x7b().num_active_parameters() - 12.9e9) <= 0.01 * 12.9e9


@pytest.mark.parametrize("preset", [GPT2Config.tiny, BertConfig.tiny, LLaMAConfig.tiny, MistralConfig.tiny,
                                    PhiConfig.tiny, Phi3Config.tiny])
def test_tiny_presets(preset):
    cfg = preset()
    assert cfg.num_parameters() > 0
    assert type(cfg).from_dict(cfg.to_dict()) == cfg


def test_crate_tiny_values():
    t = LLaMAConfig.tiny()
    assert (t.vocab_size, t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads) == \
        (32000, 256, 512, 4, 4)
    m = MistralConfig.tiny()
    assert (m.num_key_value_heads, m.sliding_window) == (2, 128)
    assert PhiConfig.tiny().partial_rotary_factor == 0.5
    assert LLaMAConfig.llama3_8b().rope_theta == 5e5 and LLaMAConfig.llama3_8b().num_key_value_heads == 8


def test_building_huge_presets_allocates_nothing():
    tracemalloc.start()
    try:
        llama = LLaMAForCausalLM(LLaMAConfig.llama3_8b())
        mixtral = MistralForCausalLM(MistralConfig.mixtral_8x7b())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20                      # vs ~32 GB and ~187 GB of float32 weights
    assert sum(p.numel() for p in llama.parameters()) == LLaMAConfig.llama3_8b().num_parameters()
    assert sum(p.numel() for p in mixtral.parameters()) == MistralConfig.mixtral_8x7b().num_parameters()


def test_config_json_4x_and_5x_styles_agree():
    v4 = {"hidden_size": 64, "num_attention_heads": 4, "rope_theta": 5e5,
          "rope_scaling": {"type": "linear", "factor": 4.0}}
    v5 = {"hidden_size": 64, "num_attention_heads": 4,
          "rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 5e5}}
    a, b = LLaMAConfig.from_dict(v4), LLaMAConfig.from_dict(v5)
    assert a == b and a.rope_theta == 5e5 and a.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    plain = LLaMAConfig.from_dict({"rope_parameters": {"rope_type": "default", "rope_theta": 100.0}})
    assert plain.rope_scaling is None and plain.rope_theta == 100.0
    phi = PhiConfig.from_dict({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                                                   "partial_rotary_factor": 0.25}})
    assert phi.partial_rotary_factor == 0.25


def test_fixture_configs_load_and_keep_unknown_keys():
    cfg = MistralConfig.from_hf_config(HF / "mixtral")
    assert cfg.is_moe and cfg.num_local_experts == 4 and cfg.sliding_window is None
    assert cfg.extra["transformers_version"]
    out = cfg.to_dict()
    assert out["model_type"] == "mixtral" and out["architectures"] == ["MixtralForCausalLM"]
    json.dumps(out)


@pytest.mark.parametrize("make,match", [
    (lambda: LLaMAConfig(num_attention_heads=6, num_key_value_heads=4, hidden_size=48), "divisible"),
    (lambda: LLaMAConfig(hidden_size=50, num_attention_heads=4), "divisible"),
    (lambda: MistralConfig(sliding_window=0), "sliding_window"),
    (lambda: MistralConfig(num_local_experts=2, num_experts_per_tok=3), "cannot exceed"),
    (lambda: GPT2Config(n_embd=10, n_head=3), "divisible"),
    (lambda: BertConfig(num_hidden_layers=0), "positive"),
    (lambda: PhiConfig(partial_rotary_factor=1.5), "partial_rotary_factor"),
    (lambda: LLaMAConfig(rope_scaling={"rope_type": "linear", "factor": 0.5}), "factor"),
    (lambda: LLaMAConfig(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "low_freq_factor"),
])
def test_invalid_configs_are_rejected(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_unsupported_settings_name_the_supported_ones():
    with pytest.raises(UnsupportedError, match="supported: default, linear, dynamic, llama3"):
        LLaMAConfig.from_dict({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}})
    with pytest.raises(UnsupportedError, match="silu"):
        LLaMAConfig(hidden_act="mish")
