"""LLaMA (HF ``LlamaForCausalLM``): RMSNorm pre-norm blocks, RoPE (rotate_half), GQA, SwiGLU.

::

    x = embed_tokens(ids)                                  # [B, T] -> [B, T, d]
    for each layer:
        x = x + o_proj(attn(rope(q_proj h), rope(k_proj h), v_proj h)),  h = input_layernorm(x)
        x = x + down_proj(silu(gate_proj h) * up_proj h),                 h = post_attention_layernorm(x)
    logits = lm_head(norm(x))                              # [B, T, d] -> [B, T, V]

Attribute names are the HF keys: ``model.layers.0.self_attn.q_proj.weight`` etc.
Mistral/Mixtral (models/mistral.py) subclass these classes and change one thing each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import axon.nn as nn

from axon_llm.attention import AttentionContext, MultiHeadAttention
from axon_llm.blocks import CausalLM, GatedMLP
from axon_llm.config import RotaryConfig, check_activation, check_decoder, check_positive, check_rope, check_rotary
from axon_llm.embeddings import TokenEmbedding
from axon_llm.rope import RotaryEmbedding

__all__ = ["LLaMAConfig", "LLaMADecoderLayer", "LLaMAModel", "LLaMAForCausalLM"]


@dataclass
class LLaMAConfig(RotaryConfig):
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

    def __post_init__(self) -> None:
        check_decoder(self, head_dim_given=self.head_dim is not None)
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        check_positive(self, "head_dim")
        check_rotary(self)
        check_rope(self.rope_scaling)
        check_activation(self, "hidden_act")

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


class LLaMADecoderLayer(nn.Module):
    """``input_layernorm -> self_attn -> + ; post_attention_layernorm -> mlp -> +``."""

    def __init__(self, config: LLaMAConfig, layer_idx: int, rotary: RotaryEmbedding):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = self.make_attention(config, layer_idx, rotary)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.make_feed_forward(config)

    def make_attention(self, config, layer_idx: int, rotary: RotaryEmbedding) -> MultiHeadAttention:
        """LLaMA attention: no window, optional biases (``attention_bias``)."""
        return MultiHeadAttention(config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                                  config.head_dim, layer_idx=layer_idx, rotary=rotary, bias=config.attention_bias,
                                  causal=True, dropout=config.attention_dropout)

    def make_feed_forward(self, config) -> None:
        """The SwiGLU MLP, HF name ``mlp``."""
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act, bias=config.mlp_bias)

    def feed_forward(self, h, ctx: AttentionContext):
        """``[B, T, d] -> [B, T, d]``."""
        return self.mlp(h)

    def forward(self, x, ctx: AttentionContext):
        """``[B, T, d] -> [B, T, d]``."""
        x = x + self.self_attn(self.input_layernorm(x), ctx)
        return x + self.feed_forward(self.post_attention_layernorm(x), ctx)


class LLaMAModel(nn.Module):
    """HF ``LlamaModel``: ``embed_tokens``, ``layers``, ``norm`` (the body without the LM head).

    The decoder families built like it (Mistral, Chimera, Trident) subclass it and change
    ``layer_class`` and, where they differ, :meth:`make_embedding` / :meth:`make_rotary`.
    """

    layer_class = LLaMADecoderLayer

    def __init__(self, config: LLaMAConfig):
        super().__init__()
        self.embed_tokens = self.make_embedding(config)
        self.rotary_emb = self.make_rotary(config)              # tables only, no parameters
        self.layers = nn.ModuleList([self.layer_class(config, i, self.rotary_emb)
                                     for i in range(config.num_hidden_layers)])
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def make_embedding(self, config) -> nn.Embedding:
        """The token table ``[V, d]`` (initialised with the rest of the model when materialised)."""
        return TokenEmbedding(config.vocab_size, config.hidden_size)

    def make_rotary(self, config) -> RotaryEmbedding:
        """RoPE over ``config.rotary_dim`` channels, with the config's theta and scaling."""
        return RotaryEmbedding.from_config(config)

    def embed(self, ids):
        """int64 ids ``[B, T]`` -> token embeddings ``[B, T, d]`` (Gemma scales them)."""
        return self.embed_tokens(ids)                                       # [B, T] -> [B, T, d]

    def forward(self, ids, ctx: AttentionContext):
        """int64 ids ``[B, T]`` -> final hidden states ``[B, T, d]``."""
        x = self.embed(ids)                                                 # [B, T] -> [B, T, d]
        for layer in self.layers:
            x = layer(x, ctx)
        return self.norm(x)


class LLaMAForCausalLM(CausalLM):
    """HF ``LlamaForCausalLM``: ``model`` + ``lm_head`` (tied to ``embed_tokens`` when configured).

    ``logits = m(input_ids, attention_mask=None, cache=None)``; ``m.generate(ids, max_new_tokens)``.
    Everything is :class:`~axon_llm.blocks.CausalLM`'s: this class only names its parts.
    """

    config_class = LLaMAConfig
    backbone_class = LLaMAModel
    architectures = {"LlamaForCausalLM": "llama"}
    train_name = "llama"
    decode_layout = "llama"                      # the fast decode step (axon_llm/decode.py) fits these layers
    hf_init = True
