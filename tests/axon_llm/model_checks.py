"""Checks every model test uses: fixture parity with transformers, and the family checks.

One place that loads a fixture (``tests/fixtures/hf/<case>``, made by transformers; see
tests/fixtures/README.md), runs our model, compares logits in the project's tolerance unit
(:func:`rel_err`: ``max |a - e| / max(1, max |e|)``), and holds every model to one definition
of "causal", "cache-consistent", "padding-safe", "trainable" (every parameter gets a gradient,
autograd equals float64 central differences) and "learns". The transformer families
(test_gpt2/bert/llama/mistral/phi.py) parametrise these over their fixture cases and tiny
random configs; the SSM / Hydra / Chimera / Trident tests call them on their own tiny models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import axon
import axon.nn.functional as F
from axon_llm.auto import from_pretrained

HF = Path(__file__).resolve().parents[1] / "fixtures" / "hf"


# --------------------------------------------------------------------------------------------
# running a model, comparing logits
# --------------------------------------------------------------------------------------------
def rel_err(actual, expected) -> float:
    """max |a - e| / max(1, max |e|): the tolerance unit of the parity tests."""
    expected = np.asarray(expected)
    return float(np.abs(np.asarray(actual) - expected).max() / max(1.0, float(np.abs(expected).max())))


def assert_rel_close(actual, expected, tol: float, what: str = "logits") -> None:
    """``rel_err(actual, expected) <= tol``, saying by how much it is exceeded."""
    np.testing.assert_equal(np.shape(actual), np.shape(expected))
    err = rel_err(actual, expected)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.3g}"


def logits_np(model, ids, **kw) -> np.ndarray:
    """Logits as a NumPy array, without recording a graph."""
    with axon.no_grad():
        return model(ids, **kw).numpy()


def next_token_loss(logits, ids: np.ndarray):
    """Mean cross-entropy of predicting ids[:, 1:] from logits[:, :-1]."""
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))


# --------------------------------------------------------------------------------------------
# parity with a transformers fixture
# --------------------------------------------------------------------------------------------
def load_case(case: str):
    """(model, expected arrays) of one fixture case."""
    folder = HF / case
    return from_pretrained(folder), dict(np.load(folder / "expected.npz"))


def check_causal_parity(case: str, source: Path | None = None) -> None:
    """Logits within 1e-4 x max(1, max|logit|); greedy (single and left-padded batch) token-identical.

    ``source`` loads the model from another file of the same weights (a GGUF made from the case).
    The fixtures were generated with ``eos_token_id=None`` (tests/fixtures/README.md), so EOS is
    switched off here too: the models' own EOS (2) occurs in some greedy paths."""
    model = from_pretrained(source if source is not None else HF / case)
    e = dict(np.load(HF / case / "expected.npz"))
    assert rel_err(logits_np(model, e["input_ids"]), e["logits"]) < 1e-4
    greedy = model.generate(e["prompt_ids"], max_new_tokens=e["greedy_ids"].shape[1] - e["prompt_ids"].shape[1],
                            eos_token_id=None)
    np.testing.assert_array_equal(greedy, e["greedy_ids"])
    new = e["batch_greedy_ids"].shape[1] - e["batch_prompt_ids"].shape[1]
    batch = model.generate(e["batch_prompt_ids"], max_new_tokens=new, attention_mask=e["batch_attention_mask"],
                           eos_token_id=None)
    np.testing.assert_array_equal(batch, e["batch_greedy_ids"])


def check_bert_parity(model, case: str) -> None:
    """A BERT encoder's hidden states (and pooler output, when it has a pooler) equal transformers'
    within 1e-4 x scale, on plain inputs and on right-padded ones with token types."""
    e = dict(np.load(HF / case / "expected.npz"))
    with axon.no_grad():
        plain = model(e["input_ids"]).numpy()
        masked = model(e["input_ids_masked"], attention_mask=e["attention_mask"],
                       token_type_ids=e["token_type_ids"]).numpy()
    assert rel_err(plain, e["logits"]) < 1e-4
    assert rel_err(masked, e["logits_masked"]) < 1e-4
    if "pooler_output" in e and getattr(model, "pooler", None) is not None:
        with axon.no_grad():
            _, pooled = model.forward_with_pooler(e["input_ids"])
            _, pooled_m = model.forward_with_pooler(e["input_ids_masked"], e["attention_mask"], e["token_type_ids"])
        assert rel_err(pooled.numpy(), e["pooler_output"]) < 1e-4
        assert rel_err(pooled_m.numpy(), e["pooler_output_masked"]) < 1e-4


# --------------------------------------------------------------------------------------------
# causality, cache and padding
# --------------------------------------------------------------------------------------------
def check_causal(model, vocab: int, seed: int = 0, batch: int = 2, length: int = 12) -> None:
    """Changing the tokens after position t never changes the logits at positions <= t."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (batch, length))
    base = logits_np(model, ids)
    for t in (0, length // 2, length - 2):
        other = ids.copy()
        other[:, t + 1:] = rng.integers(0, vocab, (batch, length - t - 1))
        out = logits_np(model, other)
        assert_rel_close(out[:, :t + 1], base[:, :t + 1], 1e-6,
                         f"logits up to position {t} changed when later tokens changed")
        assert not np.allclose(out[:, t + 1:], base[:, t + 1:]), "later logits should depend on the changed tokens"


def _stepped_logits(model, ids: np.ndarray, chunks, max_length: int):
    """Logits of ``ids`` fed through a fresh cache chunk by chunk, and the cache."""
    cache = model.new_cache(ids.shape[0], max_length)
    outs, start = [], 0
    for n in chunks:
        outs.append(logits_np(model, ids[:, start:start + n], cache=cache))
        start += n
    return np.concatenate(outs, axis=1), cache


def check_cache_matches_full(model, vocab: int, chunks=(5, 1, 1, 3, 1, 1), seed: int = 1, batch: int = 2,
                             max_length: int | None = None) -> None:
    """Feeding a sequence through a cache chunk by chunk (prefill, single steps, a multi-token
    chunk) gives the full forward's logits, within 1e-5 in :func:`rel_err`'s unit."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (batch, sum(chunks)))
    full = logits_np(model, ids)                                            # [B, T, V]
    stepped, _ = _stepped_logits(model, ids, chunks, max_length or ids.shape[1])
    assert_rel_close(stepped, full, 1e-5, "cached logits")


def check_cached_equals_uncached(model, vocab: int, seed: int = 0, prompt: int = 5, steps: int = 6,
                                 atol: float = 1e-5) -> None:
    """Prefill + one-token decode steps through the cache give the logits of one full forward
    (element-wise within ``atol + 1e-4 |logit|``), and the cache holds every token."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (2, prompt + steps))
    full = logits_np(model, ids)                                            # [B, T, V]
    stepped, cache = _stepped_logits(model, ids, (prompt,) + (1,) * steps, prompt + steps)
    assert cache.length == prompt + steps
    np.testing.assert_allclose(stepped, full, atol=atol, rtol=1e-4)


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


# --------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------
def check_every_parameter_gets_gradient(model, loss) -> None:
    """After ``loss.backward()`` every parameter has a finite, non-zero gradient."""
    model.zero_grad()
    loss.backward()
    bad = []
    for name, p in model.named_parameters():
        g = None if p.grad is None else np.asarray(p.grad.numpy())
        if g is None or not np.isfinite(g).all() or not np.any(g):
            bad.append(name)
    assert not bad, f"parameters without a (non-zero, finite) gradient: {bad}"


def check_trains(model, vocab: int, seed: int = 0, loss_fn=None) -> None:
    """One backward pass (of next-token loss, or ``loss_fn(model, ids)``) in train mode gives every
    parameter a finite, not-all-zero gradient."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (2, 8))
    model.train()
    loss = next_token_loss(model(ids), ids) if loss_fn is None else loss_fn(model, ids)
    check_every_parameter_gets_gradient(model, loss)
    model.eval()


def _central_differences(model, objective, entries: int, rng, eps: float, rtol: float, atol: float) -> None:
    """In float64 and eval mode, autograd's gradient of ``objective(model)`` equals central
    differences at ``entries`` random elements of every parameter, within ``atol + rtol |numeric|``
    (truncation ~eps^2 and rounding ~1e-16 |objective| / eps are far below both)."""
    model.double()
    model.eval()                                          # no dropout: the objective must be deterministic
    model.zero_grad()
    objective(model).backward()
    for name, p in model.named_parameters():
        grad = np.asarray(p.grad.numpy()).reshape(-1)
        flat = p.data.reshape(-1)
        for i in rng.choice(flat.size, size=min(entries, flat.size), replace=False):
            old = flat[i]
            with axon.no_grad():
                flat[i] = old + eps
                plus = float(objective(model).item())
                flat[i] = old - eps
                minus = float(objective(model).item())
            flat[i] = old
            numeric = (plus - minus) / (2 * eps)
            assert abs(grad[i] - numeric) <= atol + rtol * abs(numeric), \
                f"{name}[{i}]: autograd {grad[i]:.6g}, central difference {numeric:.6g}"


def check_gradcheck(model, loss_fn, entries: int = 2, seed: int = 0, eps: float = 1e-6) -> None:
    """float64 central differences vs autograd of ``loss_fn(model)`` on ``entries`` random
    elements of every parameter (within 1e-6 + 1e-4 |numeric|)."""
    _central_differences(model, loss_fn, entries, np.random.default_rng(seed), eps, rtol=1e-4, atol=1e-6)


def check_gradients_by_central_differences(model, vocab: int, entries: int = 2, seed: int = 0) -> None:
    """In float64, autograd's gradient of a weighted sum of the logits matches central
    differences (within 1e-9 + 1e-5 |numeric|) at a few random entries of every parameter."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (2, 7))
    model.double()
    weights = axon.tensor(rng.standard_normal((2, 7, vocab)))
    _central_differences(model, lambda m: (m(ids) * weights).sum(), entries, rng, eps=1e-4, rtol=1e-5, atol=1e-9)


# --------------------------------------------------------------------------------------------
# learning
# --------------------------------------------------------------------------------------------
def repetitive_batch(vocab: int, batch: int = 4, length: int = 32, period: int = 6, seed: int = 0) -> np.ndarray:
    """Rows of one short random pattern repeated (a different phase per row)."""
    rng = np.random.default_rng(seed)
    pattern = rng.integers(0, vocab, period)
    rows = [np.resize(np.roll(pattern, -r), length) for r in range(batch)]
    return np.stack(rows).astype(np.int64)


def train_loss_curve(model, ids: np.ndarray, steps: int, lr: float, loss_fn=None,
                     stop_below: float | None = None) -> list[float]:
    """Adam on next-token cross-entropy (or ``loss_fn(model, ids)``); the loss at every step.

    Stops early once a loss is below ``stop_below`` times the first one.
    """
    opt = axon.optim.Adam(list(model.parameters()), lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = next_token_loss(model(ids), ids) if loss_fn is None else loss_fn(model, ids)
        loss.backward()
        opt.step()
        losses.append(float(loss.item()))
        if stop_below is not None and losses[-1] < stop_below * losses[0]:
            break
    return losses


def check_learns(model, vocab: int, steps: int = 20, lr: float = 1e-2, loss_fn=None) -> list[float]:
    """On a repetitive text the loss falls below half its starting value within ``steps``."""
    ids = repetitive_batch(vocab)
    losses = train_loss_curve(model, ids, steps, lr, loss_fn, stop_below=0.5)
    assert losses[0] > 0.5 * np.log(vocab), f"the untrained loss {losses[0]:.3f} should be near ln(V)"
    assert losses[-1] < 0.5 * losses[0], \
        f"loss did not halve in {steps} steps: {losses[0]:.3f} -> {min(losses):.3f}"
    return losses
