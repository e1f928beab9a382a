"""Generation settings: :class:`GenerationConfig` and its ``generation_config.json`` I/O.

What to generate (greedy, sampling with temperature / top-k / top-p / min-p, repetition
penalty, EOS ids, stop strings, beam search) as one frozen, validated dataclass, and the
translations to and from transformers' ``generation_config.json`` and a model config's EOS / pad
ids. How a token is then picked is axon_llm/sampling.py; the loop is axon_llm/generation.py.

Layering: errors <- compat (the crate's builders, a mixin) <- this module <- sampling <- generation.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import numpy as np

from axon_llm.compat import CrateBuilders
from axon_llm.errors import GenerationError

__all__ = ["GenerationConfig", "resolve_generation_config", "generation_config_from_model_config",
           "generation_config_from_dict", "generation_config_to_dict", "model_generation_config",
           "DEFAULT_MAX_NEW_TOKENS", "TRANSFORMERS_DEFAULT_TOP_K"]

DEFAULT_MAX_NEW_TOKENS = 24
#: transformers' ``GenerationConfig.top_k`` default; applies when a generation_config.json samples
TRANSFORMERS_DEFAULT_TOP_K = 50
#: generation_config.json keys read here (transformers' names; the rest, e.g. max_length, is ignored)
_HF_SAMPLING_KEYS = ("do_sample", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                     "max_new_tokens", "num_beams", "length_penalty", "early_stopping", "stop_strings")


@dataclass(frozen=True)
class GenerationConfig(CrateBuilders):
    """How to pick tokens: greedy, sampling (temperature / top-k / top-p / min-p) or beam search.

    Fields use transformers' names; the Rust crate's constructors and ``with_*`` builders
    (``GenerationConfig.top_k_sampling(40, 0.8).with_max_tokens(64)``) come from
    :class:`~axon_llm.compat.CrateBuilders`. Each builder returns a new config, and every config
    is validated when it is made, so a bad value raises :class:`GenerationError` where it was
    written rather than deep inside the loop.

    ``temperature == 0`` means greedy even when ``do_sample`` is set (llama.cpp's habit).
    ``eos_token_ids`` is a list: generation of a row stops at the first of any of them.
    ``stop_strings`` need a tokenizer to decode with (see ``generate(..., tokenizer=...)``).
    """

    max_new_tokens: int = 50
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    do_sample: bool = True
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    seed: int | None = None
    stop_strings: tuple[str, ...] = ()
    frequency_penalty: float = 0.0          # OpenAI's penalties on the generated tokens (sampling.py)
    presence_penalty: float = 0.0

    def __post_init__(self):
        # lists are accepted for convenience and stored as tuples so the config stays hashable
        eos = self.eos_token_ids
        if isinstance(eos, (int, np.integer)):
            eos = (eos,)
        object.__setattr__(self, "eos_token_ids", tuple(int(e) for e in (eos or ())))
        stops = self.stop_strings
        if isinstance(stops, str):
            stops = (stops,)
        object.__setattr__(self, "stop_strings", tuple(stops or ()))
        self.validate()

    # -- checks ---------------------------------------------------------------------------
    @property
    def is_greedy(self) -> bool:
        """True when the next token is always the argmax (no randomness)."""
        return not self.do_sample or self.temperature == 0.0

    def validate(self) -> None:
        """Raise :class:`GenerationError` naming the first setting that cannot work."""

        def bad(msg):
            raise GenerationError(f"invalid generation setting: {msg}")

        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

        if not is_int(self.max_new_tokens) or self.max_new_tokens < 0:
            bad(f"max_new_tokens must be an integer >= 0, got {self.max_new_tokens!r}")
        if not is_num(self.temperature) or not math.isfinite(self.temperature) or self.temperature < 0:
            bad(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if self.top_k is not None and (not is_int(self.top_k) or self.top_k < 1):
            bad(f"top_k must be an integer >= 1 (or None), got {self.top_k!r}")
        if self.top_p is not None and (not is_num(self.top_p) or not 0.0 < self.top_p <= 1.0):
            bad(f"top_p must be in (0, 1] (or None), got {self.top_p!r}")
        if self.min_p is not None and (not is_num(self.min_p) or not 0.0 <= self.min_p <= 1.0):
            bad(f"min_p must be in [0, 1] (or None), got {self.min_p!r}")
        if (not is_num(self.repetition_penalty) or not math.isfinite(self.repetition_penalty)
                or self.repetition_penalty <= 0):
            bad(f"repetition_penalty must be a finite number > 0, got {self.repetition_penalty!r}")
        if any(e < 0 for e in self.eos_token_ids):
            bad(f"eos_token_ids must be >= 0, got {list(self.eos_token_ids)}")
        if self.pad_token_id is not None and (not is_int(self.pad_token_id) or self.pad_token_id < 0):
            bad(f"pad_token_id must be an integer >= 0 (or None), got {self.pad_token_id!r}")
        if not is_int(self.num_beams) or self.num_beams < 1:
            bad(f"num_beams must be an integer >= 1, got {self.num_beams!r}")
        if self.num_beams > 1 and self.do_sample:
            bad("beam search with sampling is not supported: use do_sample=False with num_beams > 1")
        if not is_num(self.length_penalty) or not math.isfinite(self.length_penalty):
            bad(f"length_penalty must be a finite number, got {self.length_penalty!r}")
        if self.early_stopping not in (True, False, "never"):
            bad(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if self.seed is not None and not is_int(self.seed):
            bad(f"seed must be an integer (or None), got {self.seed!r}")
        if any(not isinstance(s, str) or s == "" for s in self.stop_strings):
            bad(f"stop_strings must be non-empty strings, got {list(self.stop_strings)}")
        for name in ("frequency_penalty", "presence_penalty"):
            v = getattr(self, name)
            if not is_num(v) or not -2.0 <= v <= 2.0:      # OpenAI's range
                bad(f"{name} must be a number in [-2, 2], got {v!r}")

    @property
    def has_openai_penalties(self) -> bool:
        """True when a frequency or presence penalty is set (they need the generated ids)."""
        return self.frequency_penalty != 0.0 or self.presence_penalty != 0.0

    @property
    def fill_token_id(self) -> int:
        """The id that pads rows after they finish: pad, else first EOS, else 0."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        return self.eos_token_ids[0] if self.eos_token_ids else 0


def resolve_generation_config(generation_config: GenerationConfig | None = None, **overrides) -> GenerationConfig:
    """The config a call means: ``generation_config`` (default: greedy, 24 new tokens) with every
    keyword that is not None written over it (as transformers' ``generate(**kwargs)``).

    ``eos_token_id`` (an int or a list) becomes ``eos_token_ids``; ``stop_strings`` may be one string.
    """
    if generation_config is None:
        cfg = GenerationConfig(max_new_tokens=DEFAULT_MAX_NEW_TOKENS, do_sample=False)
    elif isinstance(generation_config, GenerationConfig):
        cfg = generation_config
    else:
        raise GenerationError(f"generation_config must be a GenerationConfig, got {type(generation_config).__name__}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "eos_token_id" in changes:
        eos = changes.pop("eos_token_id")
        changes["eos_token_ids"] = tuple(int(e) for e in np.atleast_1d(eos).tolist())
    if isinstance(changes.get("stop_strings"), str):
        changes["stop_strings"] = (changes["stop_strings"],)
    try:
        return GenerationConfig(**{**cfg.__dict__, **changes})
    except TypeError as e:   # an unknown keyword
        raise GenerationError(f"unknown generation setting: {e}") from None


def _eos_ids(value) -> tuple[int, ...]:
    """An ``eos_token_id`` as HF writes it (None, an int or a list) -> a tuple of ids."""
    if value is None:
        return ()
    return tuple(int(e) for e in np.atleast_1d(np.asarray(value, dtype=np.int64)).tolist())


def generation_config_from_model_config(config) -> GenerationConfig:
    """The default settings of a model, as transformers' ``GenerationConfig.from_model_config``:
    greedy, ``max_new_tokens=24``, EOS / pad ids from the model config (``eos_token_id`` may
    be an int or a list). A config without them (or no config) gives no EOS."""
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    pad = getattr(config, "pad_token_id", None) if config is not None else None
    try:
        return GenerationConfig(max_new_tokens=DEFAULT_MAX_NEW_TOKENS, do_sample=False, eos_token_ids=_eos_ids(eos),
                                pad_token_id=None if pad is None else int(pad))
    except (GenerationError, TypeError, ValueError) as e:
        raise GenerationError(f"the model config's eos_token_id={eos!r} / pad_token_id={pad!r} "
                              f"cannot be used for generation: {e}") from None


def generation_config_from_dict(d: dict, base: GenerationConfig | None = None) -> GenerationConfig:
    """``base`` (default: greedy, 24 new tokens) overridden by a ``generation_config.json`` dict.

    Read as transformers does: ``eos_token_id`` (int, list or null), ``pad_token_id`` and the
    sampling defaults ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``min_p``,
    ``repetition_penalty``, ``max_new_tokens``, ``num_beams``, ``length_penalty``,
    ``early_stopping``, ``stop_strings``. A key that is absent leaves ``base`` as it is, except
    that sampling without a ``top_k`` uses transformers' default 50 and ``do_sample`` absent
    means greedy; ``top_k: 0`` means no top-k (transformers' convention). ``bos_token_id`` and
    transformers-only keys (``max_length``, ``transformers_version`` ...) play no part in decoding
    here and are ignored. Token ids that are not ids raise :class:`GenerationError`; sampling
    settings that cannot be used here (``temperature: -1``, beam search with sampling) are
    dropped with a warning that names them, so the model still loads.
    """
    if not isinstance(d, dict):
        raise GenerationError(f"generation_config.json must hold a JSON object, got {type(d).__name__}")
    cfg = base if base is not None else GenerationConfig(max_new_tokens=DEFAULT_MAX_NEW_TOKENS, do_sample=False)
    changes: dict = {}
    try:
        if "eos_token_id" in d:
            changes["eos_token_ids"] = _eos_ids(d["eos_token_id"])
        if "pad_token_id" in d:
            changes["pad_token_id"] = None if d["pad_token_id"] is None else int(d["pad_token_id"])
    except (TypeError, ValueError, OverflowError):
        raise GenerationError(f"generation_config.json: eos_token_id={d.get('eos_token_id')!r} / "
                              f"pad_token_id={d.get('pad_token_id')!r} are not token ids") from None
    try:
        cfg = GenerationConfig(**{**cfg.__dict__, **changes})
    except GenerationError as e:
        raise GenerationError(f"generation_config.json: {e}") from None
    sampling = {key: d[key] for key in _HF_SAMPLING_KEYS if key in d and d[key] is not None}
    sampling.setdefault("do_sample", False)
    if sampling["do_sample"] and "top_k" not in sampling:
        sampling["top_k"] = TRANSFORMERS_DEFAULT_TOP_K
    if sampling.get("top_k") == 0:
        sampling["top_k"] = None
    if isinstance(sampling.get("stop_strings"), str):
        sampling["stop_strings"] = (sampling["stop_strings"],)
    try:
        if not isinstance(sampling["do_sample"], bool):
            raise GenerationError(f"do_sample must be true or false, got {sampling['do_sample']!r}")
        return GenerationConfig(**{**cfg.__dict__, **sampling})
    except GenerationError as e:
        # transformers loads such a file and fails only when generating; here the model loads,
        # keeps the file's token ids, and says which sampling default it cannot use
        warnings.warn(f"generation_config.json: {e}; its sampling settings are ignored", stacklevel=2)
        return cfg


def generation_config_to_dict(cfg: GenerationConfig, model_config=None) -> dict:
    """The ``generation_config.json`` for ``cfg``: ``{}`` when ``cfg`` is what ``model_config``
    implies anyway (then no file is needed), else the token ids plus every setting that differs
    from transformers' defaults, so that :func:`generation_config_from_dict` over the model
    config's defaults gives ``cfg`` back (``seed`` is not a transformers setting and is not kept)."""
    implied = generation_config_from_model_config(model_config)
    if dataclasses.replace(cfg, seed=None) == implied:
        return {}
    eos = cfg.eos_token_ids
    out: dict = {"bos_token_id": getattr(model_config, "bos_token_id", None),
                 "eos_token_id": None if not eos else eos[0] if len(eos) == 1 else list(eos),
                 "pad_token_id": cfg.pad_token_id}
    if out["bos_token_id"] is None:             # eos / pad stay even when null: null overrides config.json
        del out["bos_token_id"]
    if cfg.do_sample:
        out["do_sample"] = True
    if cfg.max_new_tokens != DEFAULT_MAX_NEW_TOKENS:
        out["max_new_tokens"] = cfg.max_new_tokens
    defaults = {"temperature": 1.0, "top_p": None, "min_p": None, "repetition_penalty": 1.0, "num_beams": 1,
                "length_penalty": 1.0, "early_stopping": False, "stop_strings": ()}
    for key, default in defaults.items():
        value = getattr(cfg, key)
        if value != default:
            out[key] = list(value) if isinstance(value, tuple) else value
    if cfg.do_sample and cfg.top_k != TRANSFORMERS_DEFAULT_TOP_K:
        out["top_k"] = 0 if cfg.top_k is None else cfg.top_k     # absent would mean transformers' 50
    elif not cfg.do_sample and cfg.top_k is not None:
        out["top_k"] = cfg.top_k
    return out


def model_generation_config(model) -> GenerationConfig:
    """``model.generation_config`` when the model has one, else the defaults its config implies."""
    cfg = getattr(model, "generation_config", None)
    if isinstance(cfg, GenerationConfig):
        return cfg
    return generation_config_from_model_config(getattr(model, "config", None))
