"""Logits processors, sampling and beam search against transformers' recorded outputs.

tests/fixtures/sampling/sampling.npz was written by make_sampling_fixture.py (beside it)
with transformers' own processors and ``generate`` on a toy two-token table model, which
is rebuilt here in NumPy, so these tests need no torch.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from axon_llm.errors import GenerationError
from axon_llm.sampling import (
    BeamSearch, GenerationConfig, TextGenerator, apply_min_p, apply_repetition_penalty,
    apply_temperature, apply_top_k, apply_top_p, log_softmax, process_logits,
)


@pytest.fixture(scope="module")
def fx(fixtures_dir):
    return dict(np.load(fixtures_dir / "sampling" / "sampling.npz"))


def toy_logits(fx, ids):
    """The fixture's toy model: logits of the last position = A[ids[-1]] + Bt[ids[-2]]."""
    ids = np.asarray(ids)
    prev = ids[:, -2] if ids.shape[1] > 1 else np.zeros(len(ids), dtype=np.int64)
    return fx["A"][ids[:, -1]] + fx["Bt"][prev]                       # [rows, V]


# -- processors ---------------------------------------------------------------------------
def test_processors_match_transformers(fx):
    logits, seen = fx["proc_logits"], fx["proc_seen"]
    np.testing.assert_array_equal(apply_repetition_penalty(logits, seen, 1.7), fx["proc_rep"])
    np.testing.assert_allclose(apply_temperature(logits, 0.6), fx["proc_temp"], rtol=1e-6)
    np.testing.assert_array_equal(apply_top_k(logits, 7), fx["proc_topk"])
    np.testing.assert_array_equal(apply_top_p(logits, 0.8), fx["proc_topp"])
    np.testing.assert_array_equal(apply_min_p(logits, 0.05), fx["proc_minp"])


def test_repetition_penalty_semantics():
    logits = np.array([2.0, -2.0, 3.0, 0.0, 5.0], dtype=np.float32)
    out = apply_repetition_penalty(logits, [0, 0, 0, 1, 3, 99], 2.0)  # 99 is outside the vocab
    np.testing.assert_array_equal(out, [1.0, -4.0, 3.0, 0.0, 5.0])      # each distinct id once
    np.testing.assert_array_equal(logits, [2.0, -2.0, 3.0, 0.0, 5.0])   # input untouched


def test_top_k_keeps_ties_and_top_p_keeps_one():
    logits = np.array([1.0, 3.0, 3.0, 2.0])
    assert np.isfinite(apply_top_k(logits, 1)).sum() == 2               # both tied maxima stay
    out = apply_top_p(np.array([0.0, 10.0, 0.0]), 0.01)
    assert np.isfinite(out).tolist() == [False, True, False]


def test_processors_do_nothing_when_greedy():
    logits = np.random.default_rng(0).standard_normal((2, 9))
    cfg = GenerationConfig.greedy().with_top_k(2).with_temperature(0.3)
    np.testing.assert_array_equal(process_logits(logits, cfg), logits)


# -- picking tokens -----------------------------------------------------------------------
def test_get_next_token_greedy_and_penalty():
    gen = TextGenerator(GenerationConfig.greedy().with_repetition_penalty(10.0))
    logits = np.array([1.0, 5.0, 3.0, 4.0])
    assert gen.get_next_token(logits) == 1
    assert gen.get_next_token(logits, [1]) == 3                         # 5/10 < 4
    assert gen.should_stop(7) is False
    assert TextGenerator(GenerationConfig.greedy().with_eos_token(7)).should_stop(7)


def test_sampling_matches_the_distribution():
    p = np.array([0.5, 0.3, 0.15, 0.05])
    gen = TextGenerator(GenerationConfig.sampling(1.0).with_seed(0))
    draws = gen.next_tokens(np.tile(np.log(p), (20000, 1)))
    freq = np.bincount(draws, minlength=4) / draws.size
    sigma = np.sqrt(p * (1 - p) / draws.size)
    assert np.all(np.abs(freq - p) < 5 * sigma), freq


def test_seed_reproducible_and_filters_respected():
    logits = np.random.default_rng(1).standard_normal((64, 30))
    cfg = GenerationConfig.top_k_sampling(3, 1.5).with_seed(42)
    a = TextGenerator(cfg).next_tokens(logits)
    b = TextGenerator(cfg).next_tokens(logits)
    np.testing.assert_array_equal(a, b)
    top3 = np.argsort(-logits, axis=1)[:, :3]
    assert all(a[i] in top3[i] for i in range(len(a)))
    assert TextGenerator(GenerationConfig.sampling(0.0)).get_next_token(logits[0]) == int(np.argmax(logits[0]))


def test_nan_logits_are_a_clear_error():
    with pytest.raises(GenerationError, match="NaN"):
        TextGenerator().get_next_token(np.array([np.nan, 1.0]))
    with pytest.raises(GenerationError, match="one row"):
        TextGenerator().get_next_token(np.zeros((2, 3)))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 40), st.floats(0.05, 1.0), st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))
def test_sampled_token_always_survives_the_filters(k, top_p, min_p, seed):
    logits = np.random.default_rng(seed).standard_normal(40) * 3
    cfg = GenerationConfig(top_k=k, top_p=top_p, min_p=min_p, temperature=0.7, seed=seed)
    allowed = np.isfinite(process_logits(logits, cfg))
    assert allowed.any()
    assert allowed[TextGenerator(cfg).get_next_token(logits)]


# -- greedy with repetition penalty and beam search on the toy model -----------------------
def test_greedy_repetition_penalty_matches_transformers(fx):
    ids = fx["prompts"].copy()
    cfg = GenerationConfig.greedy().with_repetition_penalty(1.3).with_eos_token(int(fx["eos"])).with_pad_token(0)
    gen = TextGenerator(cfg)
    done = np.zeros(len(ids), dtype=bool)
    for _ in range(12):
        nxt = gen.next_tokens(toy_logits(fx, ids), ids)
        nxt = np.where(done, cfg.fill_token_id, nxt)
        done |= np.isin(nxt, cfg.eos_token_ids)
        ids = np.concatenate([ids, nxt[:, None]], axis=1)
    np.testing.assert_array_equal(ids, fx["greedy_rep_ids"])


@pytest.mark.parametrize("case", range(6))
def test_beam_search_matches_transformers(fx, case):
    nb, max_new, es, lp, rp = fx["beam_cases"][case]
    cfg = GenerationConfig(do_sample=False, num_beams=int(nb), early_stopping={0: False, 1: True, 2: "never"}[int(es)],
                           length_penalty=float(lp), repetition_penalty=float(rp),
                           eos_token_ids=[int(fx["eos"])], pad_token_id=0)
    prompts = fx["prompts"]
    bs = BeamSearch(cfg, prompts, prompts.shape[1] + int(max_new))
    while not bs.done:
        rows = bs.running_ids()                                           # [B*N, cur_len]
        lp_ = log_softmax(toy_logits(fx, rows))
        bs.step(process_logits(lp_, cfg, rows))
    np.testing.assert_array_equal(bs.finalize(), fx[f"beam_{case}"])


def test_beam_reorder_indices_point_at_parent_rows(fx):
    cfg = GenerationConfig.beam_search(3).with_eos_token(int(fx["eos"]))
    prompts = fx["prompts"][:2]
    bs = BeamSearch(cfg, prompts, prompts.shape[1] + 4)
    before = bs.running_ids()
    reorder = bs.step(log_softmax(toy_logits(fx, before)))
    after = bs.running_ids()
    np.testing.assert_array_equal(after[:, :-1], before[reorder])      # each new row extends its parent
    assert set(reorder[:3]) <= {0, 1, 2} and set(reorder[3:]) <= {3, 4, 5}
