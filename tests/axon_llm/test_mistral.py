"""Mistral (sliding window) and Mixtral (sparse MoE): parity, the window across cache steps, training."""

from __future__ import annotations

import numpy as np
import pytest

import axon
import axon.nn.functional as F
from axon_llm.models import MistralConfig
from axon_llm.models import MistralForCausalLM
from axon_llm.moe import load_balancing_loss

from tests.axon_llm.model_checks import (
    check_cached_equals_uncached, check_causal_parity, check_gradcheck, check_left_padding, check_trains,
    load_case, logits_np, rel_err,
)

CASES = ["mistral", "mistral_rand0", "mistral_rand1", "mixtral"]


def micro(**kw) -> MistralConfig:
    base = dict(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, sliding_window=3)
    base.update(kw)
    return MistralConfig(**base)


@pytest.mark.parametrize("case", CASES)
def test_matches_transformers(case):
    check_causal_parity(case)


def test_left_padded_batch_through_the_window_matches_transformers():
    """A left-padded batch four windows long (W = 3) gives transformers' logits at every real position."""
    model, e = load_case("mistral_window_padded")
    assert model.config.sliding_window == 3 and e["input_ids"].shape[1] >= 4 * 3
    real = e["attention_mask"] == 1
    assert not real.all()                                       # the batch really is padded
    got = logits_np(model, e["input_ids"], attention_mask=e["attention_mask"])
    assert rel_err(got[real], e["logits"][real]) < 1e-4
    assert np.isfinite(got).all()


def test_fixture_generation_runs_past_the_window():
    _, e = load_case("mistral")
    window = 5  # tests/fixtures/make_fixtures.py: sliding_window=5
    assert e["greedy_ids"].shape[1] > 3 * window


@pytest.mark.parametrize("kw", [{}, {"sliding_window": 1}, {"sliding_window": None},
                                {"num_local_experts": 4, "num_experts_per_tok": 2}])
def test_cached_decode_equals_full_forward_past_the_window(kw):
    model = MistralForCausalLM(micro(**kw)).eval()
    check_cached_equals_uncached(model, 50, prompt=4, steps=8)   # 12 tokens, window 3
    check_left_padding(model, 50)


def test_window_really_limits_attention():
    """With window W, changing a token more than W - 1 positions back changes nothing in the first layer's
    reach; with 1 layer the logits at position p depend only on tokens p-W+1..p."""
    model = MistralForCausalLM(micro(num_hidden_layers=1, sliding_window=3)).eval()
    ids = np.random.default_rng(0).integers(0, 50, (1, 10))
    other = ids.copy()
    other[0, 2] = (ids[0, 2] + 1) % 50
    a, b = logits_np(model, ids), logits_np(model, other)
    np.testing.assert_array_equal(a[0, 5:], b[0, 5:])            # position 2 is out of reach from 5 on
    assert np.abs(a[0, 2:5] - b[0, 2:5]).max() > 0


def test_mixtral_is_a_real_moe():
    cfg = MistralConfig.mixtral_8x7b()
    model = MistralForCausalLM(cfg)
    layer = model.model.layers[0]
    assert len(layer.block_sparse_moe.experts) == 8 and not hasattr(layer, "mlp")
    assert model.hf_architecture == "MixtralForCausalLM"


@pytest.mark.parametrize("kw", [{}, {"num_local_experts": 4, "num_experts_per_tok": 2}])
def test_every_parameter_trains(kw):
    check_trains(MistralForCausalLM(micro(**kw)), 50)


def test_router_gets_gradient_from_load_balancing_loss():
    model = MistralForCausalLM(micro(num_local_experts=4, num_experts_per_tok=2))
    ids = np.random.default_rng(0).integers(0, 50, (2, 8))
    logits, router_logits = model.forward_with_router_logits(ids)
    assert len(router_logits) == 2 and router_logits[0].shape == (16, 4)
    loss = load_balancing_loss(router_logits, top_k=2)
    loss.backward()
    g = model.model.layers[0].block_sparse_moe.gate.weight.grad.numpy()
    assert np.isfinite(g).all() and np.abs(g).max() > 0


def test_gradcheck_float64_mixtral():
    ids = np.random.default_rng(1).integers(0, 30, (1, 6))
    model = MistralForCausalLM(micro(vocab_size=30, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1, sliding_window=2,
                                     num_local_experts=3, num_experts_per_tok=2))
    check_gradcheck(model, lambda m: F.cross_entropy(m(ids)[0, :-1], ids[0, 1:]))
