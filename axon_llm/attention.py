"""Multi-head attention shared by every transformer here: causal or not, GQA, sliding window,
(partial) RoPE, padding masks, and an explicit KV cache.

Glossary: ``B`` batch, ``T`` new tokens (queries), ``S`` keys attended (cache + new), ``H`` query
heads, ``Hkv`` key/value heads (``H % Hkv == 0``; GQA shares each K/V head among ``H / Hkv``
query heads without copying), ``Dh`` head dim, ``W`` sliding window.

The core is ``F.scaled_dot_product_attention`` (flash kernel when the kernels land). Its
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


def split_heads(x, num_heads: int, head_dim: int):
    """``[B, T, H * Dh] -> [B, H, T, Dh]``."""
    b, t, _ = x.shape
    return x.reshape(b, t, num_heads, head_dim).transpose(1, 2)


def merge_heads(x):
    """``[B, H, T, Dh] -> [B, T, H * Dh]``."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def _dense_mask(key_mask: np.ndarray | None, b: int, t: int, s: int, causal: bool, window: int | None) -> np.ndarray:
    """Boolean ``[B, 1, T, S]`` mask (True = attend) for the general case (padding present)."""
    q_pos = np.arange(s - t, s)[:, None]                                   # [T, 1] slot of each query
    k_pos = np.arange(s)[None, :]                                          # [1, S]
    allowed = np.ones((t, s), dtype=bool)
    if causal:
        allowed &= k_pos <= q_pos
    if window is not None:
        allowed &= k_pos > q_pos - window
    mask = np.broadcast_to(allowed, (b, t, s)).copy()                      # [B, T, S]
    if key_mask is not None:
        mask &= key_mask[:, None, :]
    # a query that may see nothing (a padding slot) attends to everything instead: its output is
    # never used, but it must stay finite so it cannot poison later layers (transformers does the same)
    empty = ~mask.any(axis=-1, keepdims=True)
    mask |= empty
    return mask[:, None]                                                   # [B, 1, T, S]


INFERENCE_QUERY_BLOCK = 64       # queries per score block in inference attention (64 measured faster than 128)


def attend_inference(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool, window: int | None,
                     scale: float | None) -> np.ndarray:
    """Attention without autograd for inference, on arrays: ``q [B, H, T, Dh]``, ``k, v [B, Hkv, S, Dh]``
    -> ``[B, H, T, Dh]``, the same function as ``F.scaled_dot_product_attention`` (bottom-right
    causal, ``window``, GQA without copies) with no padding mask.

    Blocks of ``INFERENCE_QUERY_BLOCK`` queries: scores for the keys the block can see only (a
    causal block skips the keys after its last query), two BLAS calls and a softmax per block;
    nothing is recorded for backward. Faster than both the autograd composite (no graph, no
    full ``T x S`` masks) and the tiled kernel (whose inner products are not BLAS) in prefill,
    and cheaper per decoding step.
    """
    b, h, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    g = h // hkv
    scale = d ** -0.5 if scale is None else scale
    qg = q.reshape(b, hkv, g, t, d)                                        # [B, Hkv, G, T, Dh]
    kt = k.transpose(0, 1, 3, 2)[:, :, None]                               # [B, Hkv, 1, Dh, S]
    vv = v[:, :, None]                                                     # [B, Hkv, 1, S, Dh]
    out = np.empty((b, hkv, g, t, d), np.result_type(q.dtype, k.dtype, v.dtype))
    for i0 in range(0, t, INFERENCE_QUERY_BLOCK):
        i1 = min(i0 + INFERENCE_QUERY_BLOCK, t)
        first_pos, last_pos = s - t + i0, s - t + i1 - 1                   # slots of the block's queries
        k0 = max(0, first_pos - window + 1) if window is not None else 0
        k1 = last_pos + 1 if causal or window is not None else s
        scores = np.matmul(qg[:, :, :, i0:i1], kt[..., k0:k1])             # [B, Hkv, G, bq, keys]
        scores *= scores.dtype.type(scale)
        if causal or window is not None:
            q_pos = np.arange(first_pos, last_pos + 1)[:, None]            # [bq, 1]
            k_pos = np.arange(k0, k1)[None, :]                             # [1, keys]
            hidden = k_pos > q_pos
            if window is not None:
                hidden |= k_pos <= q_pos - window
            cols = np.flatnonzero(hidden.any(axis=0))
            if cols.size:                                                  # only the columns with hidden keys
                c0, c1 = cols[0], cols[-1] + 1
                scores[..., c0:c1] += np.where(hidden[:, c0:c1], -np.inf, 0).astype(scores.dtype)
        _softmax_inplace(scores)                                           # scores -> probabilities
        np.matmul(scores, vv[:, :, :, k0:k1], out=out[:, :, :, i0:i1])     # [B, Hkv, G, bq, Dh]
    return out.reshape(b, h, t, d)


def _softmax_inplace(a: np.ndarray) -> None:
    """``axon.ops.softmax_array(a, -1)`` written into ``a`` (no temporary of a's size)."""
    m = a.max(axis=-1, keepdims=True)
    np.maximum(m, np.finfo(a.dtype).min, out=m)       # an all -inf row gives zeros, as softmax_array
    a -= m
    np.exp(a, out=a)
    s = a.sum(axis=-1, keepdims=True)
    np.maximum(s, 1, out=s)
    a /= s


def _inference(*tensors) -> bool:
    return not axon.is_grad_enabled() or not any(x.requires_grad for x in tensors)


def attend(q, k, v, ctx: AttentionContext | None, *, causal: bool, window: int | None = None,
           scale: float | None = None, dropout_p: float = 0.0):
    """Scaled dot-product attention of ``q [B, H, T, Dh]`` over ``k, v [B, Hkv, S, Dh]``.

    Picks the fast path (``is_causal`` / ``window`` inside the kernel) when there is no padding,
    and an explicit boolean mask otherwise. Keys older than the window are not even passed.
    Returns ``[B, H, T, Dh]``.
    """
    b, h, t, _ = q.shape
    s = k.shape[2]
    key_mask = None if ctx is None else ctx.key_mask
    if window is not None and s > window + t - 1:                          # drop keys no query can see
        first = s - (window + t - 1)
        k, v = k[:, :, first:], v[:, :, first:]                            # [B, Hkv, W + T - 1, Dh]
        key_mask = None if key_mask is None else key_mask[:, first:]
        s = k.shape[2]
    gqa = k.shape[1] != h
    if key_mask is None and dropout_p == 0.0 and _inference(q, k, v):
        out = attend_inference(q.data, k.data, v.data, causal and s > 1, window, scale)
        return axon.as_tensor(out)                                         # [B, H, T, Dh]
    if key_mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal and s > 1,
                                              scale=scale, enable_gqa=gqa, window=window)
    mask = axon.tensor(_dense_mask(key_mask, b, t, s, causal, window))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale,
                                          enable_gqa=gqa)


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
        if ctx.key_mask is None and (self.dropout == 0.0 or not self.training) and type(self).project_qkv is \
                MultiHeadAttention.project_qkv and not axon.is_grad_enabled():
            b, t, _ = x.shape                                              # the projections, split on arrays
            q = self.q_proj(x).data.reshape(b, t, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
            k = self.k_proj(x).data.reshape(b, t, self.num_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
            v = self.v_proj(x).data.reshape(b, t, self.num_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
            return self._forward_inference(q, k, v, ctx)                  # [B, H|Hkv, T, Dh] views
        q, k, v = self.project_qkv(x)
        if ctx.key_mask is None and (self.dropout == 0.0 or not self.training) and _inference(q, k, v):
            return self._forward_inference(q.data, k.data, v.data, ctx)
        if self.rotary is not None:
            cos, sin = ctx.rope(self.rotary)
            q, k = apply_rotary_pos_emb(q, cos, sin), apply_rotary_pos_emb(k, cos, sin)
        if ctx.cache is not None:
            k, v = ctx.cache.layers[self.layer_idx].update(k, v, ctx.start)  # [B, Hkv, S, Dh]
        out = attend(q, k, v, ctx, causal=self.causal, window=self.sliding_window,
                     dropout_p=self.dropout if self.training else 0.0)      # [B, H, T, Dh]
        return getattr(self, self.out_name)(merge_heads(out))              # [B, T, d]

    def _forward_inference(self, q, k, v, ctx: AttentionContext):
        """``forward`` without autograd and without padding: the same operations on arrays
        (RoPE, cache write, :func:`attend_inference`), no graph nodes per step.
        ``q [B, H, T, Dh]``, ``k, v [B, Hkv, T, Dh]`` arrays."""
        if self.rotary is not None:
            cos, sin = ctx.rope(self.rotary)
            q, k = _rotate_inference(q, cos, sin), _rotate_inference(k, cos, sin)
        if ctx.cache is not None:
            kt, vt = ctx.cache.layers[self.layer_idx].update(axon.as_tensor(k), axon.as_tensor(v), ctx.start)
            k, v = kt.data, vt.data                                        # [B, Hkv, S, Dh]
        t, s = q.shape[2], k.shape[2]
        window = self.sliding_window
        if window is not None and s > window + t - 1:                      # drop keys no query can see
            k, v = k[:, :, s - (window + t - 1):], v[:, :, s - (window + t - 1):]
        out = attend_inference(q, k, v, self.causal and k.shape[2] > 1, window, None)   # [B, H, T, Dh]
        b, h, t, d = out.shape
        merged = np.ascontiguousarray(out.transpose(0, 2, 1, 3)).reshape(b, t, h * d)  # [B, T, H*Dh]
        return getattr(self, self.out_name)(axon.as_tensor(merged))       # [B, T, d]


def _rotate_inference(x: np.ndarray, cos, sin) -> np.ndarray:
    """:func:`~axon_llm.rope.apply_rotary_pos_emb` on arrays (the same operations, so the same
    rounding): the first ``cos.shape[-1]`` channels of ``x [B, H, T, Dh]`` rotated, the rest kept."""
    cos = np.asarray(cos, dtype=x.dtype)
    sin = np.asarray(sin, dtype=x.dtype)
    d = cos.shape[-1]
    half = d // 2
    xr = x[..., :d]
    rotated = np.concatenate([-xr[..., half:], xr[..., :half]], axis=-1)   # rotate_half
    rotated *= sin
    out = xr * cos
    out += rotated                                                         # x cos + rotate_half(x) sin
    if d == x.shape[-1]:
        return out
    return np.concatenate([out, x[..., d:]], axis=-1)                      # [B, H, T, Dh]
