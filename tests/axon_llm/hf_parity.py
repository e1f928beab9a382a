"""Checks shared by the transformer-family tests (test_gpt2/bert/llama/mistral/phi.py).

Each model file parametrises these over its fixture cases (tests/fixtures/hf/<case>, made by
transformers; see tests/fixtures/README.md) and over tiny random configs of its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import axon
import axon.nn.functional as F
from axon_llm.auto import from_pretrained

HF = Path(__file__).resolve().parents[1] / "fixtures" / "hf"


def rel_err(actual, expected) -> float:
    """max |a - e| / max(1, max |e|): the tolerance unit of the parity tests."""
    expected = np.asarray(expected)
    return float(np.abs(np.asarray(actual) - expected).max() / max(1.0, float(np.abs(expected).max())))


def load_case(case: str):
    """(model, expected arrays) of one fixture case."""
    folder = HF / case
    return from_pretrained(folder), dict(np.load(folder / "expected.npz"))


def logits_np(model, ids, **kw) -> np.ndarray:
    with axon.no_grad():
        return model(ids, **kw).numpy()


def check_causal_parity(case: str) -> None:
    """Logits within 1e-4 x max(1, max|logit|); greedy (single and left-padded batch) token-identical.

    The fixtures were generated with ``eos_token_id=None`` (tests/fixtures/README.md), so EOS is
    switched off here too: the models' own EOS (2) occurs in some greedy paths."""
    model, e = load_case(case)
    assert rel_err(logits_np(model, e["input_ids"]), e["logits"]) < 1e-4
    greedy = model.generate(e["prompt_ids"], max_new_tokens=e["greedy_ids"].shape[1] - e["prompt_ids"].shape[1],
                            eos_token_id=None)
    np.testing.assert_array_equal(greedy, e["greedy_ids"])
    new = e["batch_greedy_ids"].shape[1] - e["batch_prompt_ids"].shape[1]
    batch = model.generate(e["batch_prompt_ids"], max_new_tokens=new, attention_mask=e["batch_attention_mask"],
                           eos_token_id=None)
    np.testing.assert_array_equal(batch, e["batch_greedy_ids"])


def check_cached_equals_uncached(model, vocab: int, seed: int = 0, prompt: int = 5, steps: int = 6,
                                 atol: float = 1e-5) -> None:
    """Prefill + one-token decode steps through the cache give the logits of one full forward."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (2, prompt + steps))
    full = logits_np(model, ids)                                            # [B, T, V]
    cache = model.new_cache(2, prompt + steps)
    parts = [logits_np(model, ids[:, :prompt], cache=cache)]
    for t in range(prompt, prompt + steps):
        parts.append(logits_np(model, ids[:, t:t + 1], cache=cache))
    assert cache.length == prompt + steps
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, atol=atol, rtol=1e-4)


def check_left_padding(model, vocab: int, seed: int = 0, pad: int = 3, length: int = 6) -> None:
    """A left-padded row gives the same logits for its real tokens as the row alone."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (2, length))
    mask = np.ones_like(ids)
    mask[0, :pad] = 0
    batch = logits_np(model, ids, attention_mask=mask)
    alone = logits_np(model, ids[:1, pad:])
    np.testing.assert_allclose(batch[0, pad:], alone[0], atol=1e-5, rtol=1e-4)
    assert np.isfinite(batch).all()


def check_trains(model, vocab: int, seed: int = 0, loss_fn=None) -> None:
    """One backward pass gives every parameter a finite, not-all-zero gradient."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (2, 8))
    model.train()
    model.zero_grad()
    if loss_fn is None:
        logits = model(ids)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1))
    else:
        loss = loss_fn(model, ids)
    loss.backward()
    model.eval()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        g = np.asarray(p.grad.numpy())
        assert np.isfinite(g).all(), f"{name} has a non-finite gradient"
        assert np.abs(g).max() > 0, f"{name} has an all-zero gradient"


def check_gradcheck(model, loss_fn, entries: int = 2, seed: int = 0, eps: float = 1e-6) -> None:
    """float64 central differences vs autograd on ``entries`` random elements of every parameter."""
    model.double()
    model.eval()                                          # no dropout: the loss must be deterministic
    model.zero_grad()
    loss_fn(model).backward()
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        grad = np.asarray(p.grad.numpy())
        flat = p.data.reshape(-1)
        for i in rng.choice(flat.size, size=min(entries, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + eps
            with axon.no_grad():
                plus = float(loss_fn(model).item())
            flat[i] = old - eps
            with axon.no_grad():
                minus = float(loss_fn(model).item())
            flat[i] = old
            numeric = (plus - minus) / (2 * eps)
            analytic = grad.reshape(-1)[i]
            assert abs(analytic - numeric) <= 1e-6 + 1e-4 * abs(numeric), \
                f"{name}[{i}]: autograd {analytic} vs numeric {numeric}"
