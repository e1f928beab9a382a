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

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

import axon.nn as nn
from axon.nn.parameter import Parameter

from axon_llm.attention import AttentionContext, attend, merge_heads, split_heads
from axon_llm.blocks import CausalLM, activation
from axon_llm.config import ModelConfig, check_activation, check_heads, check_positive
from axon_llm.embeddings import TokenEmbedding, check_positions, gpt2_embed
from axon_llm.errors import UnsupportedError

__all__ = ["GPT2Config", "Conv1D", "CONV1D_WEIGHTS", "GPT2Attention", "GPT2MLP", "GPT2Block", "GPT2Model",
           "GPT2LMHead", "GPT2", "GPT2ForCausalLM"]


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
        check_positive(self, "vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
        if self.n_inner is not None:
            check_positive(self, "n_inner")
        check_heads(self)                                    # via the HF aliases hidden_size / num_attention_heads
        check_activation(self, "activation_function")
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


class GPT2Model(nn.Module):
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
    """HF ``GPT2LMHeadModel``: ``transformer`` + ``lm_head`` tied to ``transformer.wte``.

    The class keeps HF's and the contract's GPT-2 name; ``GPT2ForCausalLM`` is the same class.
    """

    # diff vs LLaMA: HF prefix "transformer", learned positions (checked in context), always tied
    config_class = GPT2Config
    backbone_class = GPT2Model
    backbone_name = "transformer"
    embedding_path = "transformer.wte"
    architectures = {"GPT2LMHeadModel": "gpt2"}
    train_name = "gpt2"
    hf_init = True

    def cache_shape(self) -> tuple[int, int, int]:
        """``(n_layer, n_head, head_dim)``."""
        return self.config.n_layer, self.config.n_head, self.config.n_embd // self.config.n_head

    def context(self, ids, attention_mask=None, cache=None):
        """The usual context; positions past ``n_positions`` are an ``InputError``."""
        ctx = super().context(ids, attention_mask, cache)
        check_positions(ctx.positions, self.config.n_positions)   # diff vs LLaMA: a learned position table
        return ctx

    def generate(self, input_ids, max_new_tokens: int | None = None, do_sample: bool | None = None,
                 temperature: float | None = None, top_k: int | None = None, **kwargs) -> np.ndarray:
        """Continue ``input_ids``; sampling with ``temperature`` / ``top_k`` when ``do_sample`` (the crate's API)."""
        from axon_llm.generation import generate

        return generate(self, input_ids, max_new_tokens=max_new_tokens, do_sample=do_sample,
                        temperature=temperature, top_k=top_k, **kwargs)

    def generate_greedy(self, input_ids, max_new_tokens: int = 24, **kwargs) -> np.ndarray:
        """Greedy continuation (argmax every step)."""
        return self.generate(input_ids, max_new_tokens=max_new_tokens, do_sample=False, **kwargs)


#: the contract's name of the backbone, and the naming rule's name of the LM: the same classes
GPT2 = GPT2Model
GPT2ForCausalLM = GPT2LMHead
