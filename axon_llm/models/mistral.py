"""Mistral and Mixtral (HF ``MistralForCausalLM``, ``MixtralForCausalLM``) as variants of LLaMA.

Mistral is LLaMA with one difference: **sliding-window attention** — query ``i`` attends keys
``i - W < j <= i`` (``W = config.sliding_window``), stated on cache slots so the rule holds
however long the KV cache grows::

    keys   0 1 2 3 4 5 6 7
    q=7            . x x x x      (W = 4: keys 4..7)

Mixtral (a ``MistralConfig`` with ``num_local_experts``) changes one more thing: every MLP is a
sparse mixture of SwiGLU experts (``block_sparse_moe``, see ``axon_llm.moe``)::

    router p = softmax(gate(h)); top-2 experts, weights renormalised; y = sum_j w_j * expert_j(h)

Everything else (RMSNorm, RoPE, GQA, names) is inherited from ``models/llama.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from axon_llm.attention import AttentionContext, MultiHeadAttention
from axon_llm.config import check_positive, check_window
from axon_llm.errors import ConfigError
from axon_llm.models.llama import LLaMAConfig, LLaMADecoderLayer, LLaMAForCausalLM, LLaMAModel
from axon_llm.moe import SparseMoE

__all__ = ["MistralConfig", "MistralDecoderLayer", "MistralModel", "MistralForCausalLM"]


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
        check_window(self)                                   # diff vs LLaMA: a sliding window
        if self.num_local_experts is not None:
            check_positive(self, "num_local_experts", "num_experts_per_tok")
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


class MistralDecoderLayer(LLaMADecoderLayer):
    """LLaMA's layer with a sliding window, and for Mixtral a sparse-MoE feed-forward."""

    def make_attention(self, config: MistralConfig, layer_idx, rotary) -> MultiHeadAttention:
        """LLaMA's attention with ``sliding_window = config.sliding_window``."""
        attn = super().make_attention(config, layer_idx, rotary)
        attn.sliding_window = config.sliding_window          # diff vs LLaMA: sliding window
        return attn

    def make_feed_forward(self, config: MistralConfig) -> None:
        """LLaMA's ``mlp`` for Mistral; a ``SparseMoE`` named ``block_sparse_moe`` for Mixtral."""
        if not config.is_moe:
            return super().make_feed_forward(config)
        # diff vs LLaMA (Mixtral): sparse MoE instead of the MLP, HF name block_sparse_moe
        self.block_sparse_moe = SparseMoE(config.hidden_size, config.intermediate_size,
                                          config.num_local_experts, config.num_experts_per_tok)

    def feed_forward(self, h, ctx: AttentionContext):
        """``[B, T, d] -> [B, T, d]``; Mixtral also appends its router logits ``[B*T, E]`` to ``ctx.router_logits``."""
        if not hasattr(self, "block_sparse_moe"):
            return super().feed_forward(h, ctx)
        y, router_logits = self.block_sparse_moe(h)
        ctx.router_logits.append(router_logits)              # for a load-balancing loss
        return y


class MistralModel(LLaMAModel):
    """HF ``MistralModel`` / ``MixtralModel``."""

    layer_class = MistralDecoderLayer


class MistralForCausalLM(LLaMAForCausalLM):
    """HF ``MistralForCausalLM``; with ``config.num_local_experts`` set, HF ``MixtralForCausalLM``
    (its router logits: :meth:`~axon_llm.blocks.CausalLM.forward_with_router_logits`)."""

    # diff vs LLaMA: its config and backbone; two HF architectures (Mixtral = the MoE variant)
    config_class = MistralConfig
    backbone_class = MistralModel
    architectures = {"MistralForCausalLM": "mistral", "MixtralForCausalLM": "mixtral"}
    train_name = "mistral"
