"""GPT-2: parity with GPT2LMHeadModel, Conv1D layout, tied head, learned-position limit, training."""

from __future__ import annotations

import numpy as np
import pytest

import axon.nn.functional as F
from axon_llm import InputError
from axon_llm.models import GPT2Config
from axon_llm.models import GPT2LMHead
from axon_llm.models.gpt2 import CONV1D_WEIGHTS

from tests.axon_llm.model_checks import (
    check_cached_equals_uncached, check_causal_parity, check_gradcheck, check_left_padding, check_trains, load_case,
)

CASES = ["gpt2", "gpt2_rand0", "gpt2_rand1"]


def micro(**kw) -> GPT2Config:
    base = dict(vocab_size=50, n_positions=24, n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    base.update(kw)
    return GPT2Config(**base)


@pytest.mark.parametrize("case", CASES)
def test_matches_transformers(case):
    check_causal_parity(case)


def test_conv1d_weights_are_stored_in_by_out():
    model, _ = load_case("gpt2")
    d = model.config.n_embd
    shapes = {k: model.get_parameter(f"transformer.h.0.{k}").shape for k in CONV1D_WEIGHTS}
    assert shapes["attn.c_attn.weight"] == (d, 3 * d) and shapes["mlp.c_fc.weight"] == (d, 4 * d)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert "lm_head.weight" not in dict(model.named_parameters())


@pytest.mark.parametrize("kw", [{}, {"scale_attn_by_inverse_layer_idx": True, "n_inner": 20}])
def test_cached_decode_equals_full_forward(kw):
    model = GPT2LMHead(micro(**kw)).eval()
    check_cached_equals_uncached(model, 50)
    check_left_padding(model, 50)


def test_every_parameter_trains():
    check_trains(GPT2LMHead(micro(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)), 50)


def test_gradcheck_float64():
    ids = np.random.default_rng(1).integers(0, 30, (1, 5))
    model = GPT2LMHead(micro(vocab_size=30, n_embd=8, n_layer=1, n_head=2))
    check_gradcheck(model, lambda m: F.cross_entropy(m(ids)[0, :-1], ids[0, 1:]))


def test_generate_greedy_is_generate_without_sampling():
    model = GPT2LMHead(micro())
    ids = np.array([[3, 4, 5]])
    np.testing.assert_array_equal(model.generate_greedy(ids, max_new_tokens=5),
                                  model.generate(ids, max_new_tokens=5, do_sample=False))
    sampled = model.generate(ids, max_new_tokens=5, do_sample=True, temperature=0.8, top_k=5, seed=0)
    assert sampled.shape == (1, 8) and ((sampled >= 0) & (sampled < 50)).all()


def test_gpt2_embedding_module():
    from axon_llm.embeddings import GPT2Embedding

    emb = GPT2Embedding(50, 24, 16)
    ids = np.array([[3, 4, 5]])
    out = emb(ids).numpy()
    np.testing.assert_allclose(out, emb.wte.weight.numpy()[ids] + emb.wpe.weight.numpy()[np.arange(3)][None])
    with pytest.raises(InputError, match="24 learned positions"):
        emb(np.zeros((1, 25), dtype=np.int64))


def test_sequence_longer_than_learned_positions():
    model = GPT2LMHead(micro())
    with pytest.raises(InputError, match="24 learned positions"):
        model(np.zeros((1, 25), dtype=np.int64))
    with pytest.raises(InputError, match="outside the vocabulary"):
        model(np.array([[50]]))
