"""LLaMA: parity with transformers' LlamaForCausalLM, KV-cache decoding, training, bad input."""

from __future__ import annotations

import numpy as np
import pytest

import axon
import axon.nn.functional as F
from axon_llm import InputError
from axon_llm.models import LLaMAConfig
from axon_llm.models import LLaMAForCausalLM

from tests.axon_llm.model_checks import (
    check_cached_equals_uncached, check_causal_parity, check_gradcheck, check_left_padding, check_trains,
)

CASES = ["llama", "llama_rope_linear", "llama_rope_dynamic", "llama_rope_llama3", "llama_rand0", "llama_rand1"]


def micro(**kw) -> LLaMAConfig:
    base = dict(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=32)
    base.update(kw)
    return LLaMAConfig(**base)


@pytest.mark.parametrize("case", CASES)
def test_matches_transformers(case):
    check_causal_parity(case)


@pytest.mark.parametrize("kw", [{}, {"tie_word_embeddings": True}, {"head_dim": 6, "attention_bias": True},
                                {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}])
def test_cached_decode_equals_full_forward(kw):
    # (not "dynamic": there, as in transformers, the tables depend on the longest position of each
    # call, so cached keys keep the rotation of the call that made them; the llama_rope_dynamic
    # fixture checks that generation still matches transformers token for token)
    model = LLaMAForCausalLM(micro(**kw)).eval()
    check_cached_equals_uncached(model, 50)
    check_left_padding(model, 50)


def test_every_parameter_trains():
    check_trains(LLaMAForCausalLM(micro(tie_word_embeddings=True)), 50)


def test_gradcheck_float64():
    ids = np.random.default_rng(1).integers(0, 30, (1, 5))
    model = LLaMAForCausalLM(micro(vocab_size=30, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1))
    loss = lambda m: F.cross_entropy(m(ids)[0, :-1], ids[0, 1:])
    check_gradcheck(model, loss)


def test_generate_shapes_and_tied_head():
    model = LLaMAForCausalLM(micro(tie_word_embeddings=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    out = model.generate(np.array([[1, 2, 3]]), max_new_tokens=4, eos_token_id=None)   # no early stop at EOS
    assert out.shape == (1, 7) and out.dtype == np.int64
    np.testing.assert_array_equal(out[:, :3], [[1, 2, 3]])


def test_logits_to_keep_gives_the_last_positions_and_generate_uses_it():
    model = LLaMAForCausalLM(micro()).eval()
    ids = np.random.default_rng(2).integers(0, 50, (2, 6))
    full = model(ids).numpy()                                               # [2, 6, 50]
    # equal up to float32 rounding: BLAS may sum in another order for a different number of rows
    np.testing.assert_allclose(model(ids, logits_to_keep=1).numpy(), full[:, -1:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model(ids, logits_to_keep=3).numpy(), full[:, -3:], rtol=1e-5, atol=1e-6)
    seen = []
    head = model.lm_head.forward
    model.lm_head.forward = lambda h: seen.append(tuple(h.shape)) or head(h)
    model.generate(ids, max_new_tokens=2, eos_token_id=None)
    assert seen == [(2, 1, 16), (2, 1, 16)]                                 # prefill: last position only


def test_input_ids_as_tensor_list_or_1d():
    model = LLaMAForCausalLM(micro()).eval()
    ids = np.array([[1, 2, 3]])
    ref = model(ids).numpy()
    np.testing.assert_array_equal(model(axon.tensor(ids)).numpy(), ref)
    np.testing.assert_array_equal(model([1, 2, 3]).numpy(), ref)


def test_bad_token_ids():
    model = LLaMAForCausalLM(micro())
    with pytest.raises(InputError, match="outside the vocabulary"):
        model(np.array([[1, 50]]))
    with pytest.raises(InputError, match="outside the vocabulary"):
        model(np.array([[-1, 2]]))
    with pytest.raises(InputError, match="integer"):
        model(np.array([[0.5, 2.0]]))
    with pytest.raises(InputError, match="batch, seq_len"):
        model(np.zeros((1, 2, 3), dtype=np.int64))


def test_cache_overflow_is_an_input_error():
    model = LLaMAForCausalLM(micro())
    cache = model.new_cache(1, 4)
    model(np.array([[1, 2, 3]]), cache=cache)
    with pytest.raises(InputError, match="KV cache holds 4"):
        model(np.array([[1, 2]]), cache=cache)
