"""GPT-2 (HF ``GPT2LMHeadModel``): learned positions, pre-LayerNorm blocks, gelu_new, tied head.

::

    x = wte(ids) + wpe(positions)                          # [B, T, d]
    for each block h:
        x = x + c_proj(attn(split3(c_attn(ln_1(x)))))      # causal MHA, scale 1/sqrt(Dh)
        x = x + c_proj(gelu_new(c_fc(ln_2(x))))
    logits = ln_f(x) @ wte^T                               # lm_head tied to wte

GPT-2 was trained with ``Conv1D`` layers whose weight is stored ``[in, out]`` (``y = x W + b``),
the transpose of ``nn.Linear``. :class:`Conv1D` keeps that layout so HF checkpoints load
without transposing; :data:`CONV1D_WEIGHTS` lists the keys concerned (the ones a converter to
a ``[out, in]`` format, e.g. GGUF, must transpose).
"""

from __future__ import annotations

import numpy as np

import axon.nn as nn
from axon.nn.parameter import Parameter

from axon_llm.attention import AttentionContext, attend, merge_heads, split_heads
from axon_llm.blocks import CausalLM, activation
from axon_llm.config import GPT2Config
from axon_llm.embeddings import TokenEmbedding, check_positions, gpt2_embed
from axon_llm.errors import ConfigError

__all__ = ["GPT2Config", "Conv1D", "CONV1D_WEIGHTS", "GPT2Attention", "GPT2MLP", "GPT2Block", "GPT2",
           "GPT2LMHead"]

#: per-block weights stored [in, out] (GPT-2 Conv1D), relative to ``transformer.h.N.``
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _normal(std: float):
    def fill(arr, rng):
        arr[...] = rng.normal(0.0, std, arr.shape)
    return fill


def _zeros(arr, rng):
    arr[...] = 0.0


class Conv1D(nn.Module):
    """HF's GPT-2 ``Conv1D``: a linear layer with ``weight [in, out]``: ``y = x @ weight + bias``."""

    def __init__(self, in_features: int, out_features: int, std: float = 0.02):
        super().__init__()
        self.weight = Parameter.lazy((in_features, out_features), _normal(std))
        self.bias = Parameter.lazy((out_features,), _zeros)

    def forward(self, x):
        """``[..., in] -> [..., out]``."""
        return x @ self.weight + self.bias


class GPT2Attention(nn.Module):
    """Causal MHA with fused ``c_attn`` (q, k, v side by side) and ``c_proj``."""

    def __init__(self, config: GPT2Config, layer_idx: int):
        super().__init__()
        d = config.n_embd
        self.num_heads, self.head_dim, self.layer_idx = config.n_head, d // config.n_head, layer_idx
        self.c_attn = Conv1D(d, 3 * d, config.initializer_range)
        self.c_proj = Conv1D(d, d, config.initializer_range)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)
        self.attn_pdrop = config.attn_pdrop
        scale = self.head_dim ** -0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            scale /= layer_idx + 1
        self.scale = scale

    def forward(self, x, ctx: AttentionContext):
        """``[B, T, d] -> [B, T, d]``."""
        d = x.shape[-1]
        qkv = self.c_attn(x)                                                # [B, T, 3d]
        q = split_heads(qkv[..., :d], self.num_heads, self.head_dim)        # [B, H, T, Dh]
        k = split_heads(qkv[..., d:2 * d], self.num_heads, self.head_dim)
        v = split_heads(qkv[..., 2 * d:], self.num_heads, self.head_dim)
        if ctx.cache is not None:
            k, v = ctx.cache.update(self.layer_idx, k, v)  # [B, H, S, Dh]
        out = attend(q, k, v, ctx, causal=True, scale=self.scale,
                     dropout_p=self.attn_pdrop if self.training else 0.0)   # [B, H, T, Dh]
        return self.resid_dropout(self.c_proj(merge_heads(out)))


class GPT2MLP(nn.Module):
    """``c_proj(act(c_fc(x)))`` with Conv1D layers; act is ``activation_function`` (gelu_new)."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.c_fc = Conv1D(config.n_embd, config.intermediate_size, config.initializer_range)
        self.c_proj = Conv1D(config.intermediate_size, config.n_embd, config.initializer_range)
        self.act = activation(config.activation_function)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x):
        """``[B, T, d] -> [B, T, d]``."""
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class GPT2Block(nn.Module):
    """``x + attn(ln_1 x)``, then ``x + mlp(ln_2 x)``."""

    def __init__(self, config: GPT2Config, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = GPT2MLP(config)

    def forward(self, x, ctx: AttentionContext):
        """``[B, T, d] -> [B, T, d]``."""
        x = x + self.attn(self.ln_1(x), ctx)
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    """HF ``GPT2Model`` (the ``transformer`` of GPT2LMHeadModel): ``wte, wpe, drop, h, ln_f``."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.config = config
        self.wte = TokenEmbedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([GPT2Block(config, i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def forward(self, ids: np.ndarray, ctx: AttentionContext):
        """int64 ids ``[B, T]`` -> final hidden states ``[B, T, d]``."""
        x = self.drop(gpt2_embed(self.wte, self.wpe, ids, ctx.positions))  # [B, T, d]
        for block in self.h:
            x = block(x, ctx)
        return self.ln_f(x)


class GPT2LMHead(CausalLM):
    """HF ``GPT2LMHeadModel``: ``transformer`` + ``lm_head`` tied to ``transformer.wte``."""

    config_class = GPT2Config
    hf_architecture = "GPT2LMHeadModel"
    tied_keys = ("lm_head.weight",)

    def __init__(self, config: GPT2Config | None = None):
        super().__init__()
        config = GPT2Config() if config is None else config
        if not isinstance(config, GPT2Config):
            raise ConfigError(f"GPT2LMHead needs a GPT2Config, got {type(config).__name__}")
        self.config = config
        self.transformer = GPT2(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight                  # tied

    def cache_shape(self) -> tuple[int, int, int]:
        """``(n_layer, n_head, head_dim)``."""
        return self.config.n_layer, self.config.n_head, self.config.n_embd // self.config.n_head

    def forward(self, input_ids, attention_mask=None, cache=None, logits_to_keep: int = 0):
        """ids ``[B, T]`` -> logits ``[B, T, V]`` (the last ``logits_to_keep`` only when > 0);
        positions past ``n_positions`` are an ``InputError``."""
        ids = self.token_ids(input_ids)
        ctx = AttentionContext.build(ids.shape[0], ids.shape[1], attention_mask, cache)
        check_positions(ctx.positions, self.config.n_positions)
        h = self.transformer(ids, ctx)                                      # [B, T, d]
        ctx.finish()
        if logits_to_keep:
            h = h[:, -int(logits_to_keep):]                                 # [B, T, d] -> [B, n, d]
        return self.lm_head(h)                                              # [B, T, V]

    def generate(self, input_ids, max_new_tokens: int | None = None, do_sample: bool | None = None,
                 temperature: float | None = None, top_k: int | None = None, **kwargs) -> np.ndarray:
        """Continue ``input_ids``; sampling with ``temperature`` / ``top_k`` when ``do_sample`` (the crate's API)."""
        from axon_llm.generation import generate

        return generate(self, input_ids, max_new_tokens=max_new_tokens, do_sample=do_sample,
                        temperature=temperature, top_k=top_k, **kwargs)

    def generate_greedy(self, input_ids, max_new_tokens: int = 24, **kwargs) -> np.ndarray:
        """Greedy continuation (argmax every step)."""
        return self.generate(input_ids, max_new_tokens=max_new_tokens, do_sample=False, **kwargs)
