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


def test_scheduler_outputs_are_the_same_with_and_without_the_plan():
    model = tiny_llama(num_hidden_layers=2, max_position_embeddings=96)
    prompts = [[3, 9, 4], [7, 1, 8, 2, 5, 11, 6], [5, 5]]
    outs = []
    for fast in (True, False):
        sched = BatchScheduler(model, max_batch=3, fast_decode=fast)
        assert (sched.plan is not None) == fast
        reqs = [sched.submit(SequenceRequest(p, GenerationConfig(max_new_tokens=9, do_sample=False))) for p in prompts]
        sched.start()
        try:
            got = [_collect(r)[0] for r in reqs]
        finally:
            sched.close()
        outs.append(got)
    assert outs[0] == outs[1]


def test_models_without_the_plain_llama_layout_get_no_plan():
    class NoLayout:
        decode_layout = None

    assert batch_decode_plan(NoLayout()) is None
    assert batch_decode_plan(object()) is None
