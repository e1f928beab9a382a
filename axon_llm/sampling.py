"""Choosing the next token: logits processors, sampling and beam search.

The settings they read are a :class:`~axon_llm.generation_config.GenerationConfig` (its own
module, with the generation_config.json I/O); it is re-exported here.

Everything here works on NumPy logits and token ids, with no model in sight, so each
rule can be read and tested on its own. The one ``generate`` loop (generation.py) feeds
a model's last-position logits in and gets token ids out.

Symbols
-------
B  batch size (number of prompts)           V  vocabulary size
N  number of beams                          K  candidates kept per beam-search step (2N or more)
L  length of a sequence (prompt + new tokens)

The processors follow HuggingFace transformers' semantics exactly, in transformers'
order: repetition penalty, then temperature, top-k, top-p, min-p; OpenAI's frequency and
presence penalties (on the generated tokens) come right after the repetition penalty. Greedy decoding is
the argmax of the processed logits; beam search reproduces transformers' vectorised
``_beam_search`` (scores are accumulated log-probabilities, finished hypotheses are
ranked by ``score / generated_length ** length_penalty``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from axon_llm.errors import GenerationError
from axon_llm.generation_config import GenerationConfig

# transformers masks impossible beams with this score; keeping the same constant keeps
# the tie-breaking between masked candidates identical.
_MASKED = -1.0e9


# ----------------------------------------------------------------------------------------
# Logits processors (transformers' semantics). Each takes logits [V] or [B, V] and returns
# a new float array of the same shape; the input is never modified.
# ----------------------------------------------------------------------------------------
def _as_2d(logits) -> tuple[np.ndarray, bool]:
    arr = np.asarray(logits)
    if arr.ndim not in (1, 2):
        raise GenerationError(f"logits must have shape [V] or [B, V], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    return np.array(arr[None] if arr.ndim == 1 else arr, copy=True), arr.ndim == 1  # [B, V]


def _back(arr2d: np.ndarray, was_1d: bool) -> np.ndarray:
    return arr2d[0] if was_1d else arr2d


def _softmax(x: np.ndarray) -> np.ndarray:
    """Row softmax in float64 (masked -inf entries get probability 0)."""
    x = x.astype(np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(x - m)
    return e / np.sum(e, axis=-1, keepdims=True)


def log_softmax(logits) -> np.ndarray:
    """``log(softmax(logits))`` over the last axis, in the logits' float dtype."""
    x = np.asarray(logits)
    x64 = x.astype(np.float64)
    m = np.max(x64, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    out = x64 - m - np.log(np.sum(np.exp(x64 - m), axis=-1, keepdims=True))
    return out.astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32)


def _id_rows(token_ids, arr: np.ndarray, was_1d: bool, what: str) -> list[np.ndarray]:
    """One int64 id array per logit row of ``arr [B, V]``, ids outside ``[0, V)`` dropped."""
    rows = [token_ids] if was_1d else list(token_ids)
    if len(rows) != arr.shape[0]:
        raise GenerationError(f"{what} got {len(rows)} id rows for {arr.shape[0]} logit rows")
    out = []
    for ids in rows:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        out.append(ids[(ids >= 0) & (ids < arr.shape[1])])
    return out


def apply_repetition_penalty(logits, seen_token_ids, penalty: float) -> np.ndarray:
    """Penalise tokens already seen: positive logits are divided, negative ones multiplied.

    ``seen_token_ids`` is one id sequence ([V] logits) or one per row ([B, V] logits): the
    prompt and the tokens generated so far, as in transformers. Each distinct id is
    penalised once however often it occurs; ids outside ``[0, V)`` are ignored.
    """
    arr, was_1d = _as_2d(logits)
    if penalty == 1.0:
        return _back(arr, was_1d)
    for b, ids in enumerate(_id_rows(seen_token_ids, arr, was_1d, "repetition penalty")):
        ids = np.unique(ids)
        score = arr[b, ids]
        arr[b, ids] = np.where(score < 0, score * penalty, score / penalty)
    return _back(arr, was_1d)


def apply_frequency_presence_penalty(logits, generated_token_ids, frequency: float, presence: float) -> np.ndarray:
    """OpenAI's penalties: ``logit[t] -= count[t] * frequency + (count[t] > 0) * presence``.

    ``count[t]`` is how often token ``t`` occurs among the *generated* tokens (not the prompt):
    one id sequence for ``[V]`` logits or one per row for ``[B, V]``. Negative values reward
    repeats. Ids outside ``[0, V)`` are ignored.
    """
    arr, was_1d = _as_2d(logits)
    if frequency == 0.0 and presence == 0.0:
        return _back(arr, was_1d)
    V = arr.shape[1]
    for b, ids in enumerate(_id_rows(generated_token_ids, arr, was_1d, "frequency/presence penalty")):
        counts = np.bincount(ids, minlength=V)[:V]                                       # [V]
        arr[b] -= (counts * frequency + (counts > 0) * presence).astype(arr.dtype)
    return _back(arr, was_1d)


def apply_temperature(logits, temperature: float) -> np.ndarray:
    """``logits / temperature`` (temperature 1 or 0 leaves the logits as they are)."""
    arr, was_1d = _as_2d(logits)
    if temperature not in (0.0, 1.0):
        arr = arr / np.asarray(temperature, dtype=arr.dtype)
    return _back(arr, was_1d)


def apply_top_k(logits, k: int | None) -> np.ndarray:
    """Set to ``-inf`` every logit below the k-th largest of its row (ties at the k-th are kept)."""
    arr, was_1d = _as_2d(logits)
    if k is None or k >= arr.shape[1]:
        return _back(arr, was_1d)
    kth = np.partition(arr, arr.shape[1] - k, axis=1)[:, arr.shape[1] - k][:, None]  # [B, 1]
    arr[arr < kth] = -np.inf
    return _back(arr, was_1d)


def apply_top_p(logits, p: float | None, min_tokens_to_keep: int = 1) -> np.ndarray:
    """Nucleus filtering: keep the most likely tokens whose cumulative probability reaches ``p``.

    As transformers: sort ascending, drop tokens whose ascending cumulative probability is
    ``<= 1 - p``; the most likely ``min_tokens_to_keep`` tokens always stay.
    """
    arr, was_1d = _as_2d(logits)
    if p is None or p >= 1.0:
        return _back(arr, was_1d)
    order = np.argsort(arr, axis=1, kind="stable")                       # [B, V] ascending
    sorted_logits = np.take_along_axis(arr, order, axis=1)
    cumulative = np.cumsum(_softmax(sorted_logits), axis=1)
    remove_sorted = cumulative <= (1.0 - p)
    remove_sorted[:, -min_tokens_to_keep:] = False
    remove = np.zeros_like(remove_sorted)
    np.put_along_axis(remove, order, remove_sorted, axis=1)
    arr[remove] = -np.inf
    return _back(arr, was_1d)


def apply_min_p(logits, min_p: float | None, min_tokens_to_keep: int = 1) -> np.ndarray:
    """Drop tokens whose probability is below ``min_p`` times the row's largest probability."""
    arr, was_1d = _as_2d(logits)
    if min_p is None or min_p == 0.0:
        return _back(arr, was_1d)
    probs = _softmax(arr)
    remove = probs < min_p * probs.max(axis=1, keepdims=True)
    keep = np.argsort(-probs, axis=1, kind="stable")[:, :min_tokens_to_keep]
    np.put_along_axis(remove, keep, False, axis=1)
    arr[remove] = -np.inf
    return _back(arr, was_1d)


def process_logits(logits, config: GenerationConfig, seen_token_ids=None, generated_token_ids=None) -> np.ndarray:
    """All processors of ``config`` in transformers' order; the sampling warpers
    (temperature, top-k, top-p, min-p) only when sampling. ``seen_token_ids`` (prompt and
    generated ids) feed the repetition penalty, ``generated_token_ids`` OpenAI's penalties."""
    out = np.asarray(logits)
    if config.repetition_penalty != 1.0:
        if seen_token_ids is None:
            raise GenerationError("repetition_penalty needs the token ids seen so far")
        out = apply_repetition_penalty(out, seen_token_ids, config.repetition_penalty)
    if config.has_openai_penalties:
        if generated_token_ids is None:
            raise GenerationError("frequency_penalty / presence_penalty need the generated token ids")
        out = apply_frequency_presence_penalty(out, generated_token_ids, config.frequency_penalty,
                                               config.presence_penalty)
    if not config.is_greedy:
        out = apply_temperature(out, config.temperature)
        out = apply_top_k(out, config.top_k)
        out = apply_top_p(out, config.top_p)
        out = apply_min_p(out, config.min_p)
    return out


# ----------------------------------------------------------------------------------------
# Picking one token
# ----------------------------------------------------------------------------------------
class TextGenerator:
    """Turns a row of logits into the next token id, as the crate's ``TextGenerator``.

    It owns the sampling RNG (seeded by ``config.seed``), so two generators made from the
    same seeded config pick the same tokens. ``get_next_token`` works on one row;
    ``next_tokens`` on a batch.
    """

    def __init__(self, config: GenerationConfig | None = None):
        self.config = config if config is not None else GenerationConfig.greedy()
        self.rng = np.random.default_rng(self.config.seed)

    # the crate's individual steps, each returning new logits
    def apply_temperature(self, logits) -> np.ndarray:
        """``logits / temperature``."""
        return apply_temperature(logits, self.config.temperature)

    def apply_repetition_penalty(self, logits, generated_tokens) -> np.ndarray:
        """transformers' repetition penalty over ``generated_tokens``."""
        return apply_repetition_penalty(logits, generated_tokens, self.config.repetition_penalty)

    def apply_top_k(self, logits) -> np.ndarray:
        """Keep the ``top_k`` largest logits."""
        return apply_top_k(logits, self.config.top_k)

    def apply_top_p(self, logits) -> np.ndarray:
        """Nucleus filtering with ``top_p``."""
        return apply_top_p(logits, self.config.top_p)

    def apply_min_p(self, logits) -> np.ndarray:
        """Min-p filtering with ``min_p``."""
        return apply_min_p(logits, self.config.min_p)

    @staticmethod
    def argmax(logits) -> int:
        """Index of the largest logit (the first one on ties, as NumPy and torch)."""
        return int(np.argmax(np.asarray(logits)))

    def sample(self, logits) -> int:
        """Draw one token from ``softmax(logits)`` (argmax when greedy)."""
        return int(self._pick(np.asarray(logits)[None])[0])

    def _pick(self, logits2d: np.ndarray) -> np.ndarray:
        if self.config.is_greedy:
            return np.argmax(logits2d, axis=1)
        probs = _softmax(logits2d)                                          # [B, V]
        cdf = np.cumsum(probs, axis=1)
        u = self.rng.random(logits2d.shape[0])[:, None] * cdf[:, -1:]       # [B, 1]
        picked = np.sum(cdf <= u, axis=1)                                   # first index with cdf > u
        # never step past the last token of nonzero probability (the float edge u == cdf[-1])
        last_nonzero = probs.shape[1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=1)
        return np.minimum(picked, last_nonzero)

    def get_next_token(self, logits, generated_tokens: Sequence[int] = ()) -> int:
        """Process one row of logits [V] and return the next token id.

        ``generated_tokens`` are the ids seen so far (the repetition penalty uses them).
        """
        arr = np.asarray(logits)
        if arr.ndim != 1:
            raise GenerationError(f"get_next_token takes one row of logits [V], got shape {arr.shape}")
        return int(self.next_tokens(arr[None], [generated_tokens])[0])

    def next_tokens(self, logits, seen_token_ids=None, generated_token_ids=None) -> np.ndarray:
        """Process a batch of logits [B, V] and return the next ids [B] (int64)."""
        arr = np.asarray(logits)
        if arr.ndim != 2:
            raise GenerationError(f"next_tokens takes logits [B, V], got shape {arr.shape}")
        if not np.all(np.isfinite(np.max(arr, axis=1))):
            raise GenerationError("the model produced NaN or infinite logits; cannot pick a token")
        processed = process_logits(arr, self.config, seen_token_ids, generated_token_ids)
        return self._pick(processed).astype(np.int64)

    def should_stop(self, token: int) -> bool:
        """True when ``token`` is one of the EOS ids."""
        return int(token) in self.config.eos_token_ids


# ----------------------------------------------------------------------------------------
# Log-probabilities of the chosen tokens
# ----------------------------------------------------------------------------------------
@dataclass
class StepLogprobs:
    """One step's log-probabilities: the chosen ``token_ids [B]`` and their ``logprobs [B]``,
    plus the ``top_ids [B, k]`` / ``top_logprobs [B, k]`` most likely tokens (k may be 0)."""

    token_ids: np.ndarray
    logprobs: np.ndarray
    top_ids: np.ndarray
    top_logprobs: np.ndarray


def token_logprobs(logits, chosen, top: int = 0) -> StepLogprobs:
    """Log-probabilities of ``chosen [B]`` under ``log_softmax(logits [B, V])`` and the ``top``
    most likely tokens (descending; the lower id first on ties). Pass the model's raw logits for
    the model's distribution (what vLLM reports) or processed ones for the sampled distribution."""
    arr = np.asarray(logits)
    if arr.ndim != 2:
        raise GenerationError(f"token_logprobs takes logits [B, V], got shape {arr.shape}")
    lp = log_softmax(arr.astype(np.float32))                                # [B, V]
    chosen = np.asarray(chosen, dtype=np.int64).reshape(-1)
    picked = lp[np.arange(lp.shape[0]), chosen]                             # [B]
    top = max(0, min(int(top), lp.shape[1]))
    top_ids = _topk_desc(lp, top) if top else np.zeros((lp.shape[0], 0), np.int64)   # [B, k]
    return StepLogprobs(chosen.copy(), picked, top_ids, np.take_along_axis(lp, top_ids, axis=1))


class LogprobsRecorder:
    """Pass to ``generate(..., logprobs=LogprobsRecorder(top=k))``: after the call ``steps``
    holds one :class:`StepLogprobs` per generated token (the model's distribution)."""

    def __init__(self, top: int = 0):
        if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or not 0 <= top <= 20:
            raise GenerationError(f"top logprobs must be an integer in [0, 20], got {top!r}")
        self.top = int(top)
        self.steps: list[StepLogprobs] = []

    def record(self, logits, chosen) -> None:
        """Add the step that picked ``chosen [B]`` from the raw ``logits [B, V]``."""
        self.steps.append(token_logprobs(logits, chosen, self.top))


# ----------------------------------------------------------------------------------------
# Beam search (transformers' vectorised algorithm, on NumPy)
# ----------------------------------------------------------------------------------------
def _topk_desc(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries of each row, largest first (lower index first on ties)."""
    return np.argsort(-x, axis=-1, kind="stable")[..., :k]


def _gather_beams(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``x[b, idx[b, j], ...]`` for x [B, N, ...] and idx [B, K] -> [B, K, ...]."""
    return x[np.arange(x.shape[0])[:, None], idx]


class BeamSearch:
    """State of a batched beam search; the loop feeds it log-probabilities one step at a time.

    Usage (what generation.py does)::

        bs = BeamSearch(config, prompt_ids, max_length)     # prompt_ids [B, L0]
        model sees bs.running_ids()  (flattened [B*N, cur_len]; feed only the last column once cached)
        while not bs.done:
            reorder = bs.step(log_probs)                    # log_probs [B*N, V] (already processed)
            reorder the model's cache rows by `reorder`     # [B*N] indices into the previous rows
        ids = bs.finalize()                                 # [B, L0 + generated]

    Like transformers: every beam starts from the prompt, only the first beam has score 0 so
    the first step does not pick the same token N times; each step keeps the top K = max(2,
    1 + #eos) * N continuations over all N x V candidates, a continuation that ends in EOS
    or reaches ``max_length`` becomes a finished hypothesis (scored ``logprob / new_len **
    length_penalty``) when it is among the top N, and the best N unfinished ones continue.
    """

    def __init__(self, config: GenerationConfig, prompt_ids, max_length: int):
        prompt = np.asarray(prompt_ids, dtype=np.int64)
        if prompt.ndim != 2:
            raise GenerationError(f"beam search prompt must be [B, T], got shape {prompt.shape}")
        self.config = config
        self.batch_size, self.prompt_len = prompt.shape
        self.num_beams = N = config.num_beams
        self.max_length = int(max_length)
        self.eos = np.asarray(config.eos_token_ids, dtype=np.int64)
        self.beams_to_keep = max(2, 1 + len(self.eos)) * N
        self.top_num_beam_mask = np.arange(self.beams_to_keep) < N             # [K]
        B, L = self.batch_size, self.max_length
        # transformers fills with `pad_token_id or eos_token_id[0]`: a pad id of 0 falls through
        # to the first EOS id. Kept as is, so finished rows read the same.
        fill = config.pad_token_id or (config.eos_token_ids[0] if config.eos_token_ids else 0)
        self.running_sequences = np.full((B, N, L), fill, dtype=np.int64)      # [B, N, L]
        self.running_sequences[:, :, : self.prompt_len] = prompt[:, None, :]
        self.sequences = self.running_sequences.copy()
        self.running_beam_scores = np.zeros((B, N), dtype=np.float32)
        self.running_beam_scores[:, 1:] = _MASKED
        self.beam_scores = np.full((B, N), _MASKED, dtype=np.float32)
        self.is_sent_finished = np.zeros((B, N), dtype=bool)
        self.early_stop_unsatisfied = np.ones((B, 1), dtype=bool)
        self.running_beam_indices = np.full((B, N, L - self.prompt_len), -1, dtype=np.int64)
        self.beam_indices = self.running_beam_indices.copy()
        self.cur_len = self.prompt_len
        self.done = self.cur_len >= self.max_length

    def running_ids(self) -> np.ndarray:
        """The running sequences flattened to [B*N, cur_len] (the model's next input rows)."""
        B, N = self.batch_size, self.num_beams
        return self.running_sequences[:, :, : self.cur_len].reshape(B * N, self.cur_len)

    def _hits_stop(self, seqs: np.ndarray) -> np.ndarray:
        """[B, K, cur_len+1] -> [B, K] True where the newest token ends the hypothesis."""
        last = seqs[:, :, -1]
        hit = np.isin(last, self.eos) if self.eos.size else np.zeros(last.shape, dtype=bool)
        if seqs.shape[-1] >= self.max_length:
            hit = np.ones_like(hit)
        return hit

    def step(self, log_probs) -> np.ndarray:
        """Advance one token. ``log_probs`` [B*N, V] are the processed next-token log-probs of
        :meth:`running_ids`. Returns [B*N] row indices: row i of the next step continues row
        ``reorder[i]`` of this step (use it to reorder the KV cache)."""
        B, N, K = self.batch_size, self.num_beams, self.beams_to_keep
        lp = np.asarray(log_probs, dtype=np.float32)
        V = lp.shape[-1]
        cur = self.cur_len
        acc = lp.reshape(B, N, V) + self.running_beam_scores[:, :, None]       # [B, N, V]
        acc = acc.reshape(B, N * V)                                            # [B, N*V]

        # c. the top K continuations over all beams
        topk_idx = _topk_desc(acc, K)                                          # [B, K]
        topk_log_probs = np.take_along_axis(acc, topk_idx, axis=1)             # [B, K]
        topk_beam = topk_idx // V
        topk_ids = topk_idx % V
        topk_sequences = _gather_beams(self.running_sequences, topk_beam)     # [B, K, L]
        topk_sequences[:, :, cur] = topk_ids
        topk_beam_indices = _gather_beams(self.running_beam_indices, topk_beam)
        topk_beam_indices[:, :, cur - self.prompt_len] = topk_beam + np.arange(B)[:, None] * N

        # d. which continuations finish here
        hits = self._hits_stop(topk_sequences[:, :, : cur + 1])               # [B, K]

        # e. the best N unfinished continuations keep running
        running_lp = topk_log_probs + hits.astype(np.float32) * np.float32(_MASKED)
        nxt = _topk_desc(running_lp, N)                                        # [B, N]
        self.running_sequences = _gather_beams(topk_sequences, nxt)
        self.running_beam_scores = np.take_along_axis(running_lp, nxt, axis=1)
        self.running_beam_indices = _gather_beams(topk_beam_indices, nxt)

        # f. merge the newly finished top-N continuations into the finished hypotheses
        just_finished = hits & self.top_num_beam_mask[None, :]
        gen_len = cur + 1 - self.prompt_len
        scored = topk_log_probs / np.float32(gen_len ** self.config.length_penalty)
        full = np.all(self.is_sent_finished, axis=-1, keepdims=True) & bool(self.config.early_stopping)
        scored = scored + full.astype(np.float32) * np.float32(_MASKED)
        scored = scored + (~self.early_stop_unsatisfied).astype(np.float32) * np.float32(_MASKED)
        scored = scored + (~just_finished).astype(np.float32) * np.float32(_MASKED)
        merged_scores = np.concatenate([self.beam_scores, scored], axis=1)     # [B, N+K]
        best = _topk_desc(merged_scores, N)
        self.sequences = _gather_beams(np.concatenate([self.sequences, topk_sequences], axis=1), best)
        self.beam_scores = np.take_along_axis(merged_scores, best, axis=1)
        self.beam_indices = _gather_beams(np.concatenate([self.beam_indices, topk_beam_indices], axis=1), best)
        self.is_sent_finished = np.take_along_axis(
            np.concatenate([self.is_sent_finished, just_finished], axis=1), best, axis=1)

        reorder = self.running_beam_indices[:, :, cur - self.prompt_len].reshape(B * N)

        # g. can anything still improve?
        self.cur_len = cur + 1
        lp_ = self.config.length_penalty
        early = self.config.early_stopping
        hyp_len = (self.max_length if (early == "never" and lp_ > 0) else self.cur_len) - self.prompt_len
        best_running = self.running_beam_scores[:, :1] / np.float32(hyp_len ** lp_)
        worst_finished = np.where(self.is_sent_finished,
                                  np.min(self.beam_scores, axis=1, keepdims=True), np.float32(_MASKED))
        self.early_stop_unsatisfied = self.early_stop_unsatisfied & np.any(
            best_running > worst_finished, axis=-1, keepdims=True)
        improvement_possible = bool(np.any(self.early_stop_unsatisfied))
        exists_open_beam = not (bool(np.all(self.is_sent_finished)) and early is True)
        valid_continuations = not bool(np.all(hits))
        self.done = not (improvement_possible and exists_open_beam and valid_continuations)
        return reorder.astype(np.int64)

    def finalize(self) -> np.ndarray:
        """The best hypothesis of each prompt, [B, prompt_len + longest generated], padded
        with the fill id (pad, else first EOS) after a hypothesis ended."""
        best_seq = self.sequences[:, 0, :]                                     # [B, L]
        generated = (self.beam_indices[:, 0, :] + 1).astype(bool).sum(axis=1)  # [B]
        out_len = self.prompt_len + int(generated.max(initial=0))
        return best_seq[:, :out_len].copy()

    @property
    def best_scores(self) -> np.ndarray:
        """Length-normalised score of each prompt's best hypothesis [B]."""
        return self.beam_scores[:, 0].copy()


__all__ = [
    "GenerationConfig", "TextGenerator", "BeamSearch",
    "apply_repetition_penalty", "apply_temperature", "apply_top_k", "apply_top_p", "apply_min_p",
    "apply_frequency_presence_penalty", "process_logits", "log_softmax",
    "StepLogprobs", "token_logprobs", "LogprobsRecorder",
]
