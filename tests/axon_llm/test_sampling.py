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


# -- the generate loop with real models -------------------------------------------------------
def _uncached_beam(model, prompt, cfg, mask=None):
    """Beam search recomputing every step from scratch (no cache): the reference for reordering."""
    import axon

    bs = BeamSearch(cfg, prompt, prompt.shape[1] + cfg.max_new_tokens)
    nb = cfg.num_beams
    m = None if mask is None else np.repeat(mask, nb, axis=0)
    with axon.no_grad():
        while not bs.done:
            rows = bs.running_ids()
            mm = None if m is None else np.concatenate([m, np.ones((len(rows), rows.shape[1] - m.shape[1]), np.int64)], 1)
            logits = model(rows, attention_mask=mm).numpy()[:, -1].astype(np.float32)
            bs.step(process_logits(log_softmax(logits), cfg, rows))
    return bs.finalize()


@pytest.fixture(scope="module")
def gpt2(fixtures_dir):
    from axon_llm.auto import from_pretrained

    return from_pretrained(fixtures_dir / "hf" / "gpt2"), dict(np.load(fixtures_dir / "hf" / "gpt2" / "expected.npz"))


def test_gpt2_beam_and_repetition_match_transformers(gpt2):
    model, e = gpt2
    # the fixtures were generated with eos_token_id=None (tests/fixtures/README.md)
    beams = model.generate(e["prompt_ids"], num_beams=3, max_new_tokens=8, early_stopping=True, pad_token_id=0,
                           eos_token_id=None)
    np.testing.assert_array_equal(beams, e["beam_ids"])
    cfg = GenerationConfig.beam_search(3).with_max_tokens(8).with_early_stopping(True).with_pad_token(0)
    np.testing.assert_array_equal(model.generate(e["prompt_ids"], generation_config=cfg), e["beam_ids"])
    new = e["repetition_ids"].shape[1] - e["prompt_ids"].shape[1]
    rep = model.generate(e["prompt_ids"], max_new_tokens=new, repetition_penalty=1.3, eos_token_id=None)
    np.testing.assert_array_equal(rep, e["repetition_ids"])


def test_streamer_eos_list_and_seeded_sampling(gpt2):
    model, e = gpt2
    got = []
    cfg = GenerationConfig.top_k_sampling(20, 1.2).with_max_tokens(10).with_seed(7)
    out = model.generate(e["prompt_ids"], generation_config=cfg, streamer=lambda ids: got.append(int(ids[0])))
    assert out.shape == (1, e["prompt_ids"].shape[1] + 10)
    assert got == out[0, e["prompt_ids"].shape[1]:].tolist()
    np.testing.assert_array_equal(model.generate(e["prompt_ids"], generation_config=cfg), out)
    # stop at the first of several EOS ids: make the 3rd and 5th greedy tokens "EOS"
    greedy = e["greedy_ids"][0, e["prompt_ids"].shape[1]:]
    stops = [int(greedy[4]), int(greedy[2])]
    cut = model.generate(e["prompt_ids"], max_new_tokens=16, eos_token_id=stops)
    first = min(i for i, t in enumerate(greedy) if t in stops)            # <= 2
    np.testing.assert_array_equal(cut[0, e["prompt_ids"].shape[1]:], greedy[: first + 1])


def test_stop_strings_need_and_use_a_tokenizer(gpt2):
    model, e = gpt2

    class CharTok:  # id -> one character
        def decode(self, ids):
            return "".join(chr(65 + i % 26) for i in ids)

    greedy = e["greedy_ids"][0, e["prompt_ids"].shape[1]:]
    stop = CharTok().decode(greedy[3:5])
    with pytest.raises(GenerationError, match="tokenizer"):
        model.generate(e["prompt_ids"], max_new_tokens=8, stop_strings=[stop])
    out = model.generate(e["prompt_ids"], max_new_tokens=16, stop_strings=stop, tokenizer=CharTok(), eos_token_id=None)
    text = CharTok().decode(out[0, e["prompt_ids"].shape[1]:])
    assert text.endswith(stop) and text.count(stop) == 1


def test_external_cache_continues_a_prefix(gpt2):
    model, e = gpt2
    p = e["prompt_ids"]
    cache = model.new_cache(1, 40)
    first = model.generate(p, max_new_tokens=4, cache=cache)              # cache now holds p + 3 new tokens
    assert len(cache) == p.shape[1] + 3
    more = np.concatenate([first, [[5, 6]]], axis=1)
    cont = model.generate(more, max_new_tokens=5, cache=cache)
    np.testing.assert_array_equal(cont, model.generate(more, max_new_tokens=5))


@pytest.mark.parametrize("arch", ["llama", "ssm"])
def test_cached_beam_search_equals_recomputation(arch):
    import axon

    axon.manual_seed(0)
    if arch == "llama":
        from axon_llm.models.llama import LLaMAConfig, LLaMAForCausalLM

        model = LLaMAForCausalLM(LLaMAConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
        prompt = np.array([[0, 0, 5, 9, 11], [3, 4, 5, 6, 7]])
        mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    else:
        from axon_llm.models.ssm import SSMConfig, SSMForCausalLM

        model = SSMForCausalLM(SSMConfig.from_d_model(16, 48, num_layers=2))
        prompt, mask = np.array([[3, 4, 5, 6, 7], [1, 9, 9, 2, 8]]), None
    model.eval()
    for p in model.parameters():                           # sharper distributions: beams diverge
        p.data *= 3.0
    cfg = GenerationConfig.beam_search(3).with_max_tokens(6).with_eos_token(7)
    np.testing.assert_array_equal(model.generate(prompt, attention_mask=mask, generation_config=cfg),
                                  _uncached_beam(model, prompt, cfg, mask))
