"""Sentence embeddings: mean-pool a model's hidden states over the real tokens, then L2-normalise
(or take the first token, when a GGUF file's ``pooling_type`` says CLS).

This is sentence-transformers' recipe for all-MiniLM-L6-v2 and friends (``Pooling(mode_mean_tokens)``
then ``Normalize``). :func:`mean_pool_normalize` is the rule on arrays; :func:`embed_texts` runs
a tokenizer and a model (``BertModel``) to get there. Used by ``axon-llm embed`` and the server's
``/v1/embeddings``.
"""

from __future__ import annotations

import numpy as np

import axon

from axon_llm.chat import max_context
from axon_llm.errors import InputError, UnsupportedError

__all__ = ["mean_pool_normalize", "embed_texts"]


def mean_pool_normalize(hidden, mask) -> np.ndarray:
    """Hidden states ``[N, T, H]`` and a 1/0 mask ``[N, T]`` (1 = real token) -> unit vectors ``[N, H]``
    (float64): the mean over each row's real tokens, divided by its L2 norm (a zero vector stays zero).
    :class:`InputError` when the shapes do not match."""
    hidden = np.asarray(hidden, dtype=np.float64)
    mask = np.asarray(mask)
    if hidden.ndim != 3 or mask.shape != hidden.shape[:2]:
        raise InputError(f"mean pooling needs hidden states [N, T, H] and a mask [N, T], got shapes "
                         f"{list(hidden.shape)} and {list(mask.shape)}")
    mask = (mask != 0).astype(np.float64)
    summed = (hidden * mask[:, :, None]).sum(axis=1)                            # [N, T, H] -> [N, H]
    mean = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1)              # [N, H]
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


def embed_texts(model, tokenizer, texts: list[str]) -> np.ndarray:
    """Sentence vectors [N, H] of ``texts``: each text encoded alone, right-padded into one batch,
    run through ``model`` (it must return hidden states ``[N, T, H]``, e.g. ``BertModel``), then
    :func:`mean_pool_normalize`. :class:`InputError` for a text longer than the model's context."""
    if isinstance(texts, str) or not texts:
        raise InputError("embed_texts needs a non-empty list of texts")
    rows = [list(tokenizer.encode(t)) for t in texts]
    ctx = max_context(model)
    for t, r in zip(texts, rows):
        if ctx and len(r) > ctx:
            raise InputError(f"text of {len(r)} tokens exceeds the model's {ctx}: {t[:40]!r}...")
    width = max(len(r) for r in rows)
    pad = getattr(tokenizer, "pad_token_id", None) or 0
    ids = np.full((len(rows), width), pad, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):                              # right padding, as sentence-transformers
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    was_training = getattr(model, "training", False)
    model.eval()                                              # no dropout, as generate
    try:
        with axon.no_grad():
            hidden = model(ids, attention_mask=mask)          # [N, T, H]
    finally:
        model.train(was_training)
    hidden = np.asarray(hidden.numpy() if hasattr(hidden, "numpy") else hidden, dtype=np.float64)
    if hidden.ndim != 3:
        raise InputError(f"{type(model).__name__} does not return hidden states [B, T, H]; "
                         "use a sentence-embedding model (BertModel)")
    if _gguf_pooling(model) == "cls":                           # first token ([CLS]) only
        first = np.zeros_like(mask)
        first[:, 0] = 1
        return mean_pool_normalize(hidden, first)
    return mean_pool_normalize(hidden, mask)


def _gguf_pooling(model) -> str:
    """How a GGUF embedding model says to pool (``<arch>.pooling_type``, as llama.cpp reads it):
    absent, 0 (none) or 1 -> ``"mean"``, 2 -> ``"cls"``; others (last token, rank) are
    :class:`UnsupportedError`. Models from HF folders are mean-pooled (sentence-transformers')."""
    md = getattr(model, "gguf_metadata", None) or {}
    kind = md.get(f"{md.get('general.architecture')}.pooling_type")
    if kind in (None, 0, 1):
        return "mean"
    if kind == 2:
        return "cls"
    raise UnsupportedError(f"GGUF pooling_type {kind!r} (3 = last token, 4 = rank) is not supported for "
                           "sentence embeddings; supported: mean (1) and CLS (2)")
