"""Text generation: the one decode loop every causal model uses.

The loop relies only on the causal-LM protocol::

    cache  = model.new_cache(batch_size, max_length)
    logits = model(input_ids, attention_mask=None, cache=cache)   # [B, T, V]; cache advances by T

1. **prefill** — the whole prompt goes through the model once, filling the cache;
2. **decode** — each step feeds only the token just chosen (``[B, 1]``) against the cache.

Batches of different prompt lengths are *left*-padded with an ``attention_mask`` (1 = real
token), the layout transformers uses: every row's next token then sits in the last column.
The mask is extended with ones as tokens are appended; the model derives positions from it.

What to generate is a :class:`~axon_llm.generation_config.GenerationConfig` (greedy, sampling with
temperature / top-k / top-p / min-p, repetition penalty, EOS ids, stop strings, beam search);
how the next token is picked lives in axon_llm/sampling.py (``TextGenerator`` for greedy and
sampling, ``BeamSearch`` for beams); the settings and their generation_config.json I/O live in
axon_llm/generation_config.py (re-exported here). This file only runs the model.

Beam search keeps ``B * num_beams`` rows in the cache; after each step the rows are
reordered so row ``i`` continues the beam it extends (``cache.reorder``, see axon_llm/cache.py).
"""

from __future__ import annotations

import numpy as np

import axon

from axon_llm.embeddings import as_token_ids
from axon_llm.errors import GenerationError, InputError
from axon_llm.generation_config import (
    GenerationConfig, generation_config_from_dict, generation_config_from_model_config,
    generation_config_to_dict, model_generation_config, resolve_generation_config,
)
from axon_llm.sampling import BeamSearch, TextGenerator, log_softmax, process_logits

__all__ = ["generate", "check_generation_budget", "model_context", "select_next_token", "resolve_generation_config",
           "generation_config_from_model_config", "generation_config_from_dict", "generation_config_to_dict",
           "model_generation_config", "mask_logits"]

#: "not given" for ``generate(eos_token_id=...)``: an explicit None means "no EOS"
_UNSET = object()


def select_next_token(logits: np.ndarray, do_sample: bool = False, *, temperature: float = 1.0,
                      top_k: int | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
    """Next token per row from last-position logits ``[B, V]`` -> int64 ``[B]``.

    Greedy takes the first maximum (as ``torch.argmax``); sampling draws from
    ``softmax(logits / temperature)`` restricted to ``top_k``. A shorthand for
    ``TextGenerator(GenerationConfig(...)).next_tokens(logits)``.
    """
    cfg = GenerationConfig(do_sample=do_sample, temperature=temperature, top_k=top_k)
    gen = TextGenerator(cfg)
    if rng is not None:
        gen.rng = rng
    return gen.next_tokens(np.asarray(logits))


class _Rows:
    """The state of one generation call shared by both loops: the model, its cache, the mask."""

    def __init__(self, model, ids: np.ndarray, mask: np.ndarray | None, cache):
        self.model, self.mask, self.cache = model, mask, cache

    def forward(self, new_ids: np.ndarray) -> np.ndarray:
        """Feed ``new_ids [B, t]`` through the cache; the last position's logits ``[B, V]`` (the model's dtype)."""
        # every causal LM takes logits_to_keep (transformers' name): the LM head runs on the last position only
        logits = self.model(new_ids, attention_mask=self.mask, cache=self.cache, logits_to_keep=1)   # [B, 1, V]
        return np.array(logits.numpy()[:, -1] if hasattr(logits, "numpy") else np.asarray(logits)[:, -1])

    def append_mask(self) -> None:
        if self.mask is not None:
            self.mask = np.concatenate([self.mask, np.ones((self.mask.shape[0], 1), np.int64)], axis=1)


def _emit(streamer, tokens: np.ndarray) -> None:
    if streamer is None:
        return
    if hasattr(streamer, "put"):          # transformers' streamer protocol
        streamer.put(tokens)
    else:
        streamer(tokens)


def _end_stream(streamer) -> None:
    if streamer is not None and hasattr(streamer, "end"):
        streamer.end()


def generate(model, input_ids, max_new_tokens: int | None = None, do_sample: bool | None = None, attention_mask=None,
             eos_token_id: int | list[int] | None = _UNSET, pad_token_id: int | None = None, *,
             generation_config: GenerationConfig | None = None, temperature: float | None = None,
             top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
             repetition_penalty: float | None = None, num_beams: int | None = None,
             length_penalty: float | None = None, early_stopping: bool | str | None = None,
             seed: int | None = None, stop_strings=None, tokenizer=None, streamer=None, cache=None,
             frequency_penalty: float | None = None, presence_penalty: float | None = None,
             json_schema=None, logprobs=None, fast_decode: bool = True) -> np.ndarray:
    """Continue ``input_ids [B, T]`` by up to ``max_new_tokens``; returns int64 ``[B, T + n]``.

    Settings come from ``generation_config`` (default: ``model.generation_config`` — greedy,
    ``max_new_tokens=24`` and the model's EOS / pad ids, as transformers) with any keyword given
    here written over it. ``eos_token_id=None`` given explicitly switches EOS off (rows then
    always run ``max_new_tokens``). ``attention_mask [B, T]`` marks real tokens of
    left-padded prompts. A row that produced one of the EOS ids — or whose new text contains a
    stop string (needs ``tokenizer``) — is finished: it gets the pad id (default: the first EOS
    id) from then on, and the loop stops once every row is finished. ``seed`` makes sampling
    repeatable.

    ``streamer``: a callable receiving each step's new ids ``[B]``, or an object with
    transformers' ``put(ids)`` / ``end()``. ``cache``: a cache (``model.new_cache``) that already
    holds the first ``len(cache)`` tokens of ``input_ids`` — only the rest is prefilled (a chat
    keeps its cache between turns this way); it must have room for the new tokens.
    ``num_beams > 1`` runs transformers' beam search (no streamer, no external cache).

    ``frequency_penalty`` / ``presence_penalty``: OpenAI's penalties on the generated tokens.
    ``json_schema`` (a JSON-schema dict; ``{"type": "object"}`` = any object; needs
    ``tokenizer``) masks every step so each row's new text is JSON valid under the schema
    (axon_llm/constrained.py); it is complete within ``max_new_tokens``. ``logprobs``: a
    :class:`~axon_llm.sampling.LogprobsRecorder` that receives each step's log-probabilities.

    ``fast_decode``: decode steps of a single unpadded row of a model whose class names a
    ``decode_layout`` (LLaMA, Mistral, Mixtral, Qwen2, Gemma 3, Phi-3) run through
    :class:`axon_llm.decode.DecodePlan` (raw arrays, fused kernels); ``False`` keeps them on the
    module forward (the plan's reference). Other models and batches always use the modules.
    """
    base = model_generation_config(model) if generation_config is None else generation_config
    if eos_token_id is None and isinstance(base, GenerationConfig):
        base = base.with_eos_tokens(())                               # explicit None: no EOS
    cfg = resolve_generation_config(
        base, max_new_tokens=max_new_tokens, do_sample=do_sample,
        eos_token_id=None if eos_token_id is _UNSET else eos_token_id,
        pad_token_id=pad_token_id, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        repetition_penalty=repetition_penalty, num_beams=num_beams, length_penalty=length_penalty,
        early_stopping=early_stopping, seed=seed, stop_strings=stop_strings,
        frequency_penalty=frequency_penalty, presence_penalty=presence_penalty)
    ids = as_token_ids(input_ids, model.config.vocab_size)
    b, t = ids.shape
    mask = None
    if attention_mask is not None:
        mask = np.asarray(attention_mask.numpy() if isinstance(attention_mask, axon.Tensor) else attention_mask)
        if mask.shape != ids.shape:
            raise InputError(f"attention_mask shape {list(mask.shape)} differs from input_ids {list(ids.shape)}")
        mask = mask.astype(np.int64)
        if mask.all():
            mask = None
    if cfg.stop_strings and tokenizer is None:
        raise GenerationError("stop_strings need the tokenizer to decode with: generate(..., tokenizer=tok)")
    constraints = None
    if json_schema is not None:
        if tokenizer is None:
            raise GenerationError("json_schema needs the tokenizer: generate(..., tokenizer=tok)")
        from axon_llm.constrained import JsonConstraint, compile_schema, token_index

        node = compile_schema(json_schema)
        index = token_index(tokenizer, cfg.eos_token_ids)
        constraints = [JsonConstraint(index, node) for _ in range(b)]
        if constraints[0].min_tokens > cfg.max_new_tokens:
            raise InputError(f"max_new_tokens={cfg.max_new_tokens} cannot hold the shortest JSON the schema "
                             f"allows ({constraints[0].min_tokens} tokens)")
    if cfg.max_new_tokens == 0:
        return ids.copy()
    check_generation_budget(model, b, t, cfg, external_cache=cache is not None)

    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with axon.no_grad():
            if cfg.num_beams > 1:
                if streamer is not None or cache is not None or constraints or logprobs is not None:
                    raise GenerationError("beam search supports no streamer, external cache, json_schema or logprobs")
                return _beam_search(model, ids, mask, cfg)
            return _sample(model, ids, mask, cfg, tokenizer, streamer, cache, constraints, logprobs, fast_decode)
    finally:
        model.train(was_training)


def model_context(model) -> int | None:
    """The model's context length (``max_position_embeddings`` or ``n_positions``), None if it has none."""
    cfg = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        v = getattr(cfg, name, None)
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0:
            return int(v)
    return None


def check_generation_budget(model, batch: int, prompt_len: int, cfg: GenerationConfig, *,
                            external_cache: bool = False) -> None:
    """Before anything is allocated: the prompt plus ``max_new_tokens`` must fit the model's context,
    and the cache, logits and output of ``batch * num_beams`` rows must fit in the memory left.
    Raises :class:`GenerationError` naming the setting to lower."""
    from axon_llm.limits import CEILINGS, check_memory

    total = prompt_len + cfg.max_new_tokens
    ctx = model_context(model)
    if hasattr(model.config, "rope_theta"):    # RoPE extrapolates (dynamic scaling is made for it): a ceiling only
        ctx = CEILINGS["positions"]
    if ctx is not None and total > ctx:
        raise GenerationError(f"prompt ({prompt_len} tokens) + max_new_tokens ({cfg.max_new_tokens}) = {total} "
                              f"exceeds the model's context of {ctx} tokens; lower max_new_tokens")
    rows = batch * cfg.num_beams
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    need = rows * total * 8 + rows * vocab * 4 * (4 if cfg.num_beams > 1 else 2)   # output ids, logits + temporaries
    shape = getattr(model, "cache_shape", None)
    if shape is not None and not external_cache:
        try:
            layers, kv, hd = (int(x) for x in shape())
        except (TypeError, ValueError, AttributeError):   # a model whose state is not a KV cache (SSM)
            layers = kv = hd = 0
        need += 2 * layers * rows * total * kv * hd * 4                       # K and V, float32

    what = f"generating {cfg.max_new_tokens} tokens for {batch} row(s)" + \
        (f" x {cfg.num_beams} beams" if cfg.num_beams > 1 else "")
    check_memory(need, what, "lower max_new_tokens, num_beams or the batch size", GenerationError)


def _sample(model, ids, mask, cfg: GenerationConfig, tokenizer, streamer, cache, constraints=None,
            logprobs=None, fast_decode: bool = True) -> np.ndarray:
    """Greedy or sampled decoding of every row at once."""
    b, t = ids.shape
    if cache is None:
        cache = model.new_cache(b, t + cfg.max_new_tokens)
        start = 0
    else:
        start = len(cache)
        if start >= t:
            raise GenerationError(f"the cache already holds {start} tokens but the input has only {t}; "
                                  "at least one new token must be fed")
        room = getattr(cache, "max_length", None)
        if room is not None and t + cfg.max_new_tokens - 1 > room:
            raise GenerationError(f"the cache holds {room} tokens; {t} prompt + {cfg.max_new_tokens} new do not fit")
    rows = _Rows(model, ids, mask, cache)
    gen = TextGenerator(cfg)
    eos = np.asarray(cfg.eos_token_ids, dtype=np.int64)
    fill = cfg.fill_token_id
    finished = np.zeros(b, dtype=bool)
    out = np.empty((b, t + cfg.max_new_tokens), dtype=np.int64)     # [B, T + new]
    out[:, :t] = ids
    n = t
    logits = rows.forward(ids[:, start:])                             # prefill: [B, V]
    plan = _fast_plan(model, mask, cache) if fast_decode and cfg.max_new_tokens > 1 else None
    try:
        for step in range(cfg.max_new_tokens):
            raw = logits
            if constraints is not None:
                logits = mask_logits(logits, constraints, cfg.max_new_tokens - step, finished)
            nxt = gen.next_tokens(logits, out[:, :n] if cfg.repetition_penalty != 1.0 else None, out[:, t:n])   # [B]
            nxt = np.where(finished, fill, nxt)
            if logprobs is not None:
                logprobs.record(raw, nxt)
            if constraints is not None:
                for c, tok, done in zip(constraints, nxt, finished):
                    if not done:
                        c.advance(tok)
                finished |= np.array([c.done for c in constraints])
            out[:, n] = nxt
            n += 1
            _emit(streamer, nxt)
            if eos.size:
                finished |= np.isin(nxt, eos)
            if cfg.stop_strings:
                finished |= _hit_stop_strings(tokenizer, out[:, t:n], cfg.stop_strings, finished)
            if finished.all() or step + 1 == cfg.max_new_tokens:
                break
            rows.append_mask()
            if plan is not None:
                logits = plan.step(int(nxt[0]))[None]                 # decode, fast path: [1, V]
            else:
                logits = rows.forward(nxt[:, None])                   # decode: [B, 1] -> [B, V]
    finally:
        _end_stream(streamer)
    return out[:, :n]


def _fast_plan(model, mask, cache):
    """The model's :class:`~axon_llm.decode.DecodePlan` for this unpadded single-row cache, or
    None (padding, batches, families it does not cover, ``model.fast_decode = False``)."""
    if mask is not None or not getattr(model, "fast_decode", True):
        return None
    from axon_llm.decode import decode_plan

    return decode_plan(model, cache)


def mask_logits(logits: np.ndarray, constraints, remaining: int, finished=None) -> np.ndarray:
    """``logits [B, V]`` with ``-inf`` wherever row ``b``'s constraint forbids the token
    (``remaining`` tokens may still be generated, this one included); finished rows are kept."""
    out = np.array(logits, copy=True)
    for b, c in enumerate(constraints):
        if c is not None and (finished is None or not finished[b]):
            out[b, :c.index.vocab_size][~c.allowed(remaining)] = -np.inf
            out[b, c.index.vocab_size:] = -np.inf                    # padded vocabulary rows
    return out


def _hit_stop_strings(tokenizer, new_ids: np.ndarray, stops, finished: np.ndarray) -> np.ndarray:
    """[B] True where a not-yet-finished row's new text contains a stop string."""
    hit = np.zeros(len(new_ids), dtype=bool)
    for i, row in enumerate(new_ids):
        if not finished[i]:
            text = tokenizer.decode([int(x) for x in row])
            hit[i] = any(s in text for s in stops)
    return hit


def _beam_search(model, ids, mask, cfg: GenerationConfig) -> np.ndarray:
    """transformers' beam search: ``B * num_beams`` cached rows, reordered after each step."""
    b, t = ids.shape
    nb = cfg.num_beams
    search = BeamSearch(cfg, ids, t + cfg.max_new_tokens)
    flat = np.repeat(ids, nb, axis=0)                                 # [B, T] -> [B*N, T]
    rows = _Rows(model, flat, None if mask is None else np.repeat(mask, nb, axis=0), model.new_cache(b * nb, t + cfg.max_new_tokens))
    logits = rows.forward(flat)                                       # prefill: [B*N, V]
    while True:
        running = search.running_ids()                                # [B*N, cur_len]
        log_probs = process_logits(log_softmax(logits), cfg, running)
        reorder = search.step(log_probs)
        if search.done:
            break
        rows.cache.reorder(reorder)
        rows.append_mask()
        logits = rows.forward(search.running_ids()[:, -1:])           # decode: [B*N, 1] -> [B*N, V]
    return search.finalize()
