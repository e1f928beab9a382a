"""Phi (HF ``PhiForCausalLM``, phi-1 / 1.5 / 2) and Phi-3 (HF ``Phi3ForCausalLM``).

phi-1/2 — one LayerNorm feeds attention and MLP **in parallel**, partial RoPE, biases everywhere::

    h = input_layernorm(x)
    x = (dense(attn(h)) + fc2(gelu_new(fc1(h)))) + x
    logits = lm_head(final_layernorm(x))            # lm_head has a bias

Only the first ``rotary_dim = head_dim * partial_rotary_factor`` channels of each q/k head are
rotated; the rest pass through.

Phi-3 — a LLaMA-shaped sequential block (RMSNorm, no biases) with fused projections::

    q, k, v = split(qkv_proj(h), [H*Dh, Hkv*Dh, Hkv*Dh])
    gate, up = chunk(gate_up_proj(h), 2);  mlp = down_proj(up * silu(gate))

``PhiForCausalLM(config)`` builds whichever variant the config is (``PhiConfig`` / ``Phi3Config``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import axon.nn as nn

from axon_llm.attention import AttentionContext, MultiHeadAttention, split_heads
from axon_llm.blocks import MLP, CausalLM, activation
from axon_llm.config import RotaryConfig, check_activation, check_decoder, check_rope, check_rotary, check_window
from axon_llm.embeddings import TokenEmbedding
from axon_llm.models.llama import LLaMADecoderLayer
from axon_llm.rope import RotaryEmbedding

__all__ = ["PhiConfig", "Phi3Config", "PhiAttention", "PhiDecoderLayer", "Phi3Attention", "Phi3MLP",
           "Phi3DecoderLayer", "PhiModel", "PhiForCausalLM"]


@dataclass
class PhiConfig(RotaryConfig):
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

    def __post_init__(self) -> None:
        check_decoder(self)
        check_rotary(self)
        check_window(self)
        check_rope(self.rope_scaling)
        check_activation(self, "hidden_act")

    @property
    def head_dim(self) -> int:
        """hidden_size // num_attention_heads."""
        return self.hidden_size // self.num_attention_heads

    @property
    def lm_head_bias(self) -> bool:
        """phi-1/2's lm_head has a bias (Phi-3's does not)."""
        return True

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

    @property
    def lm_head_bias(self) -> bool:
        """Phi-3's lm_head has no bias."""
        return False

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


class PhiAttention(MultiHeadAttention):
    """diff vs LLaMA attention: output named ``dense``, biases, partial rotary, optional q/k LayerNorm."""

    out_name = "dense"

    def __init__(self, config: PhiConfig, layer_idx: int, rotary: RotaryEmbedding):
        super().__init__(config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                         config.head_dim, layer_idx=layer_idx, rotary=rotary, bias=True,
                         sliding_window=config.sliding_window, dropout=config.attention_dropout)
        self.qk_layernorm = config.qk_layernorm
        if self.qk_layernorm:
            self.q_layernorm = nn.LayerNorm(config.head_dim, eps=config.layer_norm_eps)
            self.k_layernorm = nn.LayerNorm(config.head_dim, eps=config.layer_norm_eps)

    def project_qkv(self, x):
        """``x [B, T, d]`` -> ``q [B, H, T, Dh]``, ``k, v [B, Hkv, T, Dh]``, q and k LayerNormed per head if ``qk_layernorm``."""
        q, k, v = super().project_qkv(x)
        if self.qk_layernorm:
            q, k = self.q_layernorm(q), self.k_layernorm(k)
        return q, k, v


class PhiDecoderLayer(nn.Module):
    """phi-1/2 block: attention and MLP side by side on one LayerNorm."""

    def __init__(self, config: PhiConfig, layer_idx: int, rotary: RotaryEmbedding):
        super().__init__()
        self.self_attn = PhiAttention(config, layer_idx, rotary)
        self.mlp = MLP(config.hidden_size, config.intermediate_size, config.hidden_act, bias=True)
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x, ctx: AttentionContext):
        """``[B, T, d] -> [B, T, d]``."""
        h = self.input_layernorm(x)
        attn = self.resid_dropout(self.self_attn(h, ctx))
        ff = self.resid_dropout(self.mlp(h))
        return attn + ff + x                                   # HF's summation order


class Phi3Attention(MultiHeadAttention):
    """diff vs LLaMA attention: one fused ``qkv_proj``."""

    def __init__(self, config: Phi3Config, layer_idx: int, rotary: RotaryEmbedding):
        super().__init__(config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                         config.head_dim, layer_idx=layer_idx, rotary=rotary, bias=False,
                         sliding_window=config.sliding_window, dropout=config.attention_dropout)

    def make_projections(self, hidden_size: int, bias: bool) -> None:
        """One fused ``qkv_proj``: [d] -> [(H + 2 Hkv) Dh], q rows first, then k, then v."""
        out = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        self.qkv_proj = nn.Linear(hidden_size, out, bias=bias)

    def project_qkv(self, x):
        """``x [B, T, d]`` -> ``q [B, H, T, Dh]``, ``k, v [B, Hkv, T, Dh]``, split from the fused projection."""
        qkv = self.qkv_proj(x)                                  # [B, T, (H + 2 Hkv) Dh]
        q_end = self.num_heads * self.head_dim
        k_end = q_end + self.num_kv_heads * self.head_dim
        q = split_heads(qkv[..., :q_end], self.num_heads, self.head_dim)
        k = split_heads(qkv[..., q_end:k_end], self.num_kv_heads, self.head_dim)
        v = split_heads(qkv[..., k_end:], self.num_kv_heads, self.head_dim)
        return q, k, v


class Phi3MLP(nn.Module):
    """diff vs LLaMA MLP: gate and up fused in ``gate_up_proj`` (gate first)."""

    def __init__(self, config: Phi3Config):
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act = activation(config.hidden_act)
        self.intermediate_size = config.intermediate_size

    def forward(self, x):
        """``[B, T, d] -> [B, T, d]``."""
        gate_up = self.gate_up_proj(x)                          # [B, T, 2I]
        gate, up = gate_up[..., :self.intermediate_size], gate_up[..., self.intermediate_size:]
        return self.down_proj(up * self.act(gate))              # [B, T, d]


class Phi3DecoderLayer(LLaMADecoderLayer):
    """Phi-3 block = LLaMA's sequential block with Phi-3's fused attention and MLP."""

    def __init__(self, config: Phi3Config, layer_idx: int, rotary: RotaryEmbedding):
        super().__init__(config, layer_idx, rotary)
        self.resid_attn_dropout = nn.Dropout(config.resid_pdrop)
        self.resid_mlp_dropout = nn.Dropout(config.resid_pdrop)

    def make_attention(self, config, layer_idx, rotary):
        """Phi-3's attention with the fused ``qkv_proj``."""
        return Phi3Attention(config, layer_idx, rotary)

    def make_feed_forward(self, config) -> None:
        """Phi-3's MLP with the fused ``gate_up_proj``, HF name ``mlp``."""
        self.mlp = Phi3MLP(config)

    def forward(self, x, ctx: AttentionContext):
        """``[B, T, d] -> [B, T, d]`` (LLaMA's block plus Phi-3's residual dropouts)."""
        x = x + self.resid_attn_dropout(self.self_attn(self.input_layernorm(x), ctx))
        return x + self.resid_mlp_dropout(self.mlp(self.post_attention_layernorm(x)))


class PhiModel(nn.Module):
    """HF ``PhiModel`` / ``Phi3Model``: embeddings, layers and the final norm of either variant."""

    def __init__(self, config: PhiConfig):
        super().__init__()
        phi3 = isinstance(config, Phi3Config)
        self.embed_tokens = TokenEmbedding(config.vocab_size, config.hidden_size)
        self.embed_dropout = nn.Dropout(config.embd_pdrop)
        self.rotary_emb = RotaryEmbedding.from_config(config)
        layer = Phi3DecoderLayer if phi3 else PhiDecoderLayer
        self.layers = nn.ModuleList([layer(config, i, self.rotary_emb) for i in range(config.num_hidden_layers)])
        if phi3:
            self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        else:
            self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.phi3 = phi3

    def forward(self, ids, ctx: AttentionContext):
        """int64 ids ``[B, T]`` -> final hidden states ``[B, T, d]``."""
        x = self.embed_dropout(self.embed_tokens(ids))          # [B, T] -> [B, T, d]
        for layer in self.layers:
            x = layer(x, ctx)
        return self.norm(x) if self.phi3 else self.final_layernorm(x)


class PhiForCausalLM(CausalLM):
    """HF ``PhiForCausalLM`` (``PhiConfig``: lm_head with bias) or ``Phi3ForCausalLM`` (``Phi3Config``)."""

    # diff vs LLaMA: two configs (phi-1/2 and Phi-3), a head bias for phi-1/2 (config.lm_head_bias)
    config_class = PhiConfig
    config_classes = (PhiConfig, Phi3Config)
    backbone_class = PhiModel
    architectures = {"PhiForCausalLM": "phi", "Phi3ForCausalLM": "phi3"}
    train_name = "phi"
    hf_init = True

    @property
    def decode_layout(self) -> str | None:
        """``"phi3"`` for Phi-3 (the fast decode step fits its layers); None for phi-1/2, whose
        parallel attention + MLP on one LayerNorm decode through the modules."""
        return "phi3" if isinstance(self.config, Phi3Config) else None
