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


def test_update_returns_views_of_the_buffers_and_never_copies_the_prefix():
    import tracemalloc

    rng = np.random.default_rng(0)
    layer = LayerKVCache(1, 4096, 4, 64)                   # K and V buffers of 4 MiB each
    prefix = rng.standard_normal((1, 4, 4000, 64)).astype(np.float32)
    layer.update(axon.tensor(prefix), axon.tensor(prefix), 0)
    step = axon.tensor(rng.standard_normal((1, 4, 1, 64)).astype(np.float32))
    tracemalloc.start()
    k_all, v_all = layer.update(step, step)                 # one decode step after the 4000-token prefix
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < layer.k[:, :, :4000].nbytes // 100        # a copy of the prefix would be 4 MB; no copy is bytes
    for got, buf in ((k_all, layer.k), (v_all, layer.v)):
        assert got.shape == (1, 4, 4001, 64) and len(layer) == 4001
        assert got.data.base is buf and np.shares_memory(got.data, buf)   # a view of the buffer itself
    np.testing.assert_array_equal(k_all.numpy()[:, :, :4000], prefix)
    np.testing.assert_array_equal(k_all.numpy()[:, :, 4000:], step.numpy())
    layer.k[0, 0, 0, 0] = 123.0                             # a write to the buffer shows through the view
    assert k_all.data[0, 0, 0, 0] == 123.0


def test_model_cache_update_returns_views_of_each_layer():
    model = small_llama()
    cache = model.new_cache(2, 10)
    with axon.no_grad():
        model(np.ones((2, 3), dtype=np.int64), cache=cache)
        k = axon.tensor(np.ones((2, 2, 1, 4), np.float32))
        k_all, v_all = cache.update(1, k, k)                # layer 1's next slot (3)
    assert k_all.shape == (2, 2, 4, 4)
    assert k_all.data.base is cache.layers[1].k and v_all.data.base is cache.layers[1].v


def _caches():
    from axon_llm.models.hydra import HydraConfig, HydraModel
    from axon_llm.models.ssm import SSMConfig, SSMForCausalLM

    axon.manual_seed(0)
    hydra = HydraModel(HydraConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                   state_size=4, intermediate_size=32, sliding_window=3)).eval()
    ssm = SSMForCausalLM(SSMConfig.from_d_model(16, 30, num_layers=2)).eval()
    return {"kv": small_llama(), "ssm": ssm, "hybrid": hydra}


@pytest.mark.parametrize("kind", ["kv", "ssm", "hybrid"])
def test_every_cache_has_the_small_interface_and_reorders_rows(kind):
    """update / reorder / len / max_length on KV, SSM state and the SSM + window-KV hybrid:
    after reorder([1, 1]) both rows continue row 1, exactly as a cache filled with row 1 twice."""
    from axon_llm.cache import Cache

    model = _caches()[kind]
    ids = np.random.default_rng(1).integers(0, 30, (2, 5))
    nxt = np.array([[7], [7]])
    with axon.no_grad():
        cache = model.new_cache(2, 8)
        assert isinstance(cache, Cache) and all(isinstance(layer, Cache) for layer in cache.layers)
        model(ids, cache=cache)
        assert len(cache) == 5 and cache.max_length in (8, None)
        cache.reorder(np.array([1, 1]))
        got = model(nxt, cache=cache).numpy()
        want_cache = model.new_cache(2, 8)
        model(ids[[1, 1]], cache=want_cache)
        want = model(nxt, cache=want_cache).numpy()
    assert len(cache) == 6
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got[0], got[1])


def test_rows_view_writes_into_the_owner_and_leaves_other_rows_alone():
    model = small_llama()
    ids = np.random.default_rng(1).integers(0, 30, (3, 5))
    with axon.no_grad():
        cache = model.new_cache(3, 8)
        model(ids[:, :4], cache=cache)
        untouched = [(layer.k[2].copy(), layer.v[2].copy()) for layer in cache.layers]
        view = cache.rows(2)
        step = model(ids[:2, 4:], cache=view).numpy()                       # rows 0 and 1 only
        alone = model.new_cache(2, 8)
        model(ids[:2, :4], cache=alone)
        expected = model(ids[:2, 4:], cache=alone).numpy()
    assert view.layers[0].k.base is not None and np.shares_memory(view.layers[0].k, cache.layers[0].k)
    np.testing.assert_allclose(step, expected, rtol=1e-6, atol=1e-6)
    assert view.seen.tolist() == [5, 5] and cache.seen.tolist() == [5, 5, 4]   # seen is a view too
    for layer, ref, (k2, v2) in zip(cache.layers, alone.layers, untouched):
        np.testing.assert_array_equal(layer.k[:2, :, 4], ref.k[:, :, 4])       # the view wrote here
        np.testing.assert_array_equal(layer.k[2], k2)
        np.testing.assert_array_equal(layer.v[2], v2)
    with pytest.raises(InputError, match="rows"):
        cache.rows(4)
