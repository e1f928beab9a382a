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

import axon.nn as nn

from axon_llm.attention import AttentionContext, MultiHeadAttention, split_heads
from axon_llm.blocks import MLP, CausalLM, activation
from axon_llm.config import Phi3Config, PhiConfig
from axon_llm.embeddings import TokenEmbedding
from axon_llm.errors import ConfigError
from axon_llm.models.llama import LLaMADecoderLayer
from axon_llm.rope import RotaryEmbedding

__all__ = ["PhiConfig", "Phi3Config", "PhiAttention", "PhiDecoderLayer", "Phi3Attention", "Phi3MLP",
           "Phi3DecoderLayer", "PhiModel", "PhiForCausalLM"]


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

    config_class = PhiConfig

    def __init__(self, config: PhiConfig | None = None):
        super().__init__()
        config = PhiConfig() if config is None else config
        if not isinstance(config, PhiConfig):
            raise ConfigError(f"PhiForCausalLM needs a PhiConfig or Phi3Config, got {type(config).__name__}")
        self.config = config
        self.model = PhiModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=not isinstance(config, Phi3Config))
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
            self.tied_keys = ("lm_head.weight",)

    @property
    def hf_architecture(self) -> str:
        """``PhiForCausalLM`` or ``Phi3ForCausalLM``."""
        return self.config.architecture

    def forward(self, input_ids, attention_mask=None, cache=None, logits_to_keep: int = 0):
        """ids ``[B, T]`` -> logits ``[B, T, V]`` (the last ``logits_to_keep`` only when > 0);
        advances ``cache`` by ``T`` when given."""
        ids = self.token_ids(input_ids)
        ctx = AttentionContext.build(ids.shape[0], ids.shape[1], attention_mask, cache)
        h = self.model(ids, ctx)                                # [B, T, d]
        ctx.finish()
        if logits_to_keep:
            h = h[:, -int(logits_to_keep):]                                 # [B, T, d] -> [B, n, d]
        return self.lm_head(h)                                  # [B, T, V]
