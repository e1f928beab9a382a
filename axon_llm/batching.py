"""Continuous batching: one thread owns the model and decodes every active sequence together.

Glossary: ``n`` active rows, ``R`` rows of the batch cache (``max_batch``), ``L`` slots in use
(``cache.length``), ``C`` slots allocated (``cache.max_length``), ``P`` prompt length.

A request's prompt is prefilled in its own cache (``model.new_cache(n, P)``) together with the
other prompts waiting at that moment (left-padded to the longest, when the padding stays small:
eight short prompts arriving at once read the weights once, not eight times), and its first
token is picked at once (time to first token). Then its K/V are copied into a free row
of the one batch cache, **right-aligned** to the slots in use: the row's ``P`` tokens sit in
slots ``L-P .. L-1`` and the slots before them are holes (``key_mask`` False), exactly how a
left-padded prompt looks. ``seen`` (real tokens per row) gives every row its own position ids,
so each step decodes all rows with one ``[n, 1]`` forward call, each at its own position.

Active rows are kept at the front (rows ``0 .. n-1``), so a step runs on the cache's first ``n``
rows only (a view, :meth:`KVCache.rows`): an idle row costs nothing. A finished or cancelled
sequence leaves at once; the last active row moves into its place. When the slots run out,
every row's real tokens (always the last ``seen[r]`` slots) are packed to the right of a
narrower window (:meth:`BatchScheduler._pack`), and the cache grows (up to the context) when
one sequence alone needs more.

Sampling is per sequence (its own :class:`~axon_llm.sampling.TextGenerator`, seed, penalties,
JSON constraint), so a greedy sequence's tokens do not depend on its neighbours.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

import axon
from axon_kernels.quant import FUSED_MATMUL_MAX_TOKENS
from axon_kernels.quant_int8 import MIN_TOKENS as INT8_MIN_TOKENS

from axon_llm.batch_decode import batch_decode_plan
from axon_llm.cache import KVCache
from axon_llm.errors import InputError
from axon_llm.generation import mask_logits
from axon_llm.generation_config import GenerationConfig
from axon_llm.sampling import TextGenerator, token_logprobs

__all__ = ["SequenceRequest", "BatchScheduler"]


@dataclass(eq=False)
class SequenceRequest:
    """One sequence to generate. Results arrive on ``events`` as tuples:
    ``("token", id, StepLogprobs | None)`` per new token (EOS included), then
    ``("done", finish_reason)`` (``"stop"``: EOS or JSON complete, ``"length"``: max tokens or the
    deadline, ``"cancelled"``) or ``("error", exception)``."""

    prompt_ids: list[int]
    config: GenerationConfig
    constraint: object | None = None            # a JsonConstraint
    top_logprobs: int | None = None             # None: no logprobs; k: the chosen token's and k best
    deadline: float | None = None               # time.monotonic() after which the sequence is cut
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Ask the scheduler to drop this sequence (its row is freed at the next step)."""
        self.cancelled.set()


@dataclass(eq=False)
class _Row:
    request: SequenceRequest
    generator: TextGenerator
    generated: list[int]
    last: int


class BatchScheduler:
    """Owns ``model`` on one thread; :meth:`submit` adds a :class:`SequenceRequest` to the batch.

    ``max_batch`` rows decode together; ``max_length`` bounds prompt + new tokens of one
    sequence (default: the model's context). ``start()`` runs the thread, ``close()`` stops it.
    ``fast_decode=False`` steps through the module forward instead of a
    :class:`~axon_llm.batch_decode.BatchDecodePlan` (the reference; models without a plan always do).
    """

    INITIAL_SLOTS = 256

    def __init__(self, model, max_batch: int = 8, max_length: int | None = None, fast_decode: bool = True):
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise InputError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        self.model = model
        # the batched step through raw arrays (axon_llm/batch_decode.py), or None: through the modules
        self.plan = batch_decode_plan(model) if fast_decode else None
        self.max_batch = max_batch
        ctx = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.max_length = int(max_length or ctx or 2048)
        self.pending: queue.Queue = queue.Queue()
        self.rows: list[_Row] = []
        self.cache: KVCache | None = None
        self.steps = 0                                    # decode steps run (for tests and logs)
        self.max_active = 0                               # most rows decoded together
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the public side (any thread) ---------------------------------------------------------
    def warm_up(self, rows: int | None = None, new_tokens: int = 3) -> None:
        """Run one short sequence alone, then ``rows`` (default ``max_batch``) together, and wait
        for them: every kernel a short request and a full batch call is compiled (or loaded from
        Numba's disk cache) before the first client arrives. The scheduler must be started."""
        rows = self.max_batch if rows is None else min(rows, self.max_batch)
        vocab = getattr(getattr(self.model, "config", None), "vocab_size", None) or 8
        prompt = [i % vocab for i in range(1, 5)]                       # 4 ordinary token ids
        config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False)
        for batch in (1, rows):
            requests = [self.submit(SequenceRequest(list(prompt), config)) for _ in range(batch)]
            for request in requests:
                while (event := request.events.get())[0] == "token":
                    pass
                if event[0] == "error":
                    raise event[1]

    def start(self) -> "BatchScheduler":
        """Start the scheduler thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="axon-llm-scheduler", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread; sequences still running end with ``("done", "cancelled")``."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, request: SequenceRequest) -> SequenceRequest:
        """Queue ``request``; it joins the batch as soon as a row is free."""
        p, m = len(request.prompt_ids), request.config.max_new_tokens
        if p < 1:
            raise InputError("the prompt holds no tokens")
        if m < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {m}")
        if p + m > self.max_length:
            raise InputError(f"{p} prompt tokens + {m} new tokens exceed the context of {self.max_length}")
        self.pending.put(request)
        self._wake.set()
        return request

    # -- the scheduler thread -----------------------------------------------------------------
    def _run(self) -> None:
        with axon.no_grad():
            if hasattr(self.model, "eval"):
                self.model.eval()
            while not self._stop.is_set():
                self._admit()
                self._drop_finished()
                if not self.rows:
                    self._wake.wait(timeout=0.5)
                    self._wake.clear()
                    continue
                try:
                    self._step()
                except Exception as exc:                  # the model failed: every active row ends with it
                    for row in self.rows:
                        row.request.events.put(("error", exc))
                    self.rows = []
                    self.cache = None
        for row in self.rows:
            row.request.events.put(("done", "cancelled"))
        while not self.pending.empty():
            self.pending.get_nowait().events.put(("done", "cancelled"))

    #: a joint prefill pads every prompt to the longest one, and a prompt must take the same
    #: kernels joined as alone (so greedy outputs do not depend on the neighbours), so prompts
    #: are grouped by the path their length takes (quantised weights): up to SHORT_PROMPT tokens
    #: the few-token kernel (`axon_kernels.quant.FUSED_MATMUL_MAX_TOKENS`; a group stays within
    #: SHORT_PROMPT padded tokens, since past it the product dequantises every weight, ~0.1 s
    #: for SmolLM2, which a short prompt alone never pays), from LONG_PROMPT tokens the int8
    #: prefill (`axon_kernels.quant_int8.MIN_TOKENS`, chosen per sequence length), the float
    #: prefill between. Those above SHORT_PROMPT share the dequantisation: their group grows
    #: while the padded tokens stay within PREFILL_PAD_RATIO x the real ones and PREFILL_TOKENS.
    SHORT_PROMPT = FUSED_MATMUL_MAX_TOKENS
    LONG_PROMPT = INT8_MIN_TOKENS
    PREFILL_PAD_RATIO = 1.5
    PREFILL_TOKENS = 2048

    def _admit(self) -> None:
        """Prefill the waiting requests that fit in free rows: grouped by :meth:`_prefill_groups`,
        one forward per group (8 short prompts arriving together read the weights once, not 8 times)."""
        taken = []
        while len(self.rows) + len(taken) < self.max_batch:
            try:
                req = self.pending.get_nowait()
            except queue.Empty:
                break
            if req.cancelled.is_set():
                req.events.put(("done", "cancelled"))
                continue
            taken.append(req)
        for group in self._prefill_groups(taken):
            try:
                self._prefill(group)
            except Exception as exc:
                if len(group) == 1:
                    group[0].events.put(("error", exc))
                    continue
                for req in group:                         # one prompt's failure must not fail the others
                    try:
                        self._prefill([req])
                    except Exception as one_exc:
                        req.events.put(("error", one_exc))

    def _prefill_groups(self, reqs: list[SequenceRequest]) -> list[list[SequenceRequest]]:
        """``reqs`` cut into groups that are prefilled together (in arrival order within each):
        prompts of one length class (<= SHORT_PROMPT, below LONG_PROMPT, from LONG_PROMPT
        tokens) together, short ones while the group's padded size (rows x longest prompt)
        stays <= SHORT_PROMPT, the others while it stays within PREFILL_PAD_RATIO x the group's
        real tokens and PREFILL_TOKENS."""
        groups: list[list[SequenceRequest]] = []
        last = {}                                          # path class -> index of that class's open group
        for req in reqs:
            p = len(req.prompt_ids)
            kind = 0 if p <= self.SHORT_PROMPT else 1 if p < self.LONG_PROMPT else 2
            if kind in last:
                group = groups[last[kind]] + [req]
                lengths = [len(r.prompt_ids) for r in group]
                padded = len(group) * max(lengths)
                fits = (padded <= self.SHORT_PROMPT if kind == 0 else
                        padded <= self.PREFILL_PAD_RATIO * sum(lengths) and padded <= self.PREFILL_TOKENS)
                if fits:
                    groups[last[kind]] = group
                    continue
            last[kind] = len(groups)
            groups.append([req])
        return groups

    def _prefill(self, reqs: list[SequenceRequest]) -> None:
        """Prefill ``reqs`` in one forward (left-padded to the longest prompt), pick each one's
        first token, and place the unfinished ones in the batch cache."""
        lengths = [len(r.prompt_ids) for r in reqs]
        n, width = len(reqs), max(lengths)
        ids = np.zeros((n, width), dtype=np.int64)                                   # [n, P]
        mask = np.zeros((n, width), dtype=np.int64)                                  # [n, P]
        for i, (req, p) in enumerate(zip(reqs, lengths)):
            ids[i, width - p:] = req.prompt_ids
            mask[i, width - p:] = 1
        own = self.model.new_cache(n, width)
        logits = self.model(ids, attention_mask=None if n == 1 else mask, cache=own, logits_to_keep=1)   # [n, 1, V]
        logits = np.asarray(logits.numpy() if hasattr(logits, "numpy") else logits)[:, -1]   # [n, V]
        for i, (req, p) in enumerate(zip(reqs, lengths)):
            row = _Row(req, TextGenerator(req.config), [], -1)
            if self._pick(row, logits[i:i + 1]):
                continue                                  # finished on its first token
            self._place(own, i, p)
            self.rows.append(row)
            self.max_active = max(self.max_active, len(self.rows))

    def _pick(self, row: _Row, logits: np.ndarray) -> bool:
        """Choose the row's next token from ``logits [1, V]``, send it; True when the row is finished."""
        req, cfg = row.request, row.request.config
        remaining = cfg.max_new_tokens - len(row.generated)
        work = logits
        if req.constraint is not None:
            work = mask_logits(logits, [req.constraint], remaining)
        seen = [list(req.prompt_ids) + row.generated] if cfg.repetition_penalty != 1.0 else None
        tok = int(row.generator.next_tokens(work, seen, [row.generated])[0])
        lp = None if req.top_logprobs is None else token_logprobs(logits, [tok], req.top_logprobs)
        row.generated.append(tok)
        row.last = tok
        req.events.put(("token", tok, lp))
        if tok in cfg.eos_token_ids:
            req.events.put(("done", "stop"))
            return True
        if req.constraint is not None:
            req.constraint.advance(tok)
            if req.constraint.done:
                req.events.put(("done", "stop"))
                return True
        if len(row.generated) >= cfg.max_new_tokens:
            req.events.put(("done", "length"))
            return True
        if req.deadline is not None and time.monotonic() > req.deadline:
            req.events.put(("done", "length"))
            return True
        return False

    def _new_cache(self, slots: int) -> KVCache:
        return self.model.new_cache(self.max_batch, slots)

    def _ensure_capacity(self, need: int) -> None:
        """Make the batch cache hold at least ``need`` slots (copying the active rows)."""
        if self.cache is not None and self.cache.max_length >= need:
            return
        old = self.cache
        size = max(need, self.INITIAL_SLOTS, 2 * old.max_length if old is not None else 0)
        self.cache = self._new_cache(min(size, self.max_length))
        if old is not None:
            n, length = len(self.rows), old.length
            for new_layer, old_layer in zip(self.cache.layers, old.layers):
                new_layer.k[:n, :, :length] = old_layer.k[:n, :, :length]
                new_layer.v[:n, :, :length] = old_layer.v[:n, :, :length]
            self.cache.key_mask[:n, :length] = old.key_mask[:n, :length]
            self.cache.seen[:n] = old.seen[:n]
            self.cache.length = length

    def _pack(self, width: int) -> None:
        """Move every active row's real tokens (its last ``seen[r]`` slots) to end at slot ``width``."""
        cache, length = self.cache, self.cache.length
        for r in range(len(self.rows)):
            c = int(cache.seen[r])
            if width == length or c == 0:
                continue
            for layer in cache.layers:
                layer.k[r, :, width - c:width] = layer.k[r, :, length - c:length].copy()
                layer.v[r, :, width - c:width] = layer.v[r, :, length - c:length].copy()
            cache.key_mask[r, :width - c] = False
            cache.key_mask[r, width - c:width] = True
        cache.length = width

    def _place(self, own: KVCache, i: int, p: int) -> None:
        """Copy row ``i`` of a prefilled cache (its ``p`` tokens are its last ``p`` filled slots)
        into the next free row, right-aligned."""
        if not self.rows:
            self._ensure_capacity(p + 1)
            self.cache.length = p
        elif p > self.cache.length:
            self._ensure_capacity(p + 1)
            self._pack(p)
        r, length = len(self.rows), self.cache.length
        end = own.length
        for layer, src in zip(self.cache.layers, own.layers):
            layer.k[r, :, length - p:length] = src.k[i, :, end - p:end]
            layer.v[r, :, length - p:length] = src.v[i, :, end - p:end]
        self.cache.key_mask[r, :length - p] = False
        self.cache.key_mask[r, length - p:length] = True
        self.cache.seen[r] = p

    def _remove(self, i: int) -> None:
        """Drop row ``i``: the last active row moves into its place."""
        last = len(self.rows) - 1
        if i != last:
            cache, length = self.cache, self.cache.length
            for layer in cache.layers:
                layer.k[i, :, :length] = layer.k[last, :, :length]
                layer.v[i, :, :length] = layer.v[last, :, :length]
            cache.key_mask[i, :length] = cache.key_mask[last, :length]
            cache.seen[i] = cache.seen[last]
            self.rows[i] = self.rows[last]
        self.rows.pop()
        if not self.rows:
            self.cache.length = 0

    def _drop_finished(self) -> None:
        now = time.monotonic()
        for i in range(len(self.rows) - 1, -1, -1):
            req = self.rows[i].request
            if req.cancelled.is_set():
                req.events.put(("done", "cancelled"))
                self._remove(i)
            elif req.deadline is not None and now > req.deadline:
                req.events.put(("done", "length"))
                self._remove(i)

    def _step(self) -> None:
        """One decode step of every active row."""
        n = len(self.rows)
        if self.cache.length >= self.cache.max_length:            # out of slots: pack, else grow
            widest = int(self.cache.seen[:n].max())
            if widest >= self.cache.max_length:
                self._ensure_capacity(widest + 1)
            self._pack(widest)
        view = self.cache.rows(n)
        ids = np.asarray([[row.last] for row in self.rows], dtype=np.int64)          # [n, 1]
        if self.plan is not None and self.plan.fits(view):
            logits = self.plan.step(ids[:, 0], view)                                  # [n, V]
        else:
            logits = self.model(ids, cache=view)                                      # [n, 1, V]
            logits = np.asarray(logits.numpy() if hasattr(logits, "numpy") else logits)[:, -1]   # [n, V]
        self.cache.length = view.length
        self.steps += 1
        for i in range(n - 1, -1, -1):
            if self._pick(self.rows[i], logits[i:i + 1]):
                self._remove(i)
