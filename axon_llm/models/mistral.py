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

from axon_llm.attention import AttentionContext, MultiHeadAttention
from axon_llm.config import MistralConfig
from axon_llm.models.llama import LLaMADecoderLayer, LLaMAForCausalLM, LLaMAModel
from axon_llm.moe import SparseMoE

__all__ = ["MistralConfig", "MistralDecoderLayer", "MistralModel", "MistralForCausalLM"]


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
    """HF ``MistralForCausalLM``; with ``config.num_local_experts`` set, HF ``MixtralForCausalLM``."""

    config_class = MistralConfig
    model_class = MistralModel

    @property
    def hf_architecture(self) -> str:
        """``MixtralForCausalLM`` for the MoE variant, else ``MistralForCausalLM``."""
        return "MixtralForCausalLM" if self.config.is_moe else "MistralForCausalLM"

    def forward_with_router_logits(self, input_ids, attention_mask=None, cache=None):
        """``(logits [B, T, V], router_logits)``: one ``[B*T, E]`` Tensor per MoE layer (empty for Mistral)."""
        logits, ctx = self.run(input_ids, attention_mask, cache)
        return logits, list(ctx.router_logits)
