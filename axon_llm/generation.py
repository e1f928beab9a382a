"""Text generation: the one decode loop every causal model uses.

The loop relies only on the causal-LM protocol::

    cache  = model.new_cache(batch_size, max_length)
    logits = model(input_ids, attention_mask=None, cache=cache)   # [B, T, V]; cache advances by T

1. **prefill** — the whole prompt goes through the model once, filling the cache;
2. **decode** — each step feeds only the token just chosen (``[B, 1]``) against the cache.

Batches of different prompt lengths are *left*-padded with an ``attention_mask`` (1 = real
token), the layout transformers uses: every row's next token then sits in the last column.
The mask is extended with ones as tokens are appended; the model derives positions from it.

How the next token is picked is :func:`select_next_token` (argmax when ``do_sample=False``,
else a draw from ``softmax(logits / temperature)`` restricted to ``top_k``). It is the single
place a richer sampler (top-p, repetition penalty, beam search ...) plugs in.
"""

from __future__ import annotations

import numpy as np

import axon

from axon_llm.embeddings import as_token_ids
from axon_llm.errors import GenerationError, InputError

__all__ = ["generate", "select_next_token"]


def select_next_token(logits: np.ndarray, do_sample: bool = False, *, temperature: float = 1.0,
                      top_k: int | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
    """Next token per row from last-position logits ``[B, V]`` -> int64 ``[B]``.

    Greedy takes the first maximum (as ``torch.argmax``). Sampling draws from
    ``softmax(logits / temperature)``, keeping only the ``top_k`` largest logits when given.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if not do_sample:
        return logits.argmax(axis=-1).astype(np.int64)
    if temperature <= 0:
        raise GenerationError(f"temperature must be > 0 when sampling, got {temperature}")
    z = logits / temperature
    if top_k is not None:
        if top_k < 1:
            raise GenerationError(f"top_k must be >= 1, got {top_k}")
        k = min(int(top_k), z.shape[-1])
        kth = np.partition(z, -k, axis=-1)[:, -k][:, None]
        z = np.where(z < kth, -np.inf, z)
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    rng = np.random.default_rng() if rng is None else rng
    u = rng.random((p.shape[0], 1))
    return np.minimum((np.cumsum(p, axis=-1) < u).sum(axis=-1), p.shape[-1] - 1).astype(np.int64)


def generate(model, input_ids, max_new_tokens: int = 24, do_sample: bool = False, attention_mask=None,
             eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None, *,
             temperature: float = 1.0, top_k: int | None = None, seed: int | None = None) -> np.ndarray:
    """Continue ``input_ids [B, T]`` by up to ``max_new_tokens``; returns int64 ``[B, T + n]``.

    ``attention_mask [B, T]`` marks real tokens of left-padded prompts. With ``eos_token_id``, a
    row that produced it is finished: it gets ``pad_token_id`` (default: the eos id) from then
    on, and the loop stops early once every row is finished. ``seed`` makes sampling repeatable.
    """
    ids = as_token_ids(input_ids, model.config.vocab_size)
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise GenerationError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    b, t = ids.shape
    mask = None
    if attention_mask is not None:
        mask = np.asarray(attention_mask.numpy() if isinstance(attention_mask, axon.Tensor) else attention_mask)
        if mask.shape != ids.shape:
            raise InputError(f"attention_mask shape {list(mask.shape)} differs from input_ids {list(ids.shape)}")
        mask = mask.astype(np.int64)
        if mask.all():
            mask = None
    if max_new_tokens == 0:
        return ids.copy()
    eos = set() if eos_token_id is None else set(np.atleast_1d(eos_token_id).tolist())
    pad = pad_token_id if pad_token_id is not None else (min(eos) if eos else 0)
    rng = np.random.default_rng(seed)
    out = [ids]
    finished = np.zeros(b, dtype=bool)
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with axon.no_grad():
            cache = model.new_cache(b, t + max_new_tokens)
            logits = model(ids, attention_mask=mask, cache=cache)                # prefill: [B, T, V]
            for step in range(max_new_tokens):
                nxt = select_next_token(logits.numpy()[:, -1], do_sample, temperature=temperature,
                                        top_k=top_k, rng=rng)                    # [B]
                nxt = np.where(finished, pad, nxt)
                out.append(nxt[:, None])
                if eos:
                    finished |= np.isin(nxt, list(eos))
                    if finished.all():
                        break
                if step + 1 == max_new_tokens:
                    break
                if mask is not None:
                    mask = np.concatenate([mask, np.ones((b, 1), np.int64)], axis=1)
                logits = model(nxt[:, None], attention_mask=mask, cache=cache)   # decode: [B, 1, V]
    finally:
        model.train(was_training)
    return np.concatenate(out, axis=1)
