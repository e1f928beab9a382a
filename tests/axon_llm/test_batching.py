"""Continuous batching (axon_llm/batching.py) on a tiny random LLaMA, and the sampler's OpenAI
penalties and logprobs against hand-computed values."""

import threading

import numpy as np
import pytest

from axon_llm.batching import BatchScheduler, SequenceRequest
from axon_llm.errors import GenerationError, InputError
from tests.axon_llm.test_generation_config import _tiny_llama as tiny_llama
from axon_llm.sampling import (
    GenerationConfig, LogprobsRecorder, apply_frequency_presence_penalty, process_logits, token_logprobs,
)


# ---------------------------------------------------------------------------------------------
# the sampler: frequency / presence penalties and logprobs
# ---------------------------------------------------------------------------------------------
def test_frequency_and_presence_penalties_follow_openai():
    logits = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    generated = [[3, 3, 1, 3]]                  # token 3 three times, token 1 once
    out = apply_frequency_presence_penalty(logits, generated, 0.5, 0.25)
    # logit -= count * 0.5 + (count > 0) * 0.25
    np.testing.assert_allclose(out, [[1.0, 2.0 - 0.5 - 0.25, 3.0, 4.0 - 1.5 - 0.25]])
    np.testing.assert_allclose(apply_frequency_presence_penalty(logits, generated, -1.0, 0.0),
                               [[1.0, 3.0, 3.0, 7.0]])             # negative: repeats rewarded
    assert logits[0, 3] == 4.0                                       # the input is not modified


def test_penalties_run_in_process_logits_and_change_the_greedy_pick():
    cfg = GenerationConfig(do_sample=False, frequency_penalty=1.0, presence_penalty=0.5)
    logits = np.array([[0.0, 2.0, 1.0]])
    # token 1 was generated twice: 2 - 2*1 - 0.5 = -0.5 < 1 -> token 2 wins
    assert np.argmax(process_logits(logits, cfg, None, [[1, 1]])) == 2
    with pytest.raises(GenerationError, match="generated token ids"):
        process_logits(logits, cfg)
    with pytest.raises(GenerationError, match="frequency_penalty"):
        GenerationConfig(frequency_penalty=2.5)


def test_token_logprobs_are_log_softmax_of_the_chosen_and_the_top_tokens():
    logits = np.array([[1.0, 3.0, 2.0, 3.0]], dtype=np.float32)
    lp = token_logprobs(logits, [2], top=2)
    z = np.log(np.exp(1.0) + 2 * np.exp(3.0) + np.exp(2.0))
    np.testing.assert_allclose(lp.logprobs, [2.0 - z], rtol=1e-6)
    assert lp.top_ids.tolist() == [[1, 3]]                           # ties: the lower id first
    np.testing.assert_allclose(lp.top_logprobs, [[3.0 - z, 3.0 - z]], rtol=1e-6)


def _tiny_llama():
    return tiny_llama(num_hidden_layers=2, max_position_embeddings=96)


def test_generate_records_logprobs_and_applies_penalties():
    model = _tiny_llama()
    ids = np.array([[1, 5, 7]])
    rec = LogprobsRecorder(top=3)
    plain = model.generate(ids, max_new_tokens=6, eos_token_id=None, logprobs=rec)
    assert len(rec.steps) == 6
    assert [s.token_ids[0] for s in rec.steps] == plain[0, 3:].tolist()
    for s in rec.steps:                                               # greedy: the chosen is the top-1
        assert s.top_ids[0, 0] == s.token_ids[0] and s.logprobs[0] == pytest.approx(s.top_logprobs[0, 0])
    penalised = model.generate(ids, max_new_tokens=6, eos_token_id=None, presence_penalty=2.0, frequency_penalty=2.0)
    assert len(set(penalised[0, 3:].tolist())) > len(set(plain[0, 3:].tolist())) or \
        len(set(penalised[0, 3:].tolist())) == 6


# ---------------------------------------------------------------------------------------------
# the scheduler
# ---------------------------------------------------------------------------------------------
def _collect(req: SequenceRequest):
    tokens = []
    while True:
        ev = req.events.get(timeout=60)
        if ev[0] == "token":
            tokens.append(ev[1])
        elif ev[0] == "error":
            raise ev[1]
        else:
            return tokens, ev[1]


def _prompts(n, rng):
    return [rng.integers(1, 40, size=int(rng.integers(2, 12))).tolist() for _ in range(n)]


@pytest.mark.parametrize("initial_slots", [256, 8])            # 8: packing and growth happen
def test_batched_sequences_equal_their_generate_output(monkeypatch, initial_slots):
    model = _tiny_llama()
    monkeypatch.setattr(BatchScheduler, "INITIAL_SLOTS", initial_slots)
    rng = np.random.default_rng(1)
    prompts = _prompts(7, rng)
    lengths = [5, 20, 9, 14, 3, 25, 11]
    expected = [model.generate(np.array([p]), max_new_tokens=m, eos_token_id=None)[0, len(p):].tolist()
                for p, m in zip(prompts, lengths)]
    sched = BatchScheduler(model, max_batch=3).start()
    try:
        reqs = [sched.submit(SequenceRequest(p, GenerationConfig(max_new_tokens=m, do_sample=False)))
                for p, m in zip(prompts, lengths)]
        results = [_collect(r) for r in reqs]
    finally:
        sched.close()
    assert [r[0] for r in results] == expected
    assert all(r[1] == "length" for r in results)
    assert sched.max_active == 3 and not sched.rows


def test_prompts_waiting_together_are_prefilled_together_and_equal_their_generate_output(monkeypatch):
    """Requests queued before the scheduler runs are admitted at once: prompts of similar length
    share one left-padded prefill forward; a much longer one gets its own. Every sequence still
    gets exactly its `generate` tokens."""
    model = _tiny_llama()
    prompts = [[3, 9, 4], [7, 1, 8, 2], [5, 5, 6], [2] * 9 + [4, 6, 8, 10, 12, 14, 16, 18]]
    expected = [model.generate(np.array([p]), max_new_tokens=6, eos_token_id=None)[0, len(p):].tolist()
                for p in prompts]
    sched = BatchScheduler(model, max_batch=4)
    assert [len(g) for g in sched._prefill_groups([SequenceRequest(p, GenerationConfig(max_new_tokens=1))
                                                    for p in prompts])] == [3, 1]
    # a prompt never joins a group whose padded length would switch it to another prefill path
    # (few-token kernel / float / int8 from LONG_PROMPT tokens): 100 and 140 stay apart; 100 with
    # 20 and 25 would pad over 1.5x
    lengths = [sched.LONG_PROMPT - 28, sched.LONG_PROMPT + 12, sched.LONG_PROMPT + 2, 20, 25]
    groups = sched._prefill_groups([SequenceRequest([1] * p, GenerationConfig(max_new_tokens=1)) for p in lengths])
    assert [[len(r.prompt_ids) for r in g] for g in groups] == [[lengths[0]], [lengths[1], lengths[2]], [20, 25]]
    widths = []
    real = sched._prefill
    monkeypatch.setattr(sched, "_prefill", lambda reqs: (widths.append(len(reqs)), real(reqs))[1])
    reqs = [sched.submit(SequenceRequest(p, GenerationConfig(max_new_tokens=6, do_sample=False))) for p in prompts]
    sched.start()
    try:
        results = [_collect(r) for r in reqs]
    finally:
        sched.close()
    assert widths == [3, 1]
    assert [r[0] for r in results] == expected


def test_eos_cancel_and_deadline_free_the_row():
    # a context of 4096 so the cancelled sequence cannot run to its length before the cancel lands
    # (80 tokens of this tiny model took less time than the cancel on an idle machine)
    model = tiny_llama(num_hidden_layers=2, max_position_embeddings=4096)
    ids = [3, 4, 5]
    free = model.generate(np.array([ids]), max_new_tokens=10, eos_token_id=None)[0, 3:].tolist()
    eos = free[4]
    sched = BatchScheduler(model, max_batch=2).start()
    try:
        tokens, why = _collect(sched.submit(SequenceRequest(ids, GenerationConfig(max_new_tokens=10, do_sample=False,
                                                                                   eos_token_ids=(eos,)))))
        assert why == "stop" and tokens == free[:free.index(eos) + 1]
        long = SequenceRequest(ids, GenerationConfig(max_new_tokens=4000, do_sample=False))
        sched.submit(long)
        assert long.events.get(timeout=30)[0] == "token"
        long.cancel()
        tokens, why = _collect(long)
        assert why == "cancelled" and len(tokens) < 3999
        late = SequenceRequest(ids, GenerationConfig(max_new_tokens=80, do_sample=False), deadline=0.0)
        tokens, why = _collect(sched.submit(late))
        assert why == "length" and len(tokens) == 1
        again, _ = _collect(sched.submit(SequenceRequest(ids, GenerationConfig(max_new_tokens=10, do_sample=False))))
        assert again == free
    finally:
        sched.close()
    assert not sched.rows


def test_submit_rejects_what_cannot_fit():
    sched = BatchScheduler(_tiny_llama(), max_batch=2)
    with pytest.raises(InputError, match="context"):
        sched.submit(SequenceRequest([1] * 90, GenerationConfig(max_new_tokens=10)))
    with pytest.raises(InputError, match="no tokens"):
        sched.submit(SequenceRequest([], GenerationConfig(max_new_tokens=10)))
    with pytest.raises(InputError, match="max_batch"):
        BatchScheduler(_tiny_llama(), max_batch=0)


def test_concurrent_sampled_sequences_follow_their_own_seed():
    model = _tiny_llama()
    cfg = GenerationConfig(max_new_tokens=12, do_sample=True, temperature=1.5, seed=7)
    sched = BatchScheduler(model, max_batch=4).start()
    try:
        alone = _collect(sched.submit(SequenceRequest([2, 3], cfg)))[0]
        reqs = [SequenceRequest([2, 3], cfg) for _ in range(4)]
        threads = [threading.Thread(target=sched.submit, args=(r,)) for r in reqs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(_collect(r)[0] == alone for r in reqs)
    finally:
        sched.close()


def test_warm_up_runs_one_sequence_then_a_full_batch_and_leaves_the_scheduler_idle():
    """`axon-llm serve` calls this before it listens: the one-row and the max_batch-row paths have
    run (so their kernels are compiled) and no row or cache slot is left taken."""
    model = _tiny_llama()
    sched = BatchScheduler(model, max_batch=4).start()
    try:
        sched.warm_up()
        assert sched.max_active == 4 and sched.steps > 0 and not sched.rows
        p = [3, 9, 4, 7]                                          # it still answers as `generate` does
        expected = model.generate(np.array([p]), max_new_tokens=5, eos_token_id=None)[0, len(p):].tolist()
        assert _collect(sched.submit(SequenceRequest(p, GenerationConfig(max_new_tokens=5, do_sample=False)))) == (expected, "length")
    finally:
        sched.close()
