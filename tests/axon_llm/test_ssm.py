"""SSM (Mamba): transformers parity, streaming decode, training, configs.

Fixtures (tests/fixtures/hf/mamba*, made by make_fixtures.py from transformers'
MambaForCausalLM in float32): `mamba` is a hand-picked small config, `mamba_rand0/1` are seeded
random configs (expand 1-3, d_conv 2-4, explicit dt_rank, biases on or off).
"""

from __future__ import annotations

import numpy as np
import pytest

import axon
from axon_llm import ConfigError, InputError
from axon_llm.auto import from_pretrained
from axon_llm.mamba import MambaMixer
from axon_llm.models.ssm import SSMConfig, SSMForCausalLM

from tests.axon_llm.model_checks import (
    check_cache_matches_full, check_causal, check_every_parameter_gets_gradient, check_gradients_by_central_differences, check_learns, logits_np,
    next_token_loss,
)

CASES = ["mamba", "mamba_rand0", "mamba_rand1"]


@pytest.fixture(scope="module")
def tiny():
    axon.manual_seed(0)
    return SSMForCausalLM(SSMConfig.tiny())


def _load(fixtures_dir, name):
    path = fixtures_dir / "hf" / name
    return from_pretrained(path), np.load(path / "expected.npz")


# ------------------------------------------------------------------ transformers parity
@pytest.mark.parametrize("name", CASES)
def test_logits_match_transformers(fixtures_dir, name):
    model, exp = _load(fixtures_dir, name)
    assert isinstance(model, SSMForCausalLM)
    out = logits_np(model, exp["input_ids"])
    ref = exp["logits"]
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4 * max(1.0, float(np.abs(ref).max())))


@pytest.mark.parametrize("name", CASES)
def test_greedy_generation_matches_transformers(fixtures_dir, name):
    model, exp = _load(fixtures_dir, name)
    prompt, want = exp["prompt_ids"], exp["greedy_ids"]
    got = model.generate(prompt, max_new_tokens=want.shape[1] - prompt.shape[1], do_sample=False,
                         eos_token_id=None)                     # the fixtures were made without EOS
    np.testing.assert_array_equal(got, want)


def test_left_padded_batch_generation_matches_transformers(fixtures_dir):
    # transformers zeroes padded positions before and after the conv; so do we (mamba.py)
    model, exp = _load(fixtures_dir, "mamba")
    prompt, want = exp["batch_prompt_ids"], exp["batch_greedy_ids"]
    got = model.generate(prompt, attention_mask=exp["batch_attention_mask"],
                         max_new_tokens=want.shape[1] - prompt.shape[1], eos_token_id=None)
    np.testing.assert_array_equal(got, want)


def test_state_dict_names_are_transformers_names(fixtures_dir):
    from axon_llm.loaders.safetensors import HFLoader

    model, _ = _load(fixtures_dir, "mamba")
    # the tied head is one Parameter under two keys, as in transformers' state_dict; the file stores it once
    assert set(model.state_dict()) == set(HFLoader(fixtures_dir / "hf" / "mamba").keys()) | {"lm_head.weight"}
    assert model.tied_weights() == ("lm_head.weight",)
    assert model.lm_head.weight is model.backbone.embeddings.weight


def test_save_pretrained_round_trip(fixtures_dir, tmp_path):
    model, exp = _load(fixtures_dir, "mamba_rand1")
    model.save_pretrained(tmp_path)
    again = from_pretrained(tmp_path)
    np.testing.assert_array_equal(logits_np(again, exp["input_ids"]), logits_np(model, exp["input_ids"]))


def test_older_embedding_name_and_stored_tied_head_load(fixtures_dir, tmp_path):
    import shutil

    from axon_llm.loaders.safetensors import read_safetensors, write_safetensors

    src = fixtures_dir / "hf" / "mamba"
    shutil.copy(src / "config.json", tmp_path / "config.json")
    sd = dict(read_safetensors(src / "model.safetensors"))
    sd["backbone.embedding.weight"] = sd.pop("backbone.embeddings.weight")
    sd["lm_head.weight"] = sd["backbone.embedding.weight"]
    write_safetensors(tmp_path / "model.safetensors", sd)
    exp = np.load(src / "expected.npz")
    np.testing.assert_allclose(logits_np(from_pretrained(tmp_path), exp["input_ids"]), exp["logits"],
                               rtol=0, atol=1e-4 * max(1.0, float(np.abs(exp["logits"]).max())))


# ------------------------------------------------------------------ family checks
def test_causal(tiny):
    check_causal(tiny, tiny.config.vocab_size)


def test_every_parameter_gets_a_gradient(tiny):
    ids = np.random.default_rng(0).integers(0, tiny.config.vocab_size, (2, 10))
    check_every_parameter_gets_gradient(tiny, next_token_loss(tiny(ids), ids))


def test_gradients_match_central_differences():
    axon.manual_seed(0)
    model = SSMForCausalLM(SSMConfig.from_d_model(16, 50, num_layers=2))
    check_gradients_by_central_differences(model, model.config.vocab_size)


def test_cached_decoding_equals_full_forward(tiny):
    # prefill 5, single steps, then a 3-token chunk after the prefill (the stepwise scan path)
    check_cache_matches_full(tiny, tiny.config.vocab_size)


def test_state_decays():
    # A = -exp(A_log) < 0: the SSM state of a long run forgets the distant past (the crate's
    # positive A never decayed). Two prompts differing only in their first token end up close.
    axon.manual_seed(1)
    model = SSMForCausalLM(SSMConfig.from_d_model(32, 50, num_layers=1))
    rng = np.random.default_rng(0)
    a = rng.integers(0, 50, (1, 200))
    b = a.copy()
    b[0, 0] = (a[0, 0] + 1) % 50
    la, lb = logits_np(model, a), logits_np(model, b)
    assert np.abs(la[0, 1] - lb[0, 1]).max() > 1e-3              # the change is visible at first
    assert np.abs(la[0, -1] - lb[0, -1]).max() < 1e-3 * np.abs(la[0, 1] - lb[0, 1]).max()


def test_tiny_learns():
    axon.manual_seed(0)
    model = SSMForCausalLM(SSMConfig.tiny())
    check_learns(model, model.config.vocab_size, steps=20, lr=1e-2)


# ------------------------------------------------------------------ configs
def test_from_d_model():
    c = SSMConfig.from_d_model(100, 500)
    assert (c.intermediate_size, c.state_size, c.conv_kernel, c.time_step_rank, c.num_hidden_layers) == \
        (200, 16, 4, 7, 4)


def test_mamba_130m_count_and_lazy_build():
    c = SSMConfig.mamba_130m()
    assert (c.hidden_size, c.num_hidden_layers, c.vocab_size) == (768, 24, 50280)
    # transformers' MambaForCausalLM(MambaConfig(50280, 768, 24 layers)) has 129,135,360 parameters
    assert c.num_parameters() == 129_135_360
    model = SSMForCausalLM(c)
    params = list(model.parameters())
    assert sum(p.numel() for p in params) == c.num_parameters()
    assert not any(p.is_materialized for p in params)        # nothing allocated yet


@pytest.mark.parametrize("config", [SSMConfig.tiny(), SSMConfig.from_d_model(96, 300, num_layers=3),
                                    SSMConfig(vocab_size=77, hidden_size=40, expand=3, conv_kernel=2,
                                              use_bias=True, use_conv_bias=False, tie_word_embeddings=False)])
def test_parameter_count_is_arithmetic(config):
    assert sum(p.numel() for p in SSMForCausalLM(config).parameters()) == config.num_parameters()


def test_bad_configs_are_rejected():
    with pytest.raises(ConfigError, match="hidden_size"):
        SSMConfig(hidden_size=0)
    with pytest.raises(ConfigError, match="silu"):
        SSMConfig(hidden_act="gelu")


def test_bad_input_is_rejected(tiny):
    with pytest.raises(InputError):
        tiny(np.array([[0, tiny.config.vocab_size]]))
    cache = tiny.new_cache(2, 8)
    with pytest.raises(InputError, match="batch"):
        tiny(np.zeros((1, 3), np.int64), cache=cache)


def test_mixer_is_shared_with_hydra():
    from axon_llm.models.hydra import HydraConfig, HydraModel

    hydra = HydraModel(HydraConfig.tiny())
    assert isinstance(hydra.model.layers[0].mixer, MambaMixer)
