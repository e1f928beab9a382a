"""Chimera: differential attention (Ye et al., "Differential Transformer", 2024) + sparse MoE.

Glossary: ``B`` batch, ``T`` new tokens, ``S`` keys (cache + new), ``H`` heads, ``Hkv`` kv heads,
``Dh`` head dim (Q and K heads are split into two halves of ``Dh / 2``), ``E`` experts, ``k`` top-k.

Block (pre-norm residual)::

    x += DiffAttn(RMSNorm(x))
    x += MoE(RMSNorm(x))                      router softmax -> top-k -> renormalise; SwiGLU experts

Differential attention, per head (causal, RoPE on each half)::

    [Q1 | Q2] = q_proj(x),  [K1 | K2] = k_proj(x),  V = v_proj(x)
    A_i = softmax(Q_i K_i^T / sqrt(Dh / 2) + causal mask)
    lambda = exp(lambda_q1 . lambda_k1) - exp(lambda_q2 . lambda_k2) + lambda_init
    lambda_init = 0.8 - 0.6 exp(-0.3 * layer_index)
    head = RMSNorm((A_1 - lambda A_2) V) * (1 - lambda_init)
    out = o_proj(concat(heads))

``(A_1 - lambda A_2) V = A_1 V - lambda A_2 V``, so each half is one ordinary causal attention
call (flash kernel, KV cache, GQA) and the difference is taken on the outputs.

The MoE is :class:`axon_llm.moe.SparseMoE` (shared with Mixtral). ``forward_with_loss`` also
returns the Switch-Transformer load-balancing loss, averaged over layers; the training loss is
``CE + router_aux_loss_coef * lb_loss`` (:meth:`ChimeraForCausalLM.loss`). The math and the lines that
implement it are in docs/models/chimera.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

import axon
import axon.nn.functional as F
from axon import nn
from axon_llm.attention import AttentionContext, MultiHeadAttention, attend, merge_heads
from axon_llm.blocks import CausalLM, normal_embedding
from axon_llm.config import ModelConfig, check_decoder, check_eps, check_rotary, prepare_rope
from axon_llm.errors import ConfigError, InputError, UnsupportedError
from axon_llm.models.llama import LLaMAModel
from axon_llm.moe import SparseMoE, load_balancing_loss
from axon_llm.rope import RotaryEmbedding, apply_rotary_pos_emb

__all__ = ["ChimeraConfig", "ChimeraBackbone", "ChimeraForCausalLM", "ChimeraModel", "DifferentialAttention",
           "ChimeraBlock", "lambda_init_fn"]


def lambda_init_fn(layer_idx: int) -> float:
    """``0.8 - 0.6 exp(-0.3 * layer_idx)`` (Differential Transformer, layer index from 0)."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer_idx)


@dataclass
class ChimeraConfig(ModelConfig):
    """Chimera hyper-parameters (HF-style names) and the crate's presets."""

    model_type: ClassVar[str] = "chimera"
    architecture: ClassVar[str] = "ChimeraForCausalLM"

    vocab_size: int = 32000
    hidden_size: int = 512
    num_hidden_layers: int = 16
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None
    num_local_experts: int = 8
    num_experts_per_tok: int = 2
    intermediate_size: int = 2048
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    router_aux_loss_coef: float = 0.01
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = None

    @classmethod
    def _prepare(cls, d: dict[str, Any]) -> dict[str, Any]:
        d = prepare_rope(d, cls.rope_theta)
        if d.pop("rope_scaling") is not None:
            raise UnsupportedError("ChimeraConfig: rope_scaling is not supported")
        return d

    def __post_init__(self) -> None:
        check_decoder(self, "num_local_experts", "num_experts_per_tok")
        if self.head_dim % 4:
            raise ConfigError(
                f"ChimeraConfig: head_dim ({self.head_dim}) must be a multiple of 4: differential attention "
                f"splits each head into two halves, and RoPE rotates channel pairs within each half "
                f"(odd head dims cannot be split at all)")
        if self.num_experts_per_tok > self.num_local_experts:
            raise ConfigError(f"ChimeraConfig: num_experts_per_tok (top_k = {self.num_experts_per_tok}) cannot "
                              f"exceed num_local_experts ({self.num_local_experts})")
        check_eps(self, "rms_norm_eps")
        check_rotary(self)

    @property
    def head_dim(self) -> int:
        """Width of one attention head: hidden_size // num_attention_heads."""
        return self.hidden_size // self.num_attention_heads

    def num_parameters(self) -> int:
        """Parameter count from the config alone (every expert counted)."""
        d, f, V, hd = self.hidden_size, self.intermediate_size, self.vocab_size, self.head_dim
        H, Hkv, E = self.num_attention_heads, self.num_key_value_heads, self.num_local_experts
        attn = d * H * hd + 2 * d * Hkv * hd + H * hd * d + 4 * (hd // 2) + hd   # + lambdas + subln
        moe = d * E + E * 3 * d * f
        per_layer = attn + moe + 2 * d
        head = 0 if self.tie_word_embeddings else V * d
        return V * d + self.num_hidden_layers * per_layer + d + head

    def num_active_parameters(self) -> int:
        """Parameters used per token (only top-k experts count)."""
        unused = self.num_local_experts - self.num_experts_per_tok
        return self.num_parameters() - self.num_hidden_layers * unused * 3 * self.hidden_size * self.intermediate_size

    # presets: vocab / d / layers / heads / experts / top-k / ffn / ctx
    @classmethod
    def _preset(cls, vocab, d, layers, heads, experts, top_k, ffn, ctx) -> "ChimeraConfig":
        return cls(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                   num_local_experts=experts, num_experts_per_tok=top_k, intermediate_size=ffn,
                   max_position_embeddings=ctx)

    @classmethod
    def default_2b(cls) -> "ChimeraConfig":
        """vocab 32000, d 512, 16 layers, 8 heads, 8 experts top-2, ffn 2048, ctx 2048."""
        return cls._preset(32000, 512, 16, 8, 8, 2, 2048, 2048)

    @classmethod
    def small(cls) -> "ChimeraConfig":
        """vocab 32000, d 256, 6 layers, 4 heads, 8 experts top-2, ffn 1024, ctx 512."""
        return cls._preset(32000, 256, 6, 4, 8, 2, 1024, 512)

    @classmethod
    def tiny(cls) -> "ChimeraConfig":
        """vocab 1000, d 64, 2 layers, 4 heads, 4 experts top-2, ffn 256, ctx 128."""
        return cls._preset(1000, 64, 2, 4, 4, 2, 256, 128)


class DifferentialAttention(MultiHeadAttention):
    """Causal differential attention with RoPE, GQA and a KV cache (see the module docstring)."""

    # diff vs LLaMA's attention: two softmax maps per head (half-width Q/K, RoPE per half),
    # subtracted with a learned lambda, then a per-head RMSNorm scaled by (1 - lambda_init)

    def __init__(self, config: ChimeraConfig, layer_idx: int, rotary: RotaryEmbedding):
        Dh = config.head_dim
        super().__init__(config.hidden_size, config.num_attention_heads, config.num_key_value_heads, Dh,
                         layer_idx=layer_idx, rotary=rotary)     # rotary: dim Dh / 2 (one half-head)
        self.lambda_init = lambda_init_fn(layer_idx)

        def lambda_init(arr, rng):                            # N(0, 0.1), as the paper's code
            arr[...] = rng.standard_normal(arr.shape) * 0.1

        half = Dh // 2
        self.lambda_q1 = nn.Parameter.lazy((half,), init=lambda_init)
        self.lambda_k1 = nn.Parameter.lazy((half,), init=lambda_init)
        self.lambda_q2 = nn.Parameter.lazy((half,), init=lambda_init)
        self.lambda_k2 = nn.Parameter.lazy((half,), init=lambda_init)
        self.subln = nn.RMSNorm(Dh, eps=1e-5)                 # per-head norm, shared by all heads

    def lambda_full(self) -> axon.Tensor:
        """``exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init`` (a scalar Tensor)."""
        l1 = (self.lambda_q1 * self.lambda_k1).sum().exp()
        l2 = (self.lambda_q2 * self.lambda_k2).sum().exp()
        return l1 - l2 + self.lambda_init

    def forward(self, x, ctx: AttentionContext):
        """x [B, T, d] -> [B, T, d]."""
        half = self.head_dim // 2
        q, k, v = self.project_qkv(x)                         # [B, H, T, Dh], [B, Hkv, T, Dh] x2
        cos, sin = ctx.rope(self.rotary)                      # [B, 1, T, Dh/2]
        q = axon.cat([apply_rotary_pos_emb(q[..., :half], cos, sin),
                      apply_rotary_pos_emb(q[..., half:], cos, sin)], dim=-1)  # RoPE per half
        k = axon.cat([apply_rotary_pos_emb(k[..., :half], cos, sin),
                      apply_rotary_pos_emb(k[..., half:], cos, sin)], dim=-1)
        if ctx.cache is not None:
            k, v = ctx.cache.update(self.layer_idx, k, v)  # [B, Hkv, S, Dh]
        # A_i V with Q_i, K_i of width Dh/2 and V of width Dh: pad Q_i, K_i with zeros to Dh
        # (the scores Q_i K_i^T are unchanged; the scale is given explicitly) so one attention
        # call of the usual shape computes each half.
        scale = 1.0 / math.sqrt(half)
        zq = axon.zeros(*q.shape[:-1], half, dtype=q.dtype)
        zk = axon.zeros(*k.shape[:-1], half, dtype=k.dtype)
        q1, q2 = axon.cat([q[..., :half], zq], dim=-1), axon.cat([q[..., half:], zq], dim=-1)  # [B, H, T, Dh]
        k1, k2 = axon.cat([k[..., :half], zk], dim=-1), axon.cat([k[..., half:], zk], dim=-1)  # [B, Hkv, S, Dh]
        o1 = attend(q1, k1, v, ctx, causal=True, scale=scale)   # A1 V  [B, H, T, Dh]
        o2 = attend(q2, k2, v, ctx, causal=True, scale=scale)   # A2 V  [B, H, T, Dh]
        o = o1 - self.lambda_full() * o2                      # (A1 - lambda A2) V
        o = self.subln(o) * (1.0 - self.lambda_init)         # per-head RMSNorm over Dh
        return self.o_proj(merge_heads(o))                    # [B, H, T, Dh] -> [B, T, d]


class ChimeraBlock(nn.Module):
    """``x += self_attn(input_layernorm(x)); x += block_sparse_moe(post_attention_layernorm(x))``."""

    def __init__(self, config: ChimeraConfig, layer_idx: int, rotary: RotaryEmbedding):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = DifferentialAttention(config, layer_idx, rotary)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.block_sparse_moe = SparseMoE(config.hidden_size, config.intermediate_size,
                                          config.num_local_experts, config.num_experts_per_tok)

    def forward(self, x, ctx: AttentionContext):
        """[B, T, d] -> [B, T, d]; appends the router logits [B*T, E] to ``ctx.router_logits`` (as Mixtral)."""
        x = x + self.self_attn(self.input_layernorm(x), ctx)
        y, router_logits = self.block_sparse_moe(self.post_attention_layernorm(x))
        ctx.router_logits.append(router_logits)
        return x + y


class ChimeraBackbone(LLaMAModel):
    """``model.*``: embed_tokens -> layers -> norm, built as LLaMA's."""

    # diff vs LLaMA: Chimera's blocks, RoPE over half a head (each Q/K half is rotated), N(0, std) embeddings
    layer_class = ChimeraBlock

    def make_embedding(self, config: ChimeraConfig) -> nn.Embedding:
        """``[V, d]`` ~ N(0, initializer_range)."""
        return normal_embedding(config)

    def make_rotary(self, config: ChimeraConfig) -> RotaryEmbedding:
        """Plain RoPE over ``head_dim / 2`` channels (one half-head)."""
        return RotaryEmbedding(config.head_dim // 2, config.max_position_embeddings, config.rope_theta)


class ChimeraForCausalLM(CausalLM):
    """Chimera causal LM: ``logits = model(input_ids, attention_mask=None, cache=None)``;
    ``logits, lb_loss = model.forward_with_loss(ids, labels)`` for training."""

    # diff vs LLaMA: differential attention + sparse MoE layers, and a load-balancing loss for training
    config_class = ChimeraConfig
    backbone_class = ChimeraBackbone
    architectures = {"ChimeraForCausalLM": "chimera", "ChimeraModel": "chimera"}   # ChimeraModel: older files
    train_name = "chimera"

    def forward_with_loss(self, ids, labels=None):
        """``(logits [B, T, V], lb_loss)``: the load-balancing loss averaged over layers.

        ``labels`` ([B, T] next-token targets aligned with ``logits``, ``-100`` = ignore) are
        checked here and used by :meth:`loss`; the balancing statistics count every token.
        """
        logits, router_logits = self.forward_with_router_logits(ids)
        if labels is not None:
            lab = np.asarray(labels.numpy() if isinstance(labels, axon.Tensor) else labels)
            if lab.shape != tuple(logits.shape[:2]):
                raise InputError(f"labels shape {lab.shape} must equal input_ids shape {tuple(logits.shape[:2])}")
        k = self.config.num_experts_per_tok
        losses = [load_balancing_loss(rl, k, self.config.num_local_experts) for rl in router_logits]
        lb = losses[0]
        for extra in losses[1:]:
            lb = lb + extra
        return logits, lb * (1.0 / len(losses))

    def loss(self, ids, labels):
        """Training loss ``CE(logits, labels) + router_aux_loss_coef * lb_loss`` (a scalar Tensor)."""
        logits, lb = self.forward_with_loss(ids, labels)
        lab = np.asarray(labels.numpy() if isinstance(labels, axon.Tensor) else labels).astype(np.int64)
        V = self.config.vocab_size
        ce = F.cross_entropy(logits.reshape(-1, V), lab.reshape(-1), ignore_index=-100)
        return ce + self.config.router_aux_loss_coef * lb

    def forward_with_aux_loss(self, input_ids):
        """``(logits, router_aux_loss_coef * lb_loss)``: what training adds to the cross-entropy."""
        logits, lb = self.forward_with_loss(input_ids)
        return logits, lb * self.config.router_aux_loss_coef


#: the name older code and saved files use: the same class
ChimeraModel = ChimeraForCausalLM
