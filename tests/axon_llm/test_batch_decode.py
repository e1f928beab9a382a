"""axon_llm.batch_decode: the scheduler's batched step through raw arrays against its reference,
the module forward on the same batch cache (holes before each row's tokens, rows at different
positions), step after step; and which models get a plan."""

from __future__ import annotations

import copy

import numpy as np

import axon
from axon_llm.batch_decode import BatchDecodePlan, batch_decode_plan
from axon_llm.batching import BatchScheduler, SequenceRequest
from axon_llm.generation_config import GenerationConfig
from tests.axon_llm.test_batching import _collect
from tests.axon_llm.test_generation_config import _tiny_llama as tiny_llama


def test_batched_plan_step_equals_the_module_forward_on_a_holed_batch_cache():
    model = tiny_llama(num_hidden_layers=2, max_position_embeddings=96)
    sched = BatchScheduler(model, max_batch=4)
    assert isinstance(sched.plan, BatchDecodePlan)
    prompts = [[3, 9, 4], [7, 1, 8, 2, 5, 11, 6], [5, 5], [2, 4, 6, 8, 10]]
    for p in prompts:
        sched.submit(SequenceRequest(p, GenerationConfig(max_new_tokens=20, do_sample=False)))
    with axon.no_grad():
        model.eval()
        sched._admit()
        n = len(sched.rows)
        assert n == 4 and not sched.cache.key_mask[:n, :sched.cache.length].all()    # rows have holes
        rng = np.random.default_rng(0)
        for _ in range(5):
            tokens = rng.integers(1, 40, size=n)
            a, b = copy.deepcopy(sched.cache), copy.deepcopy(sched.cache)
            va, vb = a.rows(n), b.rows(n)
            fast = sched.plan.step(tokens, va)                                       # [n, V]
            ref = np.asarray(model(tokens[:, None], cache=vb).numpy())[:, -1]       # [n, V]
            np.testing.assert_allclose(fast, ref, rtol=2e-4, atol=2e-4)
            assert (fast.argmax(-1) == ref.argmax(-1)).all()
            assert va.length == vb.length and (a.seen == b.seen).all() and (a.key_mask == b.key_mask).all()
            for la, lb in zip(a.layers, b.layers):
                np.testing.assert_allclose(la.k[:n, :, :va.length], lb.k[:n, :, :vb.length], rtol=1e-4, atol=1e-5)
                np.testing.assert_allclose(la.v[:n, :, :va.length], lb.v[:n, :, :vb.length], rtol=1e-4, atol=1e-5)
            sched.cache = a                                                          # go on from the plan's state
            sched.cache.length = va.length


def _greedy(sched, prompts, tokens):
    """Each prompt's greedy tokens, decoded together by the running ``sched`` (closed after)."""
    reqs = [sched.submit(SequenceRequest(p, GenerationConfig(max_new_tokens=tokens, do_sample=False))) for p in prompts]
    sched.start()
    try:
        return [_collect(r)[0] for r in reqs]
    finally:
        sched.close()


def test_scheduler_outputs_are_the_same_with_and_without_the_plan():
    model = tiny_llama(num_hidden_layers=2, max_position_embeddings=96)
    prompts = [[3, 9, 4], [7, 1, 8, 2, 5, 11, 6], [5, 5]]
    outs = []
    for fast in (True, False):
        sched = BatchScheduler(model, max_batch=3, fast_decode=fast)
        assert (sched.plan is not None) == fast
        outs.append(_greedy(sched, prompts, 9))
    assert outs[0] == outs[1]


def test_models_without_the_plain_llama_layout_get_no_plan():
    class NoLayout:
        decode_layout = None

    assert batch_decode_plan(NoLayout()) is None
    assert batch_decode_plan(object()) is None


def _quantised(model, qtype="Q4_1"):
    """``model`` with every Linear of its layers a Q4_1 QuantizedLinear (the GGUF packing)."""
    from axon_kernels.quant import pack
    from axon_kernels.quant_encode import quantize
    from axon_llm.quantized import QuantizedLinear

    for layer in model.model.layers:
        for owner, names in ((layer.self_attn, ("q_proj", "k_proj", "v_proj", "o_proj")),
                             (layer.mlp, ("gate_proj", "up_proj", "down_proj"))):
            for name in names:
                w = np.asarray(getattr(owner, name).weight.data)
                setattr(owner, name, QuantizedLinear(pack(qtype, quantize(qtype, w), w.shape)))
    return model


def test_joined_projections_give_the_separate_ones_and_keep_one_copy_of_the_weights():
    from axon_llm.batch_decode import _Fused

    # q 128 + k 64 + v 64 rows and gate/up 128 each: whole tiles, so q/k/v and gate/up are joined
    model = _quantised(tiny_llama(hidden_size=128, intermediate_size=128, num_attention_heads=2,
                                  num_key_value_heads=1, num_hidden_layers=2, max_position_embeddings=96))
    prompts = [[3, 9, 4], [7, 1, 8, 2, 5, 11, 6], [5, 5]]
    h = np.random.default_rng(1).standard_normal((3, 128)).astype(np.float32)
    attn = model.model.layers[0].self_attn
    alone = [np.asarray(m(axon.tensor(h)).numpy()) for m in (attn.q_proj, attn.k_proj, attn.v_proj)]
    sched = BatchScheduler(model, max_batch=3)
    ly = sched.plan.layers[0]
    assert isinstance(ly.qkv, _Fused) and isinstance(ly.gate_up, _Fused)
    for got, want in zip(ly.qkv(h), alone):
        np.testing.assert_array_equal(got, want)                              # the same operations per row
    for got, m in zip(ly.qkv(h[:1]), (attn.q_proj, attn.k_proj, attn.v_proj)):
        np.testing.assert_array_equal(got, m(axon.tensor(h[:1])).numpy())     # one row: the separate matvecs
    assert np.shares_memory(attn.q_proj.qweight.qs, ly.qkv.w.qs)              # the model's matrix: a view
    after = [np.asarray(m(axon.tensor(h)).numpy()) for m in (attn.q_proj, attn.k_proj, attn.v_proj)]
    for a, b in zip(after, alone):
        np.testing.assert_array_equal(a, b)                                    # the module forward is unchanged
    ref = BatchScheduler(model, max_batch=3, fast_decode=False)               # the module forward
    assert _greedy(sched, prompts, 8) == _greedy(ref, prompts, 8)


def test_projections_that_do_not_fill_whole_tiles_stay_separate():
    from axon_llm.batch_decode import _Fused

    model = _quantised(tiny_llama(hidden_size=32, intermediate_size=96, num_attention_heads=2, num_key_value_heads=1))
    ly = BatchScheduler(model, max_batch=2).plan.layers[0]
    assert not isinstance(ly.qkv, _Fused) and not isinstance(ly.gate_up, _Fused)   # k, v: 16 rows, gate, up: 96
    h = np.ones((2, 32), np.float32)
    np.testing.assert_array_equal(ly.qkv(h)[1], ly.k(h))
