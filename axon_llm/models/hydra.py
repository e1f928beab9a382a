"""Hydra: a hybrid of Mamba mixers and sliding-window attention (Jamba-style, no positional encoding).

Layer ``i`` is a Mamba block when ``i`` is even and a sliding-window attention block when odd;
both are pre-norm residual blocks followed by a SwiGLU MLP::

    x += mixer(RMSNorm(x))          mixer = MambaMixer (i even) | WindowAttention (i odd)
    x += SwiGLU(RMSNorm(x))

Embedding -> layers -> RMSNorm -> lm_head. The Mamba mixer is the one SSM uses
(axon_llm/mamba.py), so it inherits SSM's transformers parity. Window attention is causal with
window ``W``: query ``p`` sees keys ``j`` with ``p - W < j <= p``. There is no RoPE: the SSM
layers carry position. Streaming decode keeps, per layer, the Mamba (conv, ssm) state or a
``W``-long ring of keys and values, so the cache size does not grow with the sequence.

The math and the lines that implement it are in docs/models/hydra.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

import axon
from axon import nn
from axon_llm.attention import AttentionContext, MultiHeadAttention, attend, merge_heads
from axon_llm.blocks import CausalLM, GatedMLP, normal_embedding
from axon_llm.config import ModelConfig, check_eps, check_heads, check_positive, check_window
from axon_llm.errors import InputError
from axon_llm.cache import Cache, LayerStateCache, reorder_rows
from axon_llm.mamba import MambaMixer, MambaState
from axon_llm.models.ssm import StateContext

__all__ = ["HydraConfig", "HydraBackbone", "HydraForCausalLM", "HydraModel", "HydraCache", "WindowKVCache",
           "WindowAttention"]


@dataclass
class HydraConfig(ModelConfig):
    """Hydra hyper-parameters (HF-style names) and the crate's presets."""

    model_type: ClassVar[str] = "hydra"
    architecture: ClassVar[str] = "HydraForCausalLM"

    vocab_size: int = 32000
    hidden_size: int = 768
    num_hidden_layers: int = 24
    num_attention_heads: int = 12
    num_key_value_heads: int | None = None
    state_size: int = 16
    intermediate_size: int = 3072
    sliding_window: int = 256
    expand: int = 2
    conv_kernel: int = 4
    time_step_rank: int | str | None = "auto"
    use_conv_bias: bool = True
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 1 << 20   # no positional encoding: no length limit
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.time_step_rank in (None, "auto"):
            self.time_step_rank = math.ceil(self.hidden_size / 16)
        check_positive(self, "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                       "num_key_value_heads", "state_size", "intermediate_size", "expand", "conv_kernel",
                       "time_step_rank")
        check_window(self, optional=False)                   # every odd layer attends over the window
        check_heads(self)
        check_eps(self, "rms_norm_eps")

    @property
    def head_dim(self) -> int:
        """Width of one attention head: hidden_size // num_attention_heads."""
        return self.hidden_size // self.num_attention_heads

    @property
    def mamba_intermediate_size(self) -> int:
        """d_inner of the Mamba mixers (expand * hidden_size)."""
        return self.expand * self.hidden_size

    def is_mamba_layer(self, i: int) -> bool:
        """Even layers are Mamba mixers, odd ones window attention."""
        return i % 2 == 0

    def num_parameters(self) -> int:
        """Parameter count from the config alone."""
        d, di, n, k, r = (self.hidden_size, self.mamba_intermediate_size, self.state_size,
                          self.conv_kernel, self.time_step_rank)
        hd, f, V = self.head_dim, self.intermediate_size, self.vocab_size
        mamba = (d * 2 * di + di * k + (di if self.use_conv_bias else 0) + di * (r + 2 * n)
                 + r * di + di + di * n + di + di * d)
        attn = d * (self.num_attention_heads * hd) + 2 * d * (self.num_key_value_heads * hd) \
            + self.num_attention_heads * hd * d
        common = 2 * d + 3 * d * f                       # two norms + SwiGLU
        layers = sum(common + (mamba if self.is_mamba_layer(i) else attn)
                     for i in range(self.num_hidden_layers))
        head = 0 if self.tie_word_embeddings else V * d
        return V * d + layers + d + head

    # presets: vocab / d / layers / heads / d_state / ffn / window (expand 2, d_conv 4)
    @classmethod
    def _preset(cls, vocab, d, layers, heads, d_state, ffn, window) -> "HydraConfig":
        return cls(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                   state_size=d_state, intermediate_size=ffn, sliding_window=window, expand=2, conv_kernel=4)

    @classmethod
    def base(cls) -> "HydraConfig":
        """vocab 32000, d 768, 24 layers, 12 heads, d_state 16, ffn 3072, window 256."""
        return cls._preset(32000, 768, 24, 12, 16, 3072, 256)

    @classmethod
    def small(cls) -> "HydraConfig":
        """vocab 32000, d 256, 8 layers, 4 heads, d_state 16, ffn 1024, window 128."""
        return cls._preset(32000, 256, 8, 4, 16, 1024, 128)

    @classmethod
    def tiny(cls) -> "HydraConfig":
        """vocab 1000, d 64, 4 layers, 4 heads, d_state 8, ffn 256, window 64."""
        return cls._preset(1000, 64, 4, 4, 8, 256, 64)


class WindowKVCache(Cache):
    """A ``W``-long ring of keys/values (and their padding mask) for one window-attention layer.

    Position ``p`` lives in slot ``p % W``; only the last ``W`` positions are ever needed,
    because a query at ``p`` sees keys ``p - W < j <= p``. Fixed size: ``max_length`` is None.
    """

    max_length = None

    def __init__(self, batch_size: int, num_kv_heads: int, window: int, head_dim: int, dtype=np.float32):
        self.window = window
        self.k = np.zeros((batch_size, num_kv_heads, window, head_dim), dtype=dtype)
        self.v = np.zeros_like(self.k)
        self.mask = np.ones((batch_size, window), dtype=np.float32)
        self.seen = 0

    def __len__(self) -> int:
        return self.seen

    def recent(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The cached keys, values, mask of the last min(seen, W) positions, oldest first."""
        W, n = self.window, min(self.seen, self.window)
        order = [(self.seen - n + j) % W for j in range(n)]
        return self.k[:, :, order], self.v[:, :, order], self.mask[:, order]

    def update(self, k: np.ndarray, v: np.ndarray, mask: np.ndarray):
        """Store the new positions' k, v [B, Hkv, T, Dh] and mask [B, T]; return the keys, values
        and mask attention reads, ``[B, Hkv, P+T, Dh]`` and ``[B, P+T]`` (P = the cached ones)."""
        pk, pv, pm = self.recent()                                        # [B, Hkv, P, Dh], [B, P]
        T = k.shape[2]
        first = max(0, T - self.window)                  # older ones would be overwritten anyway
        for t in range(first, T):
            slot = (self.seen + t) % self.window
            self.k[:, :, slot], self.v[:, :, slot], self.mask[:, slot] = k[:, :, t], v[:, :, t], mask[:, t]
        self.seen += T
        return (np.concatenate([pk, k], axis=2), np.concatenate([pv, v], axis=2),
                np.concatenate([pm, mask], axis=1))

    def reorder(self, index) -> None:
        """Row ``i`` becomes row ``index[i]`` (beam search), in place."""
        reorder_rows(index, self.k, self.v, self.mask)

    def reset(self) -> None:
        """Forget everything."""
        self.k[...] = 0
        self.v[...] = 0
        self.mask[...] = 1
        self.seen = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the ring buffers (keys, values, mask)."""
        return self.k.nbytes + self.v.nbytes + self.mask.nbytes


class WindowAttention(MultiHeadAttention):
    """Causal multi-head (GQA) attention over the last ``W`` positions, no positional encoding."""

    # diff vs LLaMA's attention: no RoPE, and a W-long ring (WindowKVCache) instead of a KV cache

    def __init__(self, config: HydraConfig):
        super().__init__(config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                         config.head_dim, layer_idx=0, rotary=None, sliding_window=config.sliding_window)

    def forward(self, x, cache: WindowKVCache | None = None, mask: np.ndarray | None = None):
        """x [B, T, d] -> [B, T, d]; ``mask`` [B, T] is the padding mask of these tokens."""
        B_, T, _ = x.shape
        q, k, v = self.project_qkv(x)                                     # [B, H|Hkv, T, Dh]
        key_mask = mask
        if cache is not None:
            new_mask = mask if mask is not None else np.ones((B_, T), np.float32)
            k_all, v_all, key_mask = cache.update(k.data, v.data, new_mask)   # [B, Hkv, P+T, Dh], [B, P+T]
            past = k_all.shape[2] - T                                     # the new keys keep their gradient
            k = axon.cat([axon.as_tensor(k_all[:, :, :past]), k], dim=2)  # -> [B, Hkv, P+T, Dh]
            v = axon.cat([axon.as_tensor(v_all[:, :, :past]), v], dim=2)
        km = None if key_mask is None or key_mask.all() else key_mask > 0   # [B, S] True = real token
        ctx = AttentionContext(positions=None, key_mask=km, cache=None, start=0, new_mask=None)
        o = attend(q, k, v, ctx, causal=True, window=self.sliding_window)  # [B, H, T, Dh]
        return self.o_proj(merge_heads(o))                                # [B, T, H*Dh] -> [B, T, d]


class HydraBlock(nn.Module):
    """``x += mixer(input_layernorm(x)); x += mlp(post_attention_layernorm(x))``."""

    def __init__(self, config: HydraConfig, layer_idx: int):
        super().__init__()
        self.is_mamba = config.is_mamba_layer(layer_idx)
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if self.is_mamba:
            self.mixer = MambaMixer(config.hidden_size, config.mamba_intermediate_size, config.state_size,
                                    config.conv_kernel, config.time_step_rank, False, config.use_conv_bias)
        else:
            self.self_attn = WindowAttention(config)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size)     # SwiGLU

    def forward(self, x, state=None, mask=None):
        h = self.input_layernorm(x)
        if self.is_mamba:
            x = x + self.mixer(h, state=state, attention_mask=mask)
        else:
            x = x + self.self_attn(h, cache=state, mask=mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class HydraBackbone(nn.Module):
    """``model.*``: embed_tokens -> layers -> norm."""

    def __init__(self, config: HydraConfig):
        super().__init__()
        self.embed_tokens = normal_embedding(config)
        self.layers = nn.ModuleList([HydraBlock(config, i) for i in range(config.num_hidden_layers)])
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, ids: np.ndarray, ctx: StateContext) -> axon.Tensor:
        """[B, T] ids -> [B, T, d] hidden states (final norm applied)."""
        h = self.embed_tokens(ids)                                        # [B, T] -> [B, T, d]
        for i, layer in enumerate(self.layers):
            h = layer(h, ctx.state(i), ctx.mask)
        return self.norm(h)


class HydraCache(LayerStateCache):
    """Streaming state of a Hydra model: MambaState (even layers) or WindowKVCache (odd layers).

    Its size is fixed (independent of ``max_length``): SSM states plus ``W`` keys/values a layer.
    """

    def __init__(self, config: HydraConfig, batch_size: int, max_length: int | None = None, dtype=np.float32):
        if batch_size < 1:
            raise InputError(f"a cache needs batch_size >= 1, got {batch_size}")
        self.batch_size, self.max_length = batch_size, max_length
        self.layers = [
            MambaState(batch_size, config.mamba_intermediate_size, config.state_size, config.conv_kernel, dtype)
            if config.is_mamba_layer(i) else
            WindowKVCache(batch_size, config.num_key_value_heads, config.sliding_window, config.head_dim, dtype)
            for i in range(config.num_hidden_layers)]


class HydraForCausalLM(CausalLM):
    """Hydra causal LM: ``logits = model(input_ids, attention_mask=None, cache=None)``."""

    # diff vs LLaMA: a state context (Mamba states and window rings) instead of the attention context
    config_class = HydraConfig
    backbone_class = HydraBackbone
    architectures = {"HydraForCausalLM": "hydra", "HydraModel": "hydra"}   # HydraModel: files saved before the rename
    train_name = "hydra"

    def context(self, ids, attention_mask=None, cache: HydraCache | None = None) -> StateContext:
        """The padding mask and the per-layer streaming states of this call."""
        return StateContext.build(ids, attention_mask, cache)

    def new_cache(self, batch_size: int, max_length: int | None = None) -> HydraCache:
        """Fixed-size streaming state for ``batch_size`` sequences."""
        return HydraCache(self.config, batch_size, max_length, dtype=self.model.embed_tokens.weight.dtype)


#: the name the contract and older code use: the same class
HydraModel = HydraForCausalLM
