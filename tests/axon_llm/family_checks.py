"""Checks every causal LM of the SSM / Hydra / Chimera / Trident family must pass.

Used by test_ssm.py, test_hydra.py, test_chimera.py and test_trident.py (each calls them on its
own tiny model), so the four models are held to one definition of "causal", "trainable",
"cache-consistent" and "learns".
"""

from __future__ import annotations

import numpy as np

import axon
import axon.nn.functional as F


def logits_np(model, ids, **kw) -> np.ndarray:
    """Logits as a NumPy array, without recording a graph."""
    with axon.no_grad():
        return model(ids, **kw).numpy()


def check_causal(model, vocab: int, seed: int = 0, batch: int = 2, length: int = 12) -> None:
    """Changing the tokens after position t never changes the logits at positions <= t."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (batch, length))
    base = logits_np(model, ids)
    for t in (0, length // 2, length - 2):
        other = ids.copy()
        other[:, t + 1:] = rng.integers(0, vocab, (batch, length - t - 1))
        out = logits_np(model, other)
        np.testing.assert_allclose(out[:, :t + 1], base[:, :t + 1], rtol=0, atol=1e-6 * max(1.0, np.abs(base).max()),
                                   err_msg=f"logits up to position {t} changed when later tokens changed")
        assert not np.allclose(out[:, t + 1:], base[:, t + 1:]), "later logits should depend on the changed tokens"


def next_token_loss(logits, ids: np.ndarray):
    """Mean cross-entropy of predicting ids[:, 1:] from logits[:, :-1]."""
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))


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


def check_gradients_by_central_differences(model, vocab: int, entries: int = 2, seed: int = 0) -> None:
    """In float64, autograd's gradient of a weighted sum of the logits matches central
    differences at a few random entries of every parameter."""
    model.double()
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (2, 7))
    weights = axon.tensor(rng.standard_normal((2, 7, vocab)))

    def objective():
        return (model(ids) * weights).sum()

    model.zero_grad()
    objective().backward()
    eps = 1e-4        # float64: truncation ~eps^2, rounding ~1e-16 |objective| / eps, both tiny
    for name, p in model.named_parameters():
        g = p.grad.numpy()
        for _ in range(entries):
            i = tuple(int(rng.integers(0, n)) for n in p.shape)
            old = p.data[i]
            with axon.no_grad():
                p.data[i] = old + eps
                up = objective().item()
                p.data[i] = old - eps
                down = objective().item()
            p.data[i] = old
            numeric = (up - down) / (2 * eps)
            assert abs(numeric - g[i]) <= 1e-5 * abs(numeric) + 1e-9, \
                f"{name}{list(i)}: autograd {g[i]:.6g}, central difference {numeric:.6g}"


def check_cache_matches_full(model, vocab: int, chunks=(5, 1, 1, 3, 1, 1), seed: int = 1, batch: int = 2,
                             max_length: int | None = None) -> None:
    """Feeding a sequence through a cache chunk by chunk (prefill, single steps, a multi-token
    chunk) gives the full forward's logits."""
    rng = np.random.default_rng(seed)
    T = sum(chunks)
    ids = rng.integers(0, vocab, (batch, T))
    full = logits_np(model, ids)
    cache = model.new_cache(batch, max_length or T)
    outs, start = [], 0
    for n in chunks:
        outs.append(logits_np(model, ids[:, start:start + n], cache=cache))
        start += n
    stepped = np.concatenate(outs, axis=1)
    np.testing.assert_allclose(stepped, full, rtol=0, atol=1e-5 * max(1.0, np.abs(full).max()))


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
