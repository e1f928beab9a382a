"""The Rust crate's API, kept so code written against it reads the same here.

Where each piece of that API lives, and why:

* :class:`CrateBuilders` — the crate's ``GenerationConfig`` constructors (``greedy()``,
  ``sampling(t)``, ``top_k_sampling(k, t)``, ``nucleus_sampling(p, t)``, ``beam_search(n)``)
  and ``with_*`` builders (``GenerationConfig.greedy().with_max_tokens(8)``). It is a mixin
  that :class:`~axon_llm.generation_config.GenerationConfig` inherits, so the dataclass
  module holds only the settings (transformers' field names) and their validation, while the
  crate-shaped spelling of the same settings lives here, in one place. A mixin (rather than
  free functions or a subclass) keeps ``axon_llm.GenerationConfig.greedy()`` and
  ``model.generation_config.with_max_tokens(8)`` working on every config the library makes.
* ``load_llama_from_hf`` / ``load_mistral_from_hf`` — the crate's loaders, which are
  ``axon_llm.from_pretrained`` plus a check of the class. They live in ``axon_llm.auto`` beside
  ``from_pretrained``, not here: this module sits *below*
  ``generation_config`` (whose class inherits the mixin), and models sit above that, so a loader
  wrapper here would close an import cycle (compat -> auto -> models -> generation_config ->
  compat).
* ``TextGenerator``'s per-step methods (``apply_temperature``, ``apply_top_k``, ...,
  ``get_next_token``) stay on the class in ``axon_llm.sampling``: each is a one-line call of a
  processor defined there, and a mixin here would have to import ``sampling``, which sits above
  ``generation_config`` and so above this module.

Every builder returns a new config (configs are frozen); the dataclass validates it on creation.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

__all__ = ["CrateBuilders"]


class CrateBuilders:
    """The crate's constructors and ``with_*`` builders, mixed into ``GenerationConfig`` (a frozen
    dataclass with transformers' field names: ``max_new_tokens``, ``temperature``, ``top_k`` ...)."""

    __slots__ = ()

    # -- the crate's constructors ---------------------------------------------------------
    @classmethod
    def greedy(cls) -> "CrateBuilders":
        """Always the most likely token."""
        return cls(do_sample=False)

    @classmethod
    def sampling(cls, temperature: float) -> "CrateBuilders":
        """Sample from ``softmax(logits / temperature)``."""
        return cls(do_sample=True, temperature=temperature)

    @classmethod
    def top_k_sampling(cls, k: int, temperature: float) -> "CrateBuilders":
        """Sample among the ``k`` most likely tokens."""
        return cls(do_sample=True, temperature=temperature, top_k=k)

    @classmethod
    def nucleus_sampling(cls, p: float, temperature: float) -> "CrateBuilders":
        """Sample among the smallest set of tokens whose probability mass reaches ``p``."""
        return cls(do_sample=True, temperature=temperature, top_p=p)

    @classmethod
    def beam_search(cls, num_beams: int) -> "CrateBuilders":
        """Keep the ``num_beams`` best partial sequences by total log-probability."""
        return cls(do_sample=False, num_beams=num_beams)

    # -- builders (each returns a new, validated config) ----------------------------------
    def _with(self, **changes) -> "CrateBuilders":
        return dataclasses.replace(self, **changes)

    def with_max_tokens(self, max_new_tokens: int) -> "CrateBuilders":
        """Set the number of new tokens to generate at most."""
        return self._with(max_new_tokens=max_new_tokens)

    def with_temperature(self, temperature: float) -> "CrateBuilders":
        """Set the softmax temperature (0 = greedy)."""
        return self._with(temperature=temperature)

    def with_top_k(self, k: int | None) -> "CrateBuilders":
        """Keep only the ``k`` most likely tokens before sampling (None = off)."""
        return self._with(top_k=k)

    def with_top_p(self, p: float | None) -> "CrateBuilders":
        """Nucleus filtering with mass ``p`` (None = off)."""
        return self._with(top_p=p)

    def with_min_p(self, p: float | None) -> "CrateBuilders":
        """Drop tokens less likely than ``p`` times the most likely one (None = off)."""
        return self._with(min_p=p)

    def with_repetition_penalty(self, penalty: float) -> "CrateBuilders":
        """Penalise every token already in the sequence (1.0 = off)."""
        return self._with(repetition_penalty=penalty)

    def with_eos_token(self, eos_token_id: int) -> "CrateBuilders":
        """Add one more end-of-sequence id (the crate's builder appends, so does this one)."""
        return self._with(eos_token_ids=self.eos_token_ids + (int(eos_token_id),))

    def with_eos_tokens(self, eos_token_ids: Iterable[int]) -> "CrateBuilders":
        """Replace the list of end-of-sequence ids."""
        return self._with(eos_token_ids=tuple(int(e) for e in eos_token_ids))

    def with_pad_token(self, pad_token_id: int | None) -> "CrateBuilders":
        """Id written after a row has finished (defaults to the first EOS id, else 0)."""
        return self._with(pad_token_id=pad_token_id)

    def with_seed(self, seed: int | None) -> "CrateBuilders":
        """Seed of the sampling RNG: the same seed gives the same tokens."""
        return self._with(seed=seed)

    def with_stop_strings(self, stop_strings: Iterable[str]) -> "CrateBuilders":
        """Stop a row once its decoded new text contains any of these strings."""
        return self._with(stop_strings=tuple(stop_strings))

    def with_num_beams(self, num_beams: int) -> "CrateBuilders":
        """Set the number of beams (1 = no beam search)."""
        return self._with(num_beams=num_beams)

    def with_length_penalty(self, length_penalty: float) -> "CrateBuilders":
        """Beam search ranks finished hypotheses by ``score / length ** length_penalty``."""
        return self._with(length_penalty=length_penalty)

    def with_early_stopping(self, early_stopping: bool) -> "CrateBuilders":
        """Beam search stops as soon as ``num_beams`` hypotheses have finished."""
        return self._with(early_stopping=early_stopping)

    def with_do_sample(self, do_sample: bool) -> "CrateBuilders":
        """Switch between sampling and greedy / plain beam search."""
        return self._with(do_sample=do_sample)
