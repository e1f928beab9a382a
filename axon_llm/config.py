"""The shared base of every model configuration, and the checks all of them use.

Each family's config sits beside its model (``LLaMAConfig`` in ``models/llama.py``,
``HydraConfig`` in ``models/hydra.py`` ...); this module holds what they share. Every config

* takes the field names of the matching ``transformers`` config class (``hidden_size``,
  ``num_key_value_heads``, ``rope_theta`` ...), so ``LLaMAConfig(**json.load(f))`` reads a
  ``config.json`` (unknown keys are kept in ``extra`` rather than rejected);
* rejects a configuration that cannot work when it is built (``ConfigError``), through the one
  copy of each check here (:func:`check_positive`, :func:`check_heads`, :func:`check_window`,
  :func:`check_rotary`, :func:`check_eps`, :func:`check_activation`, :func:`check_rope`);
* has the Rust crate's presets as classmethods (``LLaMAConfig.llama3_8b()``);
* counts its parameters with ``num_parameters()`` by arithmetic alone, no allocation.

RoPE settings are read from both config.json styles:

* transformers 4.x: ``"rope_theta": 10000.0, "rope_scaling": {"rope_type": "linear", "factor": 2.0}``
  (old files spell ``"type"`` instead of ``"rope_type"``);
* transformers 5.x: ``"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}``.

Both become ``rope_theta`` (a float) and ``rope_scaling`` (``None`` for plain RoPE, else a
dict with ``rope_type``), which is what :mod:`axon_llm.rope` reads.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from axon_llm.errors import ConfigError, ModelFormatError, UnsupportedError

#: rope_scaling types implemented by axon_llm.rope
SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3")
#: activations the blocks know by name (HF ACT2FN spelling)
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "silu", "swish", "relu")


def normalize_rope(d: dict[str, Any], default_theta: float = 10000.0) -> tuple[float, dict | None, float | None]:
    """Read RoPE settings from a config dict in either transformers 4.x or 5.x style.

    Returns ``(rope_theta, rope_scaling, partial_rotary_factor)``; ``rope_scaling`` is ``None``
    for plain RoPE, otherwise a new dict whose ``rope_type`` key is always set.
    ``partial_rotary_factor`` is ``None`` when the dict does not give one.
    """
    theta = d.get("rope_theta")
    scaling = d.get("rope_scaling")
    partial = d.get("partial_rotary_factor")
    params = d.get("rope_parameters")
    if isinstance(params, dict) and params:                      # transformers 5.x
        if "rope_type" not in params and "type" not in params and all(isinstance(v, dict) for v in params.values()):
            raise UnsupportedError("per-layer-type rope_parameters are not supported (only one RoPE for all layers)")
        params = dict(params)
        theta = params.pop("rope_theta", theta)
        partial = params.pop("partial_rotary_factor", partial)
        scaling = params
    if scaling is not None:
        if not isinstance(scaling, dict):
            raise ConfigError(f"rope_scaling must be a dict or null, got {scaling!r}")
        scaling = dict(scaling)
        rope_type = scaling.pop("rope_type", scaling.pop("type", "default"))
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise UnsupportedError(
                f"rope_scaling type {rope_type!r} is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
        scaling = None if rope_type == "default" else {"rope_type": rope_type, **scaling}
    return float(default_theta if theta is None else theta), scaling, partial


def check_rope(rope_scaling: dict | None) -> None:
    """``ConfigError`` / ``UnsupportedError`` unless ``rope_scaling`` (normalised) is one :mod:`axon_llm.rope` implements."""
    if rope_scaling is None:
        return
    rope_type = rope_scaling.get("rope_type")
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedError(
            f"rope_scaling type {rope_type!r} is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    if rope_type in ("linear", "dynamic", "llama3"):
        factor = rope_scaling.get("factor")
        if not isinstance(factor, (int, float)) or factor < 1.0:
            raise ConfigError(f"rope_scaling factor must be a number >= 1 for {rope_type!r}, got {factor!r}")
    if rope_type == "llama3":
        for key in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
            if key not in rope_scaling:
                raise ConfigError(f"rope_scaling of type 'llama3' needs {key!r}")
        if rope_scaling["high_freq_factor"] <= rope_scaling["low_freq_factor"]:
            raise ConfigError("rope_scaling llama3: high_freq_factor must exceed low_freq_factor")


def check_positive(cfg: Any, *names: str) -> None:
    """Raise ``ConfigError`` unless every named field of ``cfg`` is an integer >= 1 (NumPy ints count, bools don't)."""
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{type(cfg).__name__}.{name} must be a positive integer, got {value!r}")


def check_activation(cfg: Any, name: str) -> None:
    """``UnsupportedError`` unless field ``name`` of ``cfg`` is an activation the blocks know."""
    value = getattr(cfg, name)
    if value not in SUPPORTED_ACTIVATIONS:
        raise UnsupportedError(
            f"{type(cfg).__name__}.{name}={value!r} is not supported; supported: {', '.join(SUPPORTED_ACTIVATIONS)}")


def check_heads(cfg: Any, *, head_dim_given: bool = False) -> None:
    """The attention-head rules of every config with heads (``ConfigError`` naming the class).

    ``num_attention_heads`` (and ``num_key_value_heads`` when the config has it) are positive
    integers; ``hidden_size`` splits evenly into heads (unless ``head_dim_given``: LLaMA may set
    ``head_dim`` explicitly); ``num_attention_heads`` is a multiple of ``num_key_value_heads`` (GQA).
    The names are HF's; GPT-2's config exposes them as aliases of ``n_embd`` / ``n_head``.
    """
    name = type(cfg).__name__
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", heads)
    for field_name, value in (("num_attention_heads", heads), ("num_key_value_heads", kv)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name}.{field_name} must be a positive integer, got {value!r}")
    if not head_dim_given and cfg.hidden_size % heads:
        raise ConfigError(f"{name}: hidden_size ({cfg.hidden_size}) must be divisible by "
                          f"num_attention_heads ({heads})")
    if heads % kv:
        raise ConfigError(f"{name}: num_attention_heads ({heads}) must be divisible by num_key_value_heads ({kv})")


#: the sizes every decoder config with attention heads has
DECODER_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "max_position_embeddings")


def check_decoder(cfg: Any, *more_positive: str, head_dim_given: bool = False) -> None:
    """The checks every decoder config with attention heads starts with: ``num_key_value_heads``
    defaults to ``num_attention_heads`` (no GQA), :data:`DECODER_SIZES` and ``more_positive`` are
    positive integers, and the heads fit (:func:`check_heads`)."""
    if cfg.num_key_value_heads is None:
        cfg.num_key_value_heads = cfg.num_attention_heads
    check_positive(cfg, *DECODER_SIZES, *more_positive)
    check_heads(cfg, head_dim_given=head_dim_given)


def check_window(cfg: Any, name: str = "sliding_window", *, optional: bool = True) -> None:
    """``ConfigError`` unless field ``name`` is an integer >= 1 (the window counts the query's own
    position), or ``None`` when ``optional``. ``True`` is not a window: bools are rejected."""
    value = getattr(cfg, name)
    if value is None and optional:
        return
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        also = " or null" if optional else ""
        raise ConfigError(f"{type(cfg).__name__}.{name} must be an integer >= 1{also} (the window counts the "
                          f"query's own position), got {value!r}")


def check_rotary(cfg: Any) -> None:
    """The RoPE rules of every config with rotary positions (``ConfigError`` naming the class):
    ``partial_rotary_factor`` (when the config has one) in ``(0, 1]``, the rotated width
    ``rotary_dim`` (when it has one) even and positive, ``rope_theta`` a positive float (set
    to ``float(rope_theta)``)."""
    name = type(cfg).__name__
    factor = getattr(cfg, "partial_rotary_factor", 1.0)
    if not 0.0 < factor <= 1.0:
        raise ConfigError(f"{name}.partial_rotary_factor must be in (0, 1], got {factor}")
    dim = getattr(cfg, "rotary_dim", 2)
    if dim % 2 or dim < 1:
        raise ConfigError(f"{name}: the rotary dimension ({dim}) must be even and positive")
    cfg.rope_theta = float(cfg.rope_theta)
    if not cfg.rope_theta > 0:
        raise ConfigError(f"{name}.rope_theta must be > 0, got {cfg.rope_theta}")


def check_eps(cfg: Any, name: str) -> None:
    """``ConfigError`` unless the norm epsilon field ``name`` is a number > 0."""
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not value > 0:
        raise ConfigError(f"{type(cfg).__name__}.{name} must be > 0, got {value!r}")


@dataclass
class ModelConfig:
    """Shared behaviour: building from a config.json dict and writing one back."""

    model_type: ClassVar[str] = ""
    architecture: ClassVar[str] = ""
    #: keys of config.json this class does not model, kept so save_pretrained can write them back
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, kw_only=True)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def _prepare(cls, d: dict[str, Any]) -> dict[str, Any]:
        """Hook: rewrite a config.json dict into constructor keywords (rope, label maps ...)."""
        return dict(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """Build from a config.json dict (4.x or 5.x style); keys this class does not know go to ``extra``."""
        if not isinstance(d, dict):
            raise ModelFormatError(f"a config must be a JSON object, got {type(d).__name__}")
        d = cls._prepare(d)
        names = {f.name for f in dataclasses.fields(cls) if f.init} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        try:
            cfg = cls(**known)
        except TypeError as e:
            raise ConfigError(f"{cls.__name__}: {e}") from None
        cfg.extra = extra
        return cfg

    @classmethod
    def from_hf_config(cls, source: str | Path | dict[str, Any]):
        """Build from a ``config.json`` path, a folder holding one, or an already-parsed dict."""
        if isinstance(source, dict):
            return cls.from_dict(source)
        return cls.from_dict(read_config_json(source))

    def to_dict(self) -> dict[str, Any]:
        """The config.json dict transformers reads back (4.x style rope keys, read by 5.x too)."""
        out = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name != "extra":
                out[f.name] = getattr(self, f.name)
        for k in ("rope_parameters", "type"):
            out.pop(k, None)
        out["model_type"] = self.model_type
        out["architectures"] = [self.architecture]
        return out

    def replace(self, **changes):
        """A copy with some fields changed (validated again)."""
        new = dataclasses.replace(self, **changes)
        new.extra = dict(self.extra)
        return new


@dataclass
class RotaryConfig(ModelConfig):
    """A config whose RoPE keys are read in either transformers style (4.x ``rope_theta`` /
    ``rope_scaling``, 5.x ``rope_parameters``) into ``rope_theta`` / ``rope_scaling``, with the
    class's own default theta."""

    @classmethod
    def _prepare(cls, d: dict[str, Any]) -> dict[str, Any]:
        return prepare_rope(d, cls.rope_theta)



def read_config_json(source: str | Path) -> dict[str, Any]:
    """Read and parse ``config.json`` (``source`` may be the file or its folder)."""
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ModelFormatError(f"no config.json at {path}")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFormatError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ModelFormatError(f"{path} must hold a JSON object")
    return d


def prepare_rope(d: dict[str, Any], default_theta: float = 10000.0) -> dict[str, Any]:
    """A ``_prepare`` hook: ``d`` with its RoPE keys (either style) rewritten as ``rope_theta``,
    ``rope_scaling`` and, when given, ``partial_rotary_factor``."""
    d = dict(d)
    theta, scaling, partial = normalize_rope(d, default_theta)
    d.pop("rope_parameters", None)
    d["rope_theta"], d["rope_scaling"] = theta, scaling
    if partial is not None:
        d["partial_rotary_factor"] = partial
    return d


__all__ = [
    "ModelConfig", "SUPPORTED_ROPE_TYPES", "SUPPORTED_ACTIVATIONS", "normalize_rope", "prepare_rope",
    "read_config_json", "check_positive", "check_heads", "check_decoder", "DECODER_SIZES", "RotaryConfig", "check_window", "check_rotary", "check_eps",
    "check_activation", "check_rope",
]
