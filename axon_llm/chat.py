"""Chat on top of ``generate``: a conversation that keeps its KV cache between turns, and a
streamer that writes text as tokens arrive.

* :class:`ChatSession` — multi-turn chat through the tokenizer's chat template; only the new
  part of each turn is fed to the model (the cache holds the rest).
* :class:`TextStreamer` — the ``streamer`` given to ``generate``: each step's ids go through
  the tokenizer's incremental detokenizer, so a UTF-8 character split over two tokens is
  written once complete.
* helpers the CLI and the server share: :func:`render_chat`, :func:`eos_token_ids` (every id
  that ends a turn), :func:`max_context` and :func:`check_room` (what fits in the context).
"""

from __future__ import annotations

import sys

import numpy as np

from axon_llm.errors import InputError, TokenizerError
from axon_llm.generation import generate

__all__ = ["ChatSession", "TextStreamer", "render_chat", "eos_token_ids", "max_context", "check_room",
           "make_detokenizer"]


def eos_token_ids(tokenizer, model) -> list[int]:
    """Every id that ends a turn: the tokenizer's EOS (and chat end token), the model config's."""
    ids: list[int] = []

    def add(v):
        if v is None:
            return
        for x in (v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(x, (int, np.integer)) and int(x) >= 0 and int(x) not in ids:
                ids.append(int(x))

    special = getattr(tokenizer, "special_tokens", None)
    add(getattr(special, "eos_token_ids", None))
    add(getattr(special, "eos_token_id", None))
    add(getattr(getattr(model, "config", None), "eos_token_id", None))
    add(getattr(getattr(model, "generation_config", None), "eos_token_ids", None))   # generation_config.json
    return ids


def max_context(model) -> int | None:
    """The model's context length (``max_position_embeddings``), or None when unbounded."""
    cfg = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_seq_len", "context_length"):
        v = getattr(cfg, name, None)
        if isinstance(v, (int, np.integer)) and v > 0:
            return int(v)
    return None


def check_room(model, prompt_len: int, max_new: int) -> int:
    """The number of new tokens that fit in the context (at most ``max_new``); :class:`InputError`
    if the prompt alone does not fit."""
    ctx = max_context(model)
    if ctx is None:
        return max_new
    if prompt_len >= ctx:
        raise InputError(f"the prompt is {prompt_len} tokens but the model's context is {ctx}; shorten it")
    return min(max_new, ctx - prompt_len)


class TextStreamer:
    """Receives token ids as they are generated and writes their text to ``out`` at once.

    Text goes through the tokenizer's incremental detokenizer, so a UTF-8 character split
    over two tokens is written only once complete. Stop strings end the stream early.
    """

    def __init__(self, tokenizer, out=None, enabled: bool = True):
        self.tokenizer = tokenizer
        self.out = out if out is not None else sys.stdout
        self.enabled = enabled
        self.detok = make_detokenizer(tokenizer)
        self.text = ""

    def __call__(self, token_ids) -> None:
        for tid in np.atleast_1d(np.asarray(token_ids)).reshape(-1):
            piece = self.detok.step(int(tid))
            if piece:
                self.text += piece
                if self.enabled:
                    self.out.write(piece)
                    self.out.flush()

    def finish(self) -> str:
        """Flush what the detokenizer still holds; returns the whole text."""
        rest = self.detok.finish()
        if rest:
            self.text += rest
            if self.enabled:
                self.out.write(rest)
                self.out.flush()
        return self.text


def make_detokenizer(tokenizer):
    """The tokenizer's incremental detokenizer (``step(id) -> str``, ``finish() -> str``), special tokens hidden."""
    return tokenizer.stream_decoder(skip_special_tokens=True)


def render_chat(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of ``messages`` through the tokenizer's chat template, ready for the reply."""
    if not hasattr(tokenizer, "apply_chat_template"):
        raise TokenizerError(f"the {type(tokenizer).__name__} has no chat template; drop --chat")
    return [int(x) for x in tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)]


class ChatSession:
    """A conversation whose KV cache lives between turns.

    Each turn renders the whole conversation with the chat template; the tokens the cache
    already holds (the previous prompt and reply) are a prefix of it, so only the new part
    (the end of the last reply's turn and the new user message) is fed to the model.
    If the rendering does not extend the cached tokens (a template that rewrites history),
    the cache is rebuilt from scratch, which is slower but still correct.

    ``config`` is the :class:`~axon_llm.generation_config.GenerationConfig` of every reply (its
    ``max_new_tokens`` is cut to what fits in the context); ``reply`` streams the answer's text
    to ``out`` (a file, default stdout) while it is generated and returns it.

        >>> session = ChatSession(model, tok, GenerationConfig.greedy().with_max_tokens(64))
        >>> session.reply("Hi!")              # the second reply reuses the first turn's cache
    """

    def __init__(self, model, tokenizer, config, system: str | None = None, cache_tokens: int = 2048):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.messages = [{"role": "system", "content": system}] if system else []
        ctx = max_context(model)
        self.cache_tokens = min(cache_tokens, ctx) if ctx else cache_tokens
        self.cache = None
        self.cached_ids: list[int] = []      # exactly the tokens the cache holds, in order
        self.reused_tokens = 0               # prompt tokens not recomputed thanks to the cache (for tests)

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.messages = [m for m in self.messages if m["role"] == "system"]
        self.cache, self.cached_ids = None, []

    def reply(self, user_text: str, out=None, stream: bool = True) -> str:
        """Add a user message, generate the assistant's answer (streamed to ``out``), return it."""
        self.messages.append({"role": "user", "content": user_text})
        ids = render_chat(self.tokenizer, self.messages)
        ctx = max_context(self.model)
        max_new = check_room(self.model, len(ids), self.config.max_new_tokens)
        need = len(ids) + max_new
        reuse = (self.cache is not None and len(self.cached_ids) <= len(ids)
                 and ids[:len(self.cached_ids)] == self.cached_ids and need <= self.cache_tokens)
        if not reuse:
            if need > self.cache_tokens:
                self.cache_tokens = min(max(need, 2 * self.cache_tokens), ctx) if ctx else max(need, 2 * self.cache_tokens)
            self.cache = self.model.new_cache(1, self.cache_tokens)
            self.cached_ids = []
        self.reused_tokens = len(self.cached_ids)
        streamer = TextStreamer(self.tokenizer, out=out, enabled=stream)
        out_ids = generate(self.model, np.asarray([ids], dtype=np.int64), generation_config=self.config.with_max_tokens(max_new),
                           streamer=streamer, cache=self.cache)
        new = [int(t) for t in np.asarray(out_ids)[0, len(ids):]]
        # the cache now holds every token but the last one generated (it was never fed)
        self.cached_ids = ids + new[:-1] if new else list(ids)
        streamer.finish()
        reply_ids = new[:-1] if new and new[-1] in self.config.eos_token_ids else new
        text = self.tokenizer.decode(reply_ids)
        self.messages.append({"role": "assistant", "content": text})
        return text
