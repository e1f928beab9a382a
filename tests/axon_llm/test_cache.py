"""KVCache: preallocated, explicit, advances by the tokens fed; errors for misuse."""

from __future__ import annotations

import numpy as np
import pytest

import axon
from axon_llm import InputError
from axon_llm.cache import KVCache, LayerKVCache
from axon_llm.models import GPT2Config, LLaMAConfig
from axon_llm.models import GPT2LMHead, LLaMAForCausalLM


def small_llama():
    return LLaMAForCausalLM(LLaMAConfig(vocab_size=30, hidden_size=16, intermediate_size=16, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2)).eval()


def test_cache_is_preallocated_and_advances():
    model = small_llama()
    cache = model.new_cache(2, 10)
    assert len(cache.layers) == 2 and cache.layers[0].k.shape == (2, 2, 10, 4)
    model(np.ones((2, 3), dtype=np.int64), cache=cache)
    assert len(cache) == 3
    model(np.ones((2, 1), dtype=np.int64), cache=cache)
    assert len(cache) == 4 and cache.seen.tolist() == [4, 4]
    cache.reset()
    assert len(cache) == 0


def test_chunked_prefill_equals_one_forward():
    model = small_llama()
    ids = np.random.default_rng(0).integers(0, 30, (2, 9))
    with axon.no_grad():
        full = model(ids).numpy()
        cache = model.new_cache(2, 9)
        parts = [model(ids[:, :4], cache=cache).numpy(), model(ids[:, 4:7], cache=cache).numpy(),
                 model(ids[:, 7:], cache=cache).numpy()]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, atol=1e-5)


def test_left_padded_generation_row_equals_unpadded():
    model = GPT2LMHead(GPT2Config(vocab_size=30, n_positions=32, n_embd=16, n_layer=2, n_head=2)).eval()
    ids = np.array([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    batch = model.generate(ids, max_new_tokens=6, attention_mask=mask)
    alone = model.generate(ids[:1, 2:], max_new_tokens=6)
    np.testing.assert_array_equal(batch[0, 2:], alone[0])


def test_gradient_flows_through_new_keys_in_the_cache():
    layer = LayerKVCache(1, 4, 1, 2)
    k = axon.tensor(np.ones((1, 1, 2, 2), np.float32), requires_grad=True)
    v = axon.tensor(np.ones((1, 1, 2, 2), np.float32), requires_grad=True)
    k_all, v_all = layer.update(k, v, 0)
    (k_all.sum() + v_all.sum()).backward()
    np.testing.assert_array_equal(k.grad.numpy(), np.ones((1, 1, 2, 2)))


def test_misuse_is_an_input_error():
    model = small_llama()
    cache = model.new_cache(1, 3)
    with pytest.raises(InputError, match="batch size 1"):
        model(np.ones((2, 1), dtype=np.int64), cache=cache)
    with pytest.raises(InputError, match="holds 3 tokens"):
        model(np.ones((1, 4), dtype=np.int64), cache=cache)
    with pytest.raises(InputError):
        KVCache(1, 0, 4, 1, 2)
