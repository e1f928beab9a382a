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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from axon_llm.errors import ConfigError, LLMError, ModelFormatError, UnsupportedError
from axon_llm.limits import CEILINGS, check_count, check_float, read_json_file

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
    theta = default_theta if theta is None else check_float(theta, "rope_theta", lo=1.0, hi=1e15, error=ConfigError)
    return float(theta), scaling, partial


def check_rope(rope_scaling: dict | None) -> None:
    """``ConfigError`` / ``UnsupportedError`` unless ``rope_scaling`` (normalised) is one :mod:`axon_llm.rope` implements."""
    if rope_scaling is None:
        return
    rope_type = rope_scaling.get("rope_type")
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedError(
            f"rope_scaling type {rope_type!r} is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    if rope_type in ("linear", "dynamic", "llama3"):
        check_float(rope_scaling.get("factor"), f"rope_scaling factor ({rope_type!r})", lo=1.0, hi=1e6,
                    error=ConfigError)
    if rope_type == "llama3":
        for key in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
            if key not in rope_scaling:
                raise ConfigError(f"rope_scaling of type 'llama3' needs {key!r}")
            check_float(rope_scaling[key], f"rope_scaling {key}", lo=0.0, lo_open=True, hi=float(CEILINGS["positions"]),
                        error=ConfigError)
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


# -- checks of config.json values, shared by every config class -------------------------------------
# A field is checked by its declared type (``int | None``, ``float``, ``str``, ``bool``, ``dict``,
# ``list[int]``) and, when its name is listed below, by a range: counts against a ceiling that no
# real model comes near (so ``num_hidden_layers: 10**6`` fails before one layer is built), floats
# finite and in range (``rms_norm_eps: NaN``, ``rope_theta: inf`` fail).
_INT_CEILINGS: dict[str, str] = {
    "vocab_size": "vocab", "type_vocab_size": "vocab",
    "hidden_size": "hidden", "n_embd": "hidden", "d_model": "hidden", "time_step_rank": "hidden",
    "intermediate_size": "intermediate", "n_inner": "intermediate",
    "num_hidden_layers": "layers", "n_layer": "layers",
    "num_attention_heads": "heads", "n_head": "heads", "num_key_value_heads": "heads", "head_dim": "head_dim",
    "max_position_embeddings": "positions", "n_positions": "positions", "sliding_window": "positions",
    "original_max_position_embeddings": "positions",
    "num_local_experts": "experts", "num_experts_per_tok": "experts",
    "num_labels": "labels", "state_size": "state", "conv_kernel": "kernel", "expand": "kernel",
}
#: float fields by name: (low, high, low excluded)
_FLOAT_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "rope_theta": (1.0, 1e15, False),                # below 1 the inverse frequencies overflow
    "partial_rotary_factor": (0.0, 1.0, True),
    "initializer_range": (0.0, None, False), "time_step_scale": (0.0, None, True),
}


def _float_range(name: str) -> tuple[float | None, float | None, bool]:
    if name in _FLOAT_RANGES:
        return _FLOAT_RANGES[name]
    if name.endswith(("eps", "epsilon")):
        return 0.0, 1.0, True                       # a norm epsilon: positive and small
    if "dropout" in name or name.endswith(("pdrop", "_prob", "jitter_noise")):
        return 0.0, 1.0, False                      # a probability
    return None, None, False                        # any finite number


def check_field(owner: str, name: str, annotation: Any, value: Any) -> None:
    """Raise :class:`ConfigError` naming ``owner.name`` unless ``value`` fits the field's declared
    type and range (see ``_INT_CEILINGS`` / ``_FLOAT_RANGES``); token ids must fit an int32."""
    what = f"{owner}.{name}"
    kinds = {k.strip() for k in str(annotation).split("|")}
    if value is None:
        if "None" in kinds:
            return
        raise ConfigError(f"{what} must not be null")
    if isinstance(value, bool):
        if "bool" in kinds:
            return
        raise ConfigError(f"{what} must be {' or '.join(sorted(kinds - {'None'}))}, got {value!r}")
    if isinstance(value, (int, np.integer)) and ("int" in kinds or "float" in kinds):
        if name.endswith("token_id"):
            check_count(value, what, lo=-1, hi=CEILINGS["token_id"], error=ConfigError)
        elif "int" in kinds:
            ceiling = _INT_CEILINGS.get(name)
            check_count(value, what, lo=0 if ceiling else -(1 << 31), hi=CEILINGS[ceiling or "token_id"],
                        error=ConfigError)
        else:
            lo, hi, lo_open = _float_range(name)
            check_float(value, what, lo=lo, hi=hi, lo_open=lo_open, error=ConfigError)
        return
    if isinstance(value, (float, np.floating)) and "float" in kinds:
        lo, hi, lo_open = _float_range(name)
        check_float(value, what, lo=lo, hi=hi, lo_open=lo_open, error=ConfigError)
        return
    if isinstance(value, str) and "str" in kinds:
        if len(value) > 4096:
            raise ConfigError(f"{what} is a string of {len(value)} characters")
        return
    if isinstance(value, dict) and "dict" in kinds:
        return
    if isinstance(value, list) and kinds & {"list[int]", "list[str]", "list"}:
        if len(value) > CEILINGS["layers"] * 4:
            raise ConfigError(f"{what} lists {len(value)} values")
        for i, v in enumerate(value):
            if "list[int]" in kinds:
                check_count(v, f"{what}[{i}]", lo=-1 if name.endswith("token_id") else 0,
                            hi=CEILINGS["token_id"], error=ConfigError)
            elif "list[str]" in kinds and (not isinstance(v, str) or len(v) > 4096):
                raise ConfigError(f"{what}[{i}] must be a string, got {type(v).__name__}")
        return
    raise ConfigError(f"{what} must be {' or '.join(sorted(kinds - {'None'}))}, got "
                      f"{type(value).__name__} {str(value)[:40]!r}")
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
        try:
            d = cls._prepare(d)
        except LLMError:
            raise
        except (TypeError, ValueError, OverflowError, AttributeError) as e:
            raise ConfigError(f"{cls.__name__}: malformed config ({e})") from None
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name != "extra"}
        known = {k: v for k, v in d.items() if k in fields}
        extra = {k: v for k, v in d.items() if k not in fields}
        for name, value in known.items():
            check_field(cls.__name__, name, fields[name].type, value)
        try:
            cfg = cls(**known)
        except LLMError:
            raise
        except (TypeError, ValueError, OverflowError, ZeroDivisionError) as e:
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
    d = read_json_file(path, max_bytes=64 << 20)
    if not isinstance(d, dict):
        raise ModelFormatError(f"{path} must hold a JSON object")
    archs = d.get("architectures")
    if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise ModelFormatError(f"{path}: architectures must be a list of strings, got {str(archs)[:60]}")
    if not isinstance(d.get("model_type", ""), str):
        raise ModelFormatError(f"{path}: model_type must be a string, got {str(d['model_type'])[:60]}")
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
