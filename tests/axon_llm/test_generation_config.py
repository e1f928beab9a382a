"""GenerationConfig: the crate's constructors and builders, and validation."""

from __future__ import annotations

import pytest

from axon_llm.errors import GenerationError, LLMError
from axon_llm.sampling import GenerationConfig


def test_crate_defaults_and_constructors():
    d = GenerationConfig()
    assert (d.max_new_tokens, d.temperature, d.do_sample, d.num_beams) == (50, 1.0, True, 1)
    assert GenerationConfig.greedy().is_greedy
    assert GenerationConfig.sampling(0.7).temperature == 0.7
    k = GenerationConfig.top_k_sampling(40, 0.8)
    assert (k.top_k, k.temperature, k.do_sample) == (40, 0.8, True)
    p = GenerationConfig.nucleus_sampling(0.9, 1.1)
    assert (p.top_p, p.temperature) == (0.9, 1.1)
    b = GenerationConfig.beam_search(4)
    assert (b.num_beams, b.do_sample) == (4, False)


def test_builders_return_new_configs():
    base = GenerationConfig.greedy()
    cfg = (base.with_max_tokens(7).with_temperature(0.5).with_top_k(3).with_top_p(0.8).with_min_p(0.1)
           .with_repetition_penalty(1.2).with_eos_token(2).with_eos_token(9).with_seed(5)
           .with_stop_strings(["\n\n"]))
    assert (cfg.max_new_tokens, cfg.top_k, cfg.top_p, cfg.min_p, cfg.seed) == (7, 3, 0.8, 0.1, 5)
    assert cfg.eos_token_ids == (2, 9) and cfg.stop_strings == ("\n\n",)
    assert base.max_new_tokens == 50 and base.eos_token_ids == ()
    assert cfg.fill_token_id == 2 and cfg.with_pad_token(0).fill_token_id == 0
    assert GenerationConfig(eos_token_ids=[1, 2]).eos_token_ids == (1, 2)
    assert GenerationConfig(eos_token_ids=3).eos_token_ids == (3,)


@pytest.mark.parametrize("kwargs, word", [
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_k": 0}, "top_k"),
    ({"temperature": -1.0}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"min_p": 2.0}, "min_p"), ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"max_new_tokens": -1}, "max_new_tokens"), ({"max_new_tokens": 2.5}, "max_new_tokens"),
    ({"num_beams": 0}, "num_beams"), ({"num_beams": 2, "do_sample": True}, "beam"),
    ({"eos_token_ids": [-1]}, "eos"), ({"stop_strings": [""]}, "stop_strings"),
    ({"seed": "x"}, "seed"), ({"early_stopping": "sometimes"}, "early_stopping"),
])
def test_invalid_settings_raise_generation_error(kwargs, word):
    with pytest.raises(GenerationError, match=word) as info:
        GenerationConfig(**kwargs)
    assert isinstance(info.value, LLMError) and isinstance(info.value, ValueError)


def test_builders_validate_too():
    with pytest.raises(GenerationError, match="top_p"):
        GenerationConfig.greedy().with_top_p(2.0)
    with pytest.raises(GenerationError, match="top_k"):
        GenerationConfig.top_k_sampling(0, 1.0)
