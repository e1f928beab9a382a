"""Gemma 3 text models (HF ``Gemma3ForCausalLM``) as a variant of LLaMA.

::

    x = embed_tokens(ids) * sqrt(d)                                   # [B, T] -> [B, T, d]
    for each layer (local = sliding window W and RoPE base 1e4; every P-th layer global, base 1e6):
        h = self_attn(input_layernorm(x))          q, k = q_norm(q_proj h), k_norm(k_proj h) before RoPE,
        x = x + post_attention_layernorm(h)        scores scaled by query_pre_attn_scalar ** -0.5
        h = mlp(pre_feedforward_layernorm(x))      down_proj(gelu_tanh(gate_proj h) * up_proj h)
        x = x + post_feedforward_layernorm(h)
    logits = lm_head(norm(x))                                         # tied to embed_tokens
    logits = cap * tanh(logits / cap)                                 # when final_logit_softcapping

Every RMSNorm here computes ``x / rms(x) * (1 + weight)`` (weights start at zero). The
differences from LLaMA are each marked ``# diff vs LLaMA:``; attribute names are the HF keys
(``model.layers.0.self_attn.q_norm.weight`` ...).

GGUF files store the norms as ``1 + weight`` (llama.cpp multiplies by the stored weight); the
GGUF loader subtracts the 1 back (``GGUFArchitecture.norm_offset`` in ``axon_llm.loaders.gguf``).
GGUF files carry no chat template for Gemma; the tokenizer falls back on Gemma's format
(``axon_llm.tokenizer.BUILTIN_CHAT_TEMPLATES``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

import axon
import axon.nn as nn
import axon.nn.functional as F

from axon_llm.attention import AttentionContext, MultiHeadAttention
from axon_llm.blocks import GatedMLP
from axon_llm.config import check_rope, check_window
from axon_llm.errors import ConfigError, UnsupportedError
from axon_llm.models.llama import LLaMAConfig, LLaMADecoderLayer, LLaMAForCausalLM, LLaMAModel
from axon_llm.rope import RotaryEmbedding

__all__ = ["Gemma3Config", "GemmaRMSNorm", "Gemma3Attention", "Gemma3DecoderLayer", "Gemma3Model",
           "Gemma3ForCausalLM"]

LAYER_TYPES = ("full_attention", "sliding_attention")

@dataclass
class Gemma3Config(LLaMAConfig):
    """Gemma 3 text (HF ``Gemma3TextConfig`` field names and defaults).

    ``hidden_activation`` in config.json is read into ``hidden_act``; ``rope_parameters`` of
    transformers 5 (one dict per layer type) and the 4.x keys (``rope_theta``,
    ``rope_local_base_freq``, ``rope_scaling``) are both read.
    """

    model_type: ClassVar[str] = "gemma3_text"
    architecture: ClassVar[str] = "Gemma3ForCausalLM"

    vocab_size: int = 262208
    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 26
    num_attention_heads: int = 8
    num_key_value_heads: int | None = 4
    head_dim: int | None = 256
    hidden_act: str = "gelu_pytorch_tanh"
    max_position_embeddings: int = 131072
    tie_word_embeddings: bool = True
    rope_theta: float = 1_000_000.0
    pad_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    bos_token_id: int | None = 2
    # diff vs LLaMA: local/global layers, QK-norm scale, soft-capping
    rope_local_base_freq: float = 10_000.0
    query_pre_attn_scalar: float = 256
    sliding_window: int | None = 4096
    sliding_window_pattern: int = 6
    layer_types: list[str] | None = None
    final_logit_softcapping: float | None = None
    attn_logit_softcapping: float | None = None          # read and kept; transformers' Gemma 3 does not apply it

    @classmethod
    def _prepare(cls, d):
        d = dict(d)
        if "hidden_activation" in d:
            d["hidden_act"] = d.pop("hidden_activation")
        if d.get("use_bidirectional_attention"):
            raise UnsupportedError("Gemma 3 with use_bidirectional_attention (the embedding variant) is not supported")
        params = d.get("rope_parameters")
        if isinstance(params, dict) and set(params) <= set(LAYER_TYPES) and params:
            local = params.get("sliding_attention") or {}
            if local.get("rope_type", "default") != "default":
                raise UnsupportedError(f"Gemma 3: scaled RoPE on the local layers ({local.get('rope_type')!r}) "
                                       "is not supported")
            if "rope_theta" in local:
                d["rope_local_base_freq"] = local["rope_theta"]
            d["rope_parameters"] = params.get("full_attention") or {"rope_type": "default"}
        return super()._prepare(d)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("rope_local_base_freq", "query_pre_attn_scalar"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"Gemma3Config.{name} must be a positive finite number, got {value!r}")
        if self.final_logit_softcapping is not None:
            cap = self.final_logit_softcapping
            if not isinstance(cap, (int, float)) or isinstance(cap, bool) or not math.isfinite(cap) or cap <= 0:
                raise ConfigError(f"Gemma3Config.final_logit_softcapping must be a positive number or null, got {cap!r}")
        pattern = self.sliding_window_pattern
        if not isinstance(pattern, int) or isinstance(pattern, bool) or pattern < 1:
            raise ConfigError(f"Gemma3Config.sliding_window_pattern must be a positive integer, got {pattern!r}")
        if self.layer_types is None:                          # transformers' rule: every P-th layer is global
            self.layer_types = ["sliding_attention" if (i + 1) % pattern else "full_attention"
                                for i in range(self.num_hidden_layers)]
        if not isinstance(self.layer_types, list) or len(self.layer_types) != self.num_hidden_layers \
                or any(t not in LAYER_TYPES for t in self.layer_types):
            raise ConfigError(f"Gemma3Config.layer_types must list one of {LAYER_TYPES} per layer "
                              f"({self.num_hidden_layers}), got {self.layer_types!r}")
        if "sliding_attention" in self.layer_types:
            check_window(self, optional=False)
        check_rope(self.rope_scaling)

    def window_of(self, layer_idx: int) -> int | None:
        """The sliding window of layer ``layer_idx`` (``None`` for a global layer)."""
        return self.sliding_window if self.layer_types[layer_idx] == "sliding_attention" else None

    def to_dict(self) -> dict[str, Any]:
        """The config.json dict with transformers' key names (``hidden_activation``)."""
        out = super().to_dict()
        out["hidden_activation"] = out.pop("hidden_act")
        for k in ("attention_bias", "mlp_bias") if not self.attention_bias and not self.mlp_bias else ():
            out.pop(k, None)
        return out

    def _attention_parameters(self) -> int:
        return super()._attention_parameters() + 2 * self.head_dim         # diff vs LLaMA: q_norm, k_norm

    def num_parameters(self) -> int:
        """Total parameter count (tied lm_head counted once)."""
        return super().num_parameters() + 2 * self.hidden_size * self.num_hidden_layers  # two more norms per layer

    @classmethod
    def tiny(cls) -> "Gemma3Config":
        """vocab 32000, d 256, ffn 512, 4 layers (every 2nd global), 4 heads / 1 KV head, head_dim 64."""
        return cls(vocab_size=32000, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=1, head_dim=64, query_pre_attn_scalar=64,
                   sliding_window=128, sliding_window_pattern=2, max_position_embeddings=2048)

    @classmethod
    def gemma3_270m(cls) -> "Gemma3Config":
        """google/gemma-3-270m, 268M: d 640, 18 layers, 4 heads / 1 KV head, head_dim 256, window 512."""
        return cls(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                   num_attention_heads=4, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
                   sliding_window=512, max_position_embeddings=32768)

    @classmethod
    def gemma3_1b(cls) -> "Gemma3Config":
        """google/gemma-3-1b, 1.0B: d 1152, 26 layers, 4 heads / 1 KV head, head_dim 256, window 512."""
        return cls(vocab_size=262144, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
                   num_attention_heads=4, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
                   sliding_window=512, max_position_embeddings=32768)


class GemmaRMSNorm(nn.RMSNorm):
    """``x / rms(x) * (1 + weight)``, weight initialised to zeros (HF ``Gemma3RMSNorm``)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__(dim, eps=eps)
        self.weight = nn.Parameter(np.zeros(dim, np.float32))

    def forward(self, x):
        """``[*, dim]`` -> same shape."""
        return F.rms_norm(x, self.normalized_shape, self.weight + 1.0, self.eps)   # diff vs LLaMA: (1 + w)


class Gemma3Attention(MultiHeadAttention):
    """LLaMA attention with QK-norm (``q_norm``, ``k_norm`` over each head, before RoPE) and the
    scores scaled by ``query_pre_attn_scalar ** -0.5`` instead of ``head_dim ** -0.5``."""

    def __init__(self, config: Gemma3Config, layer_idx: int, rotary: RotaryEmbedding):
        super().__init__(config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim,
                         layer_idx=layer_idx, rotary=rotary, bias=config.attention_bias, causal=True,
                         sliding_window=config.window_of(layer_idx), dropout=config.attention_dropout)
        self.q_norm = GemmaRMSNorm(config.head_dim, eps=config.rms_norm_eps)  # diff vs LLaMA: QK-norm
        self.k_norm = GemmaRMSNorm(config.head_dim, eps=config.rms_norm_eps)
        self.scale = float(config.query_pre_attn_scalar) ** -0.5             # diff vs LLaMA: score scale

    def project_qkv(self, x):
        """``x [B, T, d]`` -> normalised ``q [B, H, T, Dh]``, ``k [B, Hkv, T, Dh]`` and ``v``."""
        q, k, v = super().project_qkv(x)
        return self.q_norm(q), self.k_norm(k), v


class Gemma3DecoderLayer(LLaMADecoderLayer):
    """Four norms: around attention (input, post-attention) and around the MLP (pre, post)."""

    def __init__(self, config: Gemma3Config, layer_idx: int, rotary: dict):
        nn.Module.__init__(self)
        d, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(d, eps)
        self.self_attn = Gemma3Attention(config, layer_idx, rotary[config.layer_types[layer_idx]])
        self.post_attention_layernorm = GemmaRMSNorm(d, eps)                # diff vs LLaMA: norm after attention
        self.pre_feedforward_layernorm = GemmaRMSNorm(d, eps)
        self.post_feedforward_layernorm = GemmaRMSNorm(d, eps)              # diff vs LLaMA: norm after the MLP
        self.mlp = GatedMLP(d, config.intermediate_size, config.hidden_act)  # GeGLU (gelu-tanh)

    def forward(self, x, ctx: AttentionContext):
        """``[B, T, d] -> [B, T, d]``."""
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), ctx))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma3Model(LLaMAModel):
    """HF ``Gemma3TextModel``: scaled embedding, local/global layers, final Gemma norm."""

    layer_class = Gemma3DecoderLayer

    def __init__(self, config: Gemma3Config):
        super().__init__(config)
        self.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)   # diff vs LLaMA: (1 + w) norm

    def embed(self, ids):
        """ids ``[B, T]`` -> ``[B, T, d]``: the table's rows times ``sqrt(d)`` (rounded to the
        embedding's dtype first, as transformers does)."""
        x = super().embed(ids)                                               # [B, T] -> [B, T, d]
        scale = np.asarray(math.sqrt(x.shape[-1]), dtype=x.dtype)          # sqrt(d)
        return x * axon.tensor(scale)                                        # diff vs LLaMA: * sqrt(d)

    def make_rotary(self, config) -> dict:
        """One RoPE table per layer type: global layers use ``rope_theta`` (and its scaling), local
        layers ``rope_local_base_freq`` unscaled."""
        return {"full_attention": RotaryEmbedding(config.head_dim, config.max_position_embeddings,
                                                  config.rope_theta, config.rope_scaling),
                "sliding_attention": RotaryEmbedding(config.head_dim, config.max_position_embeddings,
                                                     config.rope_local_base_freq)}


class Gemma3ForCausalLM(LLaMAForCausalLM):
    """HF ``Gemma3ForCausalLM`` (text only); logits soft-capped when the config says so."""

    config_class = Gemma3Config
    backbone_class = Gemma3Model
    architectures = {"Gemma3ForCausalLM": "gemma3_text"}
    train_name = "gemma3"
    decode_layout = "gemma3"                     # diff vs LLaMA: QK-norm, four (1 + w) norms, GeGLU, capping

    def run(self, input_ids, attention_mask=None, cache=None, logits_to_keep: int = 0):
        """``(logits, ctx)`` as LLaMA's, then ``cap * tanh(logits / cap)`` when capping is set."""
        logits, ctx = super().run(input_ids, attention_mask, cache, logits_to_keep)
        cap = self.config.final_logit_softcapping
        if cap is not None:                                                  # diff vs LLaMA: soft-capping
            logits = F.tanh(logits / cap) * cap
        return logits, ctx
