"""Qwen2 / Qwen2.5 (HF ``Qwen2ForCausalLM``) as a variant of LLaMA.

Two differences from LLaMA, each marked ``# diff vs LLaMA:`` below:

- **biases on q_proj, k_proj, v_proj** (not on o_proj);
- an optional **sliding window on the upper layers**: with ``use_sliding_window``, layer ``i``
  attends through a window of ``sliding_window`` keys when ``i >= max_window_layers``
  (transformers' ``layer_types``: ``"sliding_attention"`` or ``"full_attention"`` per layer)::

      layers  0 .. max_window_layers-1   full causal attention
      layers  max_window_layers ..       query p sees keys p - W < j <= p

The released models have ``rope_theta`` 1e6 and, in the small sizes, tied embeddings. Everything
else (RMSNorm, rotate_half RoPE, GQA, SwiGLU, HF names) is LLaMA's (``models/llama.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from axon_llm.attention import MultiHeadAttention
from axon_llm.config import check_window
from axon_llm.errors import ConfigError
from axon_llm.models.llama import LLaMAConfig, LLaMADecoderLayer, LLaMAForCausalLM, LLaMAModel

__all__ = ["Qwen2Config", "Qwen2DecoderLayer", "Qwen2Model", "Qwen2ForCausalLM"]

LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclass
class Qwen2Config(LLaMAConfig):
    """Qwen2 (HF ``Qwen2Config`` field names and defaults)."""

    model_type: ClassVar[str] = "qwen2"
    architecture: ClassVar[str] = "Qwen2ForCausalLM"

    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 22016
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = 32
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    # diff vs LLaMA: q/k/v biases and a sliding window on the layers from max_window_layers on
    use_sliding_window: bool = False
    sliding_window: int | None = 4096
    max_window_layers: int = 28
    layer_types: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.use_sliding_window, bool):
            raise ConfigError(f"Qwen2Config.use_sliding_window must be true or false, got {self.use_sliding_window!r}")
        if self.use_sliding_window:
            check_window(self, optional=False)
        if self.layer_types is None:
            window = self.use_sliding_window and self.sliding_window is not None
            self.layer_types = ["sliding_attention" if window and i >= self.max_window_layers else "full_attention"
                                for i in range(self.num_hidden_layers)]
        if not isinstance(self.layer_types, list) or len(self.layer_types) != self.num_hidden_layers \
                or any(t not in LAYER_TYPES for t in self.layer_types):
            raise ConfigError(f"Qwen2Config.layer_types must list one of {LAYER_TYPES} per layer "
                              f"({self.num_hidden_layers}), got {self.layer_types!r}")
        if "sliding_attention" in self.layer_types:
            check_window(self, optional=False)

    def window_of(self, layer_idx: int) -> int | None:
        """The sliding window of layer ``layer_idx`` (``None``: full causal attention)."""
        return self.sliding_window if self.layer_types[layer_idx] == "sliding_attention" else None

    def to_dict(self) -> dict[str, Any]:
        """The config.json dict (``attention_bias`` is implied by the architecture, as in transformers)."""
        out = super().to_dict()
        out.pop("attention_bias", None)
        return out

    def _attention_parameters(self) -> int:
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        return super()._attention_parameters() + q + 2 * kv          # diff vs LLaMA: q/k/v biases

    @classmethod
    def tiny(cls) -> "Qwen2Config":
        """vocab 32000, d 256, ffn 512, 4 layers, 4 heads / 2 KV heads, tied, theta 1e6."""
        return cls(vocab_size=32000, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                   rope_theta=1e6, tie_word_embeddings=True)

    @classmethod
    def qwen2_5_0_5b(cls) -> "Qwen2Config":
        """Qwen2.5-0.5B(-Instruct), 494M: d 896, 24 layers, 14 heads / 2 KV heads, tied."""
        return cls(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                   num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True,
                   max_window_layers=21, bos_token_id=151643, eos_token_id=151645)

    @classmethod
    def qwen2_5_1_5b(cls) -> "Qwen2Config":
        """Qwen2.5-1.5B(-Instruct), 1.54B: d 1536, 28 layers, 12 heads / 2 KV heads, tied."""
        return cls(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                   num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True,
                   max_window_layers=21, bos_token_id=151643, eos_token_id=151645)


class Qwen2DecoderLayer(LLaMADecoderLayer):
    """LLaMA's layer with q/k/v biases and, on the upper layers, a sliding window."""

    def make_attention(self, config: Qwen2Config, layer_idx: int, rotary):
        """LLaMA's attention with biases on q/k/v only and this layer's window."""
        attn = MultiHeadAttention(
            config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim,
            layer_idx=layer_idx, rotary=rotary, bias=True, out_bias=False,   # diff vs LLaMA: q/k/v biases
            causal=True, dropout=config.attention_dropout)
        attn.sliding_window = config.window_of(layer_idx)                     # diff vs LLaMA: window per layer
        return attn


class Qwen2Model(LLaMAModel):
    """HF ``Qwen2Model``."""

    layer_class = Qwen2DecoderLayer


class Qwen2ForCausalLM(LLaMAForCausalLM):
    """HF ``Qwen2ForCausalLM``."""

    config_class = Qwen2Config
    backbone_class = Qwen2Model
    architectures = {"Qwen2ForCausalLM": "qwen2"}
    train_name = "qwen2"
