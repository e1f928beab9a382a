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

import axon.nn as nn

from axon_llm.attention import AttentionContext, MultiHeadAttention
from axon_llm.blocks import CausalLM, GatedMLP
from axon_llm.config import LLaMAConfig
from axon_llm.embeddings import TokenEmbedding
from axon_llm.errors import ConfigError
from axon_llm.rope import RotaryEmbedding

__all__ = ["LLaMAConfig", "LLaMADecoderLayer", "LLaMAModel", "LLaMAForCausalLM"]


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
    """HF ``LlamaModel``: ``embed_tokens``, ``layers``, ``norm`` (the body without the LM head)."""

    layer_class = LLaMADecoderLayer

    def __init__(self, config: LLaMAConfig):
        super().__init__()
        self.embed_tokens = TokenEmbedding(config.vocab_size, config.hidden_size)
        self.rotary_emb = RotaryEmbedding.from_config(config)   # tables only, no parameters
        self.layers = nn.ModuleList([self.layer_class(config, i, self.rotary_emb)
                                     for i in range(config.num_hidden_layers)])
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, ids, ctx: AttentionContext):
        """int64 ids ``[B, T]`` -> final hidden states ``[B, T, d]``."""
        x = self.embed_tokens(ids)                                          # [B, T] -> [B, T, d]
        for layer in self.layers:
            x = layer(x, ctx)
        return self.norm(x)


class LLaMAForCausalLM(CausalLM):
    """HF ``LlamaForCausalLM``: ``model`` + ``lm_head`` (tied to ``embed_tokens`` when configured).

    ``logits = m(input_ids, attention_mask=None, cache=None)``; ``m.generate(ids, max_new_tokens)``.
    """

    config_class = LLaMAConfig
    model_class = LLaMAModel
    hf_architecture = "LlamaForCausalLM"

    def __init__(self, config: LLaMAConfig | None = None):
        super().__init__()
        config = self.config_class() if config is None else config
        if not isinstance(config, self.config_class):
            raise ConfigError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.model = self.model_class(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
            self.tied_keys = ("lm_head.weight",)

    def run(self, input_ids, attention_mask=None, cache=None, logits_to_keep: int = 0):
        """``(logits [B, T, V], ctx)``: the forward pass plus its AttentionContext (router logits ...)."""
        ids = self.token_ids(input_ids)
        ctx = AttentionContext.build(ids.shape[0], ids.shape[1], attention_mask, cache)
        h = self.model(ids, ctx)                                            # [B, T, d]
        ctx.finish()
        if logits_to_keep:
            h = h[:, -int(logits_to_keep):]                                 # [B, T, d] -> [B, n, d]
        return self.lm_head(h), ctx                                         # [B, T or n, V]

    def forward(self, input_ids, attention_mask=None, cache=None, logits_to_keep: int = 0):
        """ids ``[B, T]`` -> logits ``[B, T, V]``; advances ``cache`` by ``T`` when given.

        ``logits_to_keep=n > 0`` computes the logits of the last ``n`` positions only, ``[B, n, V]``
        (transformers' ``logits_to_keep``): generation's prefill needs just the last one, and the
        LM head over the whole vocabulary is a fifth of a small model's prefill work.
        """
        return self.run(input_ids, attention_mask, cache, logits_to_keep)[0]
