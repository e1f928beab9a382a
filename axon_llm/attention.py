"""Multi-head attention shared by every transformer here: causal or not, GQA, sliding window,
(partial) RoPE, padding masks, and an explicit KV cache.

Glossary: ``B`` batch, ``T`` new tokens (queries), ``S`` keys attended (cache + new), ``H`` query
heads, ``Hkv`` key/value heads (``H % Hkv == 0``; GQA shares each K/V head among ``H / Hkv``
query heads without copying), ``Dh`` head dim, ``W`` sliding window.

The core is ``F.scaled_dot_product_attention``, which picks the kernel. Its
``is_causal`` is bottom-right aligned — the ``T`` queries are the *last* ``T`` of the ``S``
positions — so the same call serves a full forward (``T == S``) and cached decoding
(``T < S``). ``window=W`` lets query ``p`` see keys ``p - W < j <= p``; because it is stated on
slot indices, the rule holds across cache steps, however long the cache has grown.

One forward call computes an :class:`AttentionContext` once (positions, padding mask, cache
slot) and hands it to every layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import axon
import axon.nn as nn
import axon.nn.functional as F

from axon_llm.cache import KVCache
from axon_llm.errors import InputError
from axon_llm.rope import RotaryEmbedding, apply_rotary_pos_emb

__all__ = ["AttentionContext", "attend", "split_heads", "merge_heads", "MultiHeadAttention"]


@dataclass
class AttentionContext:
    """What every layer of one forward call shares.

    ``positions [B, T]`` position ids of the new tokens; ``key_mask [B, S]`` (``None`` = no
    padding anywhere) marks real keys; ``cache`` and ``start`` (its slot for the first new token).
    """

    positions: np.ndarray
    key_mask: np.ndarray | None
    cache: KVCache | None
    start: int
    new_mask: np.ndarray
    router_logits: list = field(default_factory=list)   # MoE layers append theirs ([B*T, E] each)
    _rope: dict | None = None

    @classmethod
    def build(cls, batch: int, t: int, attention_mask=None, cache: KVCache | None = None) -> "AttentionContext":
        """Positions and masks for ``t`` new tokens.

        ``attention_mask`` (1 = real token, 0 = padding) is ``[B, T]`` for the new tokens or, as
        transformers passes it while generating, ``[B, S]`` for the cache plus the new tokens.
        Position ids follow transformers' generate: ``cumsum(mask) - 1`` over real tokens.
        """
        start = 0 if cache is None else cache.length
        if cache is not None:
            if cache.batch_size != batch:
                raise InputError(f"the cache was made for batch size {cache.batch_size}, got {batch}")
            if start + t > cache.max_length:
                raise InputError(f"the KV cache holds {cache.max_length} tokens; {start} are used and {t} more "
                                 "were fed (make it with a larger max_length)")
        if attention_mask is None:
            new_mask = np.ones((batch, t), dtype=np.int64)
        else:
            m = np.asarray(attention_mask.numpy() if isinstance(attention_mask, axon.Tensor) else attention_mask)
            if m.ndim != 2 or m.shape[0] != batch or m.shape[1] not in (t, start + t):
                raise InputError(f"attention_mask must be [batch, {t}] (or [batch, {start + t}] with the cache), "
                                 f"got shape {list(m.shape)}")
            if not np.isin(m, (0, 1)).all():
                raise InputError("attention_mask must hold only 0 and 1")
            new_mask = m[:, -t:].astype(np.int64)
        seen = np.zeros(batch, dtype=np.int64) if cache is None else cache.seen
        positions = seen[:, None] + np.cumsum(new_mask, axis=1) - 1          # [B, T]
        positions = np.where(new_mask == 1, positions, np.maximum(positions, 0))
        padded = (new_mask == 0).any() or (cache is not None and not cache.key_mask[:, :start].all())
        key_mask = None
        if padded:
            past = np.ones((batch, 0), bool) if cache is None else cache.key_mask[:, :start]
            key_mask = np.concatenate([past, new_mask.astype(bool)], axis=1)  # [B, S]
        return cls(positions=positions, key_mask=key_mask, cache=cache, start=start, new_mask=new_mask)

    def rope(self, rotary: RotaryEmbedding):
        """cos/sin ``[B, 1, T, D]`` for these positions, computed once per call and rotary."""
        if self._rope is None:
            self._rope = {}
        key = id(rotary)
        if key not in self._rope:
            self._rope[key] = rotary.cos_sin(self.positions)
        return self._rope[key]

    def finish(self) -> None:
        """Advance the cache by the tokens of this call (after every layer wrote its K/V)."""
        if self.cache is not None:
            self.cache.advance(self.new_mask)


def _no_graph(x) -> bool:
    """True when no autograd node would be recorded for ``x`` (no_grad, or x needs no gradient)."""
    return not (axon.is_grad_enabled() and x.requires_grad)


def split_heads(x, num_heads: int, head_dim: int):
    """``[B, T, H * Dh] -> [B, H, T, Dh]`` (a view; on the array when no graph is recorded)."""
    b, t, _ = x.shape
    if _no_graph(x):        # the same view without two autograd nodes: decoding pays per op
        return axon.as_tensor(x.data.reshape(b, t, num_heads, head_dim).transpose(0, 2, 1, 3))
    return x.reshape(b, t, num_heads, head_dim).transpose(1, 2)


def merge_heads(x):
    """``[B, H, T, Dh] -> [B, T, H * Dh]`` (on the array when no graph is recorded)."""
    b, h, t, d = x.shape
    if _no_graph(x):
        return axon.as_tensor(np.ascontiguousarray(x.data.transpose(0, 2, 1, 3)).reshape(b, t, h * d))
    return x.transpose(1, 2).reshape(b, t, h * d)


def attend(q, k, v, ctx: AttentionContext | None, *, causal: bool, window: int | None = None,
           scale: float | None = None, dropout_p: float = 0.0):
    """Scaled dot-product attention of ``q [B, H, T, Dh]`` over ``k, v [B, Hkv, S, Dh]`` -> ``[B, H, T, Dh]``.

    ``F.scaled_dot_product_attention`` with this call's padding (``ctx.key_mask``) as its
    ``key_mask``: it applies the one visibility rule (``axon_kernels.visible_mask``) and picks
    the kernel (BLAS without a gradient, flash or the composite with one).
    """
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale,
                                          enable_gqa=k.shape[1] != q.shape[1], window=window,
                                          key_mask=None if ctx is None else ctx.key_mask)


class MultiHeadAttention(nn.Module):
    """LLaMA-style attention: ``q_proj, k_proj, v_proj, o_proj`` (HF names), RoPE, GQA, window.

    Subclasses change one thing each: Phi names the output ``dense`` and rotates part of each
    head; Phi-3 fuses ``qkv_proj``. ``layer_idx`` selects this layer's slot in a ``KVCache``.
    """

    out_name = "o_proj"

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
                 layer_idx: int, rotary: RotaryEmbedding | None = None, bias: bool = False,
                 out_bias: bool | None = None, sliding_window: int | None = None, causal: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.layer_idx, self.sliding_window, self.causal, self.dropout = layer_idx, sliding_window, causal, dropout
        self.rotary = rotary
        self.scale: float | None = None                      # score scale; None = head_dim ** -0.5
        self.make_projections(hidden_size, bias)
        setattr(self, self.out_name, nn.Linear(num_heads * head_dim, hidden_size,
                                               bias=bias if out_bias is None else out_bias))

    def make_projections(self, hidden_size: int, bias: bool) -> None:
        """Create the input projections (``q_proj``, ``k_proj``, ``v_proj``)."""
        self.q_proj = nn.Linear(hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden_size, self.num_kv_heads * self.head_dim, bias=bias)

    def project_qkv(self, x):
        """``x [B, T, d]`` -> ``q [B, H, T, Dh]``, ``k, v [B, Hkv, T, Dh]``."""
        q = split_heads(self.q_proj(x), self.num_heads, self.head_dim)
        k = split_heads(self.k_proj(x), self.num_kv_heads, self.head_dim)
        v = split_heads(self.v_proj(x), self.num_kv_heads, self.head_dim)
        return q, k, v

    def forward(self, x, ctx: AttentionContext):
        """``x [B, T, d]`` -> ``[B, T, d]``; reads and writes this layer's cache slot when ``ctx.cache``."""
        q, k, v = self.project_qkv(x)                                      # [B, H|Hkv, T, Dh]
        if self.rotary is not None:
            cos, sin = ctx.rope(self.rotary)
            q, k = apply_rotary_pos_emb(q, cos, sin), apply_rotary_pos_emb(k, cos, sin)
        if ctx.cache is not None:
            k, v = ctx.cache.update(self.layer_idx, k, v)                  # views [B, Hkv, S, Dh]
        out = attend(q, k, v, ctx, causal=self.causal, window=self.sliding_window, scale=self.scale,
                     dropout_p=self.dropout if self.training else 0.0)      # [B, H, T, Dh]
        return getattr(self, self.out_name)(merge_heads(out))              # [B, T, d]
