"""Model configurations: dataclasses with HuggingFace's field names, presets, parameter counts.

Every config here

* takes the field names of the matching ``transformers`` config class (``hidden_size``,
  ``num_key_value_heads``, ``rope_theta`` ...), so ``LLaMAConfig(**json.load(f))`` reads a
  ``config.json`` (unknown keys are kept in ``extra`` rather than rejected);
* rejects a configuration that cannot work when it is built (``ConfigError``);
* has the Rust crate's presets as classmethods (``LLaMAConfig.llama3_8b()``);
* counts its parameters with :meth:`num_parameters` by arithmetic alone, no allocation.

RoPE settings are read from both config.json styles:

* transformers 4.x: ``"rope_theta": 10000.0, "rope_scaling": {"rope_type": "linear", "factor": 2.0}``
  (old files spell ``"type"`` instead of ``"rope_type"``);
* transformers 5.x: ``"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}``.

Both become ``rope_theta`` (a float) and ``rope_scaling`` (``None`` for plain RoPE, else a
dict with ``rope_type``), which is what :mod:`axon_llm.rope` reads.
"""

from __future__ import annotations

import dataclasses
import math
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


def _check_rope(rope_scaling: dict | None) -> None:
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


def _positive(cfg: Any, *names: str) -> None:
    """Raise ``ConfigError`` unless every named field of ``cfg`` is an integer >= 1 (NumPy ints count, bools don't)."""
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{type(cfg).__name__}.{name} must be a positive integer, got {value!r}")


def _activation(cfg: Any, name: str) -> None:
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
    "rope_theta": (1.0, 1e15, False),                # below 1 the inverse frequencies overflow "partial_rotary_factor": (0.0, 1.0, True),
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
    if isinstance(value, list) and "list[int]" in kinds:
        if len(value) > 1024:
            raise ConfigError(f"{what} lists {len(value)} values")
        for i, v in enumerate(value):
            check_count(v, f"{what}[{i}]", lo=-1 if name.endswith("token_id") else 0,
                        hi=CEILINGS["token_id"], error=ConfigError)
        return
    raise ConfigError(f"{what} must be {' or '.join(sorted(kinds - {'None'}))}, got "
                      f"{type(value).__name__} {str(value)[:40]!r}")


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


# ---------------------------------------------------------------------------------------------
# GPT-2
# ---------------------------------------------------------------------------------------------
@dataclass
class GPT2Config(ModelConfig):
    """GPT-2 (HF ``GPT2Config`` field names; ``hidden_size`` etc. are aliases as in HF)."""

    model_type: ClassVar[str] = "gpt2"
    architecture: ClassVar[str] = "GPT2LMHeadModel"

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False
    bos_token_id: int | None = 50256
    eos_token_id: int | list[int] | None = 50256
    pad_token_id: int | None = None
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        _positive(self, "vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
        if self.n_inner is not None:
            _positive(self, "n_inner")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        _activation(self, "activation_function")
        if not self.tie_word_embeddings:
            raise UnsupportedError("GPT2LMHeadModel always ties lm_head to wte (tie_word_embeddings=False unsupported)")

    # HF attribute_map aliases
    hidden_size = property(lambda self: self.n_embd, doc="alias of n_embd")
    num_hidden_layers = property(lambda self: self.n_layer, doc="alias of n_layer")
    num_attention_heads = property(lambda self: self.n_head, doc="alias of n_head")
    max_position_embeddings = property(lambda self: self.n_positions, doc="alias of n_positions")
    intermediate_size = property(lambda self: self.n_inner or 4 * self.n_embd, doc="n_inner, default 4 * n_embd")

    def num_parameters(self) -> int:
        """Parameter count of GPT2LMHeadModel (lm_head tied, counted once)."""
        d, f = self.n_embd, self.intermediate_size
        per_layer = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
        return self.vocab_size * d + self.n_positions * d + self.n_layer * per_layer + 2 * d

    @classmethod
    def tiny(cls) -> "GPT2Config":
        """vocab 1000, ctx 128, d 128, 2 layers, 2 heads (tests and demos)."""
        return cls(vocab_size=1000, n_positions=128, n_embd=128, n_layer=2, n_head=2,
                   bos_token_id=0, eos_token_id=0)

    @classmethod
    def small(cls) -> "GPT2Config":
        """GPT-2 small, 124M."""
        return cls()

    @classmethod
    def medium(cls) -> "GPT2Config":
        """GPT-2 medium, 355M."""
        return cls(n_embd=1024, n_layer=24, n_head=16)

    @classmethod
    def large(cls) -> "GPT2Config":
        """GPT-2 large, 774M."""
        return cls(n_embd=1280, n_layer=36, n_head=20)

    @classmethod
    def xl(cls) -> "GPT2Config":
        """GPT-2 XL, 1558M."""
        return cls(n_embd=1600, n_layer=48, n_head=25)


# ---------------------------------------------------------------------------------------------
# BERT
# ---------------------------------------------------------------------------------------------
@dataclass
class BertConfig(ModelConfig):
    """BERT (HF ``BertConfig`` field names). ``num_labels`` sizes the classification head."""

    model_type: ClassVar[str] = "bert"
    architecture: ClassVar[str] = "BertModel"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    position_embedding_type: str = "absolute"
    classifier_dropout: float | None = None
    num_labels: int = 2
    id2label: dict | None = None
    problem_type: str | None = None

    @classmethod
    def _prepare(cls, d):
        d = dict(d)
        if "id2label" in d and isinstance(d["id2label"], dict):
            d["id2label"] = {int(k): v for k, v in d["id2label"].items()}
            d.setdefault("num_labels", len(d["id2label"]))
        d.pop("label2id", None)
        return d

    def __post_init__(self) -> None:
        _positive(self, "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "max_position_embeddings", "type_vocab_size", "num_labels")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"hidden_size ({self.hidden_size}) must be divisible by "
                              f"num_attention_heads ({self.num_attention_heads})")
        _activation(self, "hidden_act")
        if self.id2label is None:
            self.id2label = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        elif len(self.id2label) != self.num_labels:
            raise ConfigError(f"num_labels ({self.num_labels}) differs from the {len(self.id2label)} entries of id2label")
        if self.position_embedding_type != "absolute":
            raise UnsupportedError(f"position_embedding_type {self.position_embedding_type!r} is not supported; "
                                   "supported: absolute")

    def to_dict(self) -> dict[str, Any]:
        """The config.json dict, with id2label / label2id written out as transformers does."""
        out = super().to_dict()
        labels = self.id2label
        out["id2label"] = {str(k): v for k, v in labels.items()}
        out["label2id"] = {v: int(k) for k, v in labels.items()}
        out.pop("num_labels")
        return out

    def num_parameters(self) -> int:
        """Parameter count of BertModel with its pooler (the published 110M / 335M)."""
        d, f = self.hidden_size, self.intermediate_size
        emb = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * d + 2 * d
        per_layer = 4 * (d * d + d) + 2 * 2 * d + (d * f + f) + (f * d + d)
        return emb + self.num_hidden_layers * per_layer + d * d + d

    @classmethod
    def tiny(cls) -> "BertConfig":
        """vocab 1000, d 128, 2 layers, 2 heads, ffn 256, 128 positions."""
        return cls(vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=256, max_position_embeddings=128)

    @classmethod
    def base(cls) -> "BertConfig":
        """bert-base-uncased, 110M."""
        return cls()

    @classmethod
    def large(cls) -> "BertConfig":
        """bert-large-uncased, 335M."""
        return cls(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)


# ---------------------------------------------------------------------------------------------
# LLaMA and Mistral / Mixtral
# ---------------------------------------------------------------------------------------------
def _prepare_rope(d: dict[str, Any], default_theta: float = 10000.0) -> dict[str, Any]:
    d = dict(d)
    theta, scaling, partial = normalize_rope(d, default_theta)
    d.pop("rope_parameters", None)
    d["rope_theta"], d["rope_scaling"] = theta, scaling
    if partial is not None:
        d["partial_rotary_factor"] = partial
    return d


@dataclass
class LLaMAConfig(ModelConfig):
    """LLaMA (HF ``LlamaConfig`` field names)."""

    model_type: ClassVar[str] = "llama"
    architecture: ClassVar[str] = "LlamaForCausalLM"

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    partial_rotary_factor: float = 1.0
    attention_bias: bool = False
    attention_dropout: float = 0.0
    mlp_bias: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None

    @classmethod
    def _prepare(cls, d):
        return _prepare_rope(d, cls.rope_theta)

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        _positive(self, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "max_position_embeddings")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(f"hidden_size ({self.hidden_size}) must be divisible by "
                                  f"num_attention_heads ({self.num_attention_heads}) when head_dim is not given")
            self.head_dim = self.hidden_size // self.num_attention_heads
        _positive(self, "head_dim")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"num_attention_heads ({self.num_attention_heads}) must be divisible by "
                              f"num_key_value_heads ({self.num_key_value_heads})")
        if not 0.0 < self.partial_rotary_factor <= 1.0:
            raise ConfigError(f"partial_rotary_factor must be in (0, 1], got {self.partial_rotary_factor}")
        if self.rotary_dim % 2:
            raise ConfigError(f"the rotary dimension ({self.rotary_dim}) must be even")
        self.rope_theta = float(self.rope_theta)
        if self.rope_theta <= 0:
            raise ConfigError(f"rope_theta must be positive, got {self.rope_theta}")
        _check_rope(self.rope_scaling)
        _activation(self, "hidden_act")

    @property
    def rotary_dim(self) -> int:
        """How many leading channels of each head RoPE rotates (``int(head_dim * partial_rotary_factor)``)."""
        return int(self.head_dim * self.partial_rotary_factor)

    def to_dict(self) -> dict[str, Any]:
        """The config.json dict; ``partial_rotary_factor`` is left out when it is 1.0."""
        out = super().to_dict()
        if self.partial_rotary_factor == 1.0:
            out.pop("partial_rotary_factor")
        return out

    def _attention_parameters(self) -> int:
        d, q, kv = self.hidden_size, self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        n = d * q + 2 * d * kv + q * d
        if self.attention_bias:
            n += q + 2 * kv + d
        return n

    def _mlp_parameters(self) -> int:
        d, f = self.hidden_size, self.intermediate_size
        return 3 * d * f + ((2 * f + d) if self.mlp_bias else 0)

    def num_parameters(self) -> int:
        """Total parameter count (tied lm_head counted once)."""
        d, v = self.hidden_size, self.vocab_size
        per_layer = 2 * d + self._attention_parameters() + self._mlp_parameters()
        head = 0 if self.tie_word_embeddings else v * d
        return v * d + self.num_hidden_layers * per_layer + d + head

    @classmethod
    def tiny(cls) -> "LLaMAConfig":
        """vocab 32000, d 256, ffn 512, 4 layers, 4 heads."""
        return cls(vocab_size=32000, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048)

    @classmethod
    def llama2_7b(cls) -> "LLaMAConfig":
        """Llama-2-7b, 6.74B."""
        return cls(max_position_embeddings=4096, rms_norm_eps=1e-5)

    @classmethod
    def llama2_13b(cls) -> "LLaMAConfig":
        """Llama-2-13b, 13.0B."""
        return cls(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                   max_position_embeddings=4096, rms_norm_eps=1e-5)

    @classmethod
    def llama3_8b(cls) -> "LLaMAConfig":
        """Meta-Llama-3-8B, 8.03B (vocab 128256, 8 kv heads, theta 5e5)."""
        return cls(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                   rms_norm_eps=1e-5, rope_theta=500000.0, bos_token_id=128000, eos_token_id=128001)


@dataclass
class MistralConfig(LLaMAConfig):
    """Mistral (HF ``MistralConfig``); with ``num_local_experts`` set it is Mixtral (``MixtralConfig``)."""

    # diff vs LLaMA: sliding window, plus the Mixtral MoE fields
    model_type: ClassVar[str] = "mistral"
    architecture: ClassVar[str] = "MistralForCausalLM"

    intermediate_size: int = 14336
    num_key_value_heads: int | None = 8
    max_position_embeddings: int = 4096 * 32
    sliding_window: int | None = 4096
    num_local_experts: int | None = None
    num_experts_per_tok: int = 2
    router_aux_loss_coef: float = 0.001
    output_router_logits: bool = False
    router_jitter_noise: float = 0.0

    @classmethod
    def _prepare(cls, d):
        d = super()._prepare(d)
        if d.get("model_type") == "mixtral" or "num_local_experts" in d:
            d.setdefault("num_local_experts", 8)
            d.setdefault("sliding_window", None)   # MixtralConfig's default differs from Mistral's
        return d

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sliding_window is not None:
            if not isinstance(self.sliding_window, int) or isinstance(self.sliding_window, bool) \
                    or self.sliding_window < 1:
                raise ConfigError(f"sliding_window must be a positive integer or null, got {self.sliding_window!r}")
        if self.num_local_experts is not None:
            _positive(self, "num_local_experts", "num_experts_per_tok")
            if self.num_experts_per_tok > self.num_local_experts:
                raise ConfigError(f"num_experts_per_tok ({self.num_experts_per_tok}) cannot exceed "
                                  f"num_local_experts ({self.num_local_experts})")

    @property
    def is_moe(self) -> bool:
        """True for Mixtral (a sparse MoE replaces every MLP)."""
        return self.num_local_experts is not None

    def to_dict(self) -> dict[str, Any]:
        """The config.json dict: model_type "mixtral" with the MoE keys when ``is_moe``, else Mistral's without them."""
        out = super().to_dict()
        if self.is_moe:
            out["model_type"], out["architectures"] = "mixtral", ["MixtralForCausalLM"]
        else:
            for k in ("num_local_experts", "num_experts_per_tok", "router_aux_loss_coef",
                      "output_router_logits", "router_jitter_noise"):
                out.pop(k)
        return out

    def _mlp_parameters(self) -> int:
        if not self.is_moe:
            return super()._mlp_parameters()
        return self.hidden_size * self.num_local_experts + self.num_local_experts * 3 * self.hidden_size * self.intermediate_size

    def num_active_parameters(self) -> int:
        """Parameters used per token: for Mixtral only ``num_experts_per_tok`` experts count."""
        if not self.is_moe:
            return self.num_parameters()
        unused = self.num_local_experts - self.num_experts_per_tok
        return self.num_parameters() - self.num_hidden_layers * unused * 3 * self.hidden_size * self.intermediate_size

    @classmethod
    def tiny(cls) -> "MistralConfig":
        """vocab 32000, d 256, ffn 512, 4 layers, 4 heads, 2 kv heads, window 128."""
        return cls(vocab_size=32000, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, sliding_window=128)

    @classmethod
    def mistral_7b(cls) -> "MistralConfig":
        """Mistral-7B-v0.1, 7.24B, window 4096."""
        return cls(max_position_embeddings=32768, rms_norm_eps=1e-5, sliding_window=4096)

    @classmethod
    def mistral_7b_instruct(cls) -> "MistralConfig":
        """Mistral-7B-Instruct-v0.1 (same architecture as mistral_7b)."""
        return cls.mistral_7b()

    @classmethod
    def mixtral_8x7b(cls) -> "MistralConfig":
        """Mixtral-8x7B-v0.1: 8 experts, top-2; 46.7B total, 12.9B active."""
        return cls(max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=1e6, sliding_window=None,
                   num_local_experts=8, num_experts_per_tok=2, router_aux_loss_coef=0.02)


# ---------------------------------------------------------------------------------------------
# Phi (phi-1, phi-1.5, phi-2) and Phi-3
# ---------------------------------------------------------------------------------------------
@dataclass
class PhiConfig(ModelConfig):
    """Phi-1/2 (HF ``PhiConfig``): LayerNorm, parallel attention + MLP, partial RoPE, biases."""

    model_type: ClassVar[str] = "phi"
    architecture: ClassVar[str] = "PhiForCausalLM"

    vocab_size: int = 51200
    hidden_size: int = 2048
    intermediate_size: int = 8192
    num_hidden_layers: int = 24
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    resid_pdrop: float = 0.0
    embd_pdrop: float = 0.0
    attention_dropout: float = 0.0
    hidden_act: str = "gelu_new"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    partial_rotary_factor: float = 0.5
    qk_layernorm: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None
    sliding_window: int | None = None

    @classmethod
    def _prepare(cls, d):
        return _prepare_rope(d, cls.rope_theta)

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        _positive(self, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "max_position_embeddings")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"hidden_size ({self.hidden_size}) must be divisible by "
                              f"num_attention_heads ({self.num_attention_heads})")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"num_attention_heads ({self.num_attention_heads}) must be divisible by "
                              f"num_key_value_heads ({self.num_key_value_heads})")
        if not 0.0 < self.partial_rotary_factor <= 1.0:
            raise ConfigError(f"partial_rotary_factor must be in (0, 1], got {self.partial_rotary_factor}")
        if self.rotary_dim % 2 or self.rotary_dim == 0:
            raise ConfigError(f"the rotary dimension ({self.rotary_dim}) must be even and positive")
        if self.sliding_window is not None and (not isinstance(self.sliding_window, int) or self.sliding_window < 1):
            raise ConfigError(f"sliding_window must be a positive integer or null, got {self.sliding_window!r}")
        self.rope_theta = float(self.rope_theta)
        _check_rope(self.rope_scaling)
        _activation(self, "hidden_act")

    @property
    def head_dim(self) -> int:
        """hidden_size // num_attention_heads."""
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        """How many leading channels of each head RoPE rotates."""
        return int(self.head_dim * self.partial_rotary_factor)

    def num_parameters(self) -> int:
        """Total parameter count (PhiForCausalLM; its lm_head has a bias)."""
        d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        attn = (d * q + q) + 2 * (d * kv + kv) + (q * d + d)
        if self.qk_layernorm:
            attn += 2 * 2 * self.head_dim
        per_layer = 2 * d + attn + (d * f + f) + (f * d + d)
        head = 0 if self.tie_word_embeddings else v * d
        return v * d + self.num_hidden_layers * per_layer + 2 * d + head + v

    @classmethod
    def tiny(cls) -> "PhiConfig":
        """vocab 51200, d 256, ffn 512, 4 layers, 4 heads, partial rotary 0.5."""
        return cls(vocab_size=51200, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                   num_attention_heads=4, partial_rotary_factor=0.5)

    @classmethod
    def phi1(cls) -> "PhiConfig":
        """microsoft/phi-1, 1.42B (partial rotary 0.5)."""
        return cls(partial_rotary_factor=0.5)

    @classmethod
    def phi2(cls) -> "PhiConfig":
        """microsoft/phi-2, 2.78B (partial rotary 0.4)."""
        return cls(hidden_size=2560, intermediate_size=10240, num_hidden_layers=32, num_attention_heads=32,
                   partial_rotary_factor=0.4, bos_token_id=50256, eos_token_id=50256)

    @classmethod
    def phi3_mini(cls) -> "Phi3Config":
        """microsoft/Phi-3-mini-4k-instruct, 3.82B (vocab 32064)."""
        return Phi3Config(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                          sliding_window=2047, bos_token_id=1, eos_token_id=32000, pad_token_id=32000)


@dataclass
class Phi3Config(PhiConfig):
    """Phi-3 (HF ``Phi3Config``): RMSNorm, fused qkv_proj / gate_up_proj, sequential block, no biases."""

    # diff vs Phi: RMSNorm + fused projections + sequential residuals (see models/phi.py)
    model_type: ClassVar[str] = "phi3"
    architecture: ClassVar[str] = "Phi3ForCausalLM"

    vocab_size: int = 32064
    hidden_size: int = 3072
    intermediate_size: int = 8192
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    original_max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    partial_rotary_factor: float = 1.0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 32000
    pad_token_id: int | None = 32000

    def to_dict(self) -> dict[str, Any]:
        """The config.json dict, without the Phi-1/2 keys Phi-3 does not have (layer_norm_eps, qk_layernorm)."""
        out = super().to_dict()
        for k in ("layer_norm_eps", "qk_layernorm"):
            out.pop(k)
        return out

    def num_parameters(self) -> int:
        """Total parameter count (Phi3ForCausalLM)."""
        d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        per_layer = 2 * d + d * (q + 2 * kv) + q * d + d * 2 * f + f * d
        head = 0 if self.tie_word_embeddings else v * d
        return v * d + self.num_hidden_layers * per_layer + d + head

    @classmethod
    def tiny(cls) -> "Phi3Config":
        """A Phi-3 shaped tiny config: vocab 32064, d 256, ffn 512, 4 layers, 4 heads."""
        return cls(vocab_size=32064, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                   num_attention_heads=4, max_position_embeddings=2048, original_max_position_embeddings=2048)


#: every config class by config.json ``model_type``
CONFIG_CLASSES: dict[str, type[ModelConfig]] = {
    "gpt2": GPT2Config, "bert": BertConfig, "llama": LLaMAConfig, "mistral": MistralConfig,
    "mixtral": MistralConfig, "phi": PhiConfig, "phi3": Phi3Config,
}

__all__ = [
    "ModelConfig", "GPT2Config", "BertConfig", "LLaMAConfig", "MistralConfig", "PhiConfig", "Phi3Config",
    "CONFIG_CLASSES", "SUPPORTED_ROPE_TYPES", "normalize_rope", "read_config_json",
]
