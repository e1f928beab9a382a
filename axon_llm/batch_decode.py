"""The batched decode step: the next token of ``n`` rows of a batch cache, through raw arrays.

`BatchScheduler` decodes every active sequence with one ``[n, 1]`` step. Through the modules
that step pays the Python of the module forward (``Module.__getattr__``, autograd bookkeeping,
small-array RoPE, the padding mask rebuilt per call) once per layer and projection, whatever
``n``. A :class:`BatchDecodePlan` resolves the layers' arrays once (as
`axon_llm.decode.DecodePlan` does for one row) and runs a step as (``llama`` layout, no MoE)::

    x = embed(tokens)                                       # [n, d]
    for each layer:
        h = rms_norm(x)                                     # [n, d]
        q, k, v = h Wq.T, h Wk.T, h Wv.T (+ biases)         # [n, H*D], [n, Hkv*D], [n, Hkv*D]: one product each
        for each row r:                                     # RoPE at the row's position, K/V into slot `length`,
            a[r] = rope_attend(q[r], k[r], v[r], cache[r])  #   attention over the row's own slots
        x += a Wo.T
        x += (silu(h' Wgate.T) * h' Wup.T) Wdown.T          # h' = rms_norm(x)
    logits = rms_norm(x) Wlm.T                              # [n, V]

Every projection is one matmul over the ``n`` rows (`axon_kernels.quant.quant_matmul`: the
few-token kernel reads each weight once for all rows). The batch cache's layout is the
scheduler's: row ``r``'s real tokens are its last ``seen[r]`` filled slots (holes before them),
so its attention runs over slots ``length - seen[r] .. length`` (the same ``lo`` bound a sliding
window uses) and its new token sits at position ``seen[r]``.

Its reference is the module forward on the same cache (``model(ids [n, 1], cache=view)``, what
`BatchScheduler._step` ran before); tests compare the logits of several steps and the greedy
tokens (tests/axon_llm/test_batch_decode.py).
"""

from __future__ import annotations

import numpy as np

import axon.nn.functional as F
from axon_kernels.decode import rms_norm_rows, rope_attend
from axon_kernels.quant import QuantMatrix, quant_matmul, quant_rows
from axon_kernels.swiglu import swiglu_forward

from axon_llm.cache import KVCache
from axon_llm.decode import _Norm, _Unfit, _weight
from axon_llm.quantized import QuantizedEmbedding

__all__ = ["BatchDecodePlan", "batch_decode_plan"]


def _matmul(w, x: np.ndarray) -> np.ndarray:
    """``x [n, in] @ W.T -> [n, out]`` for a packed quantised or float32 ``W [out, in]``."""
    if isinstance(w, QuantMatrix):
        return quant_matmul(w, x)
    return x @ w.T


class _Linear:
    """A projection's weight (packed or float32) and bias."""

    __slots__ = ("w", "bias")

    def __init__(self, lin):
        self.w = _weight(lin)
        self.bias = None if lin.bias is None else np.asarray(lin.bias.data, np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``x [n, in] -> [n, out]``."""
        y = _matmul(self.w, x)
        if self.bias is not None:
            y += self.bias
        return y


class _Layer:
    """One ``llama``-layout decoder layer's weights for the batched step."""

    def __init__(self, layer):
        attn, mlp = layer.self_attn, getattr(layer, "mlp", None)
        rotary = getattr(attn, "rotary", None)
        if rotary is None or not attn.causal or rotary.rope_type == "dynamic":
            raise _Unfit("attention")
        if mlp is None or getattr(mlp, "act", None) is not F.silu or hasattr(layer, "block_sparse_moe"):
            raise _Unfit("feed-forward")
        self.heads, self.kv_heads, self.head_dim = attn.num_heads, attn.num_kv_heads, attn.head_dim
        self.q, self.k, self.v = _Linear(attn.q_proj), _Linear(attn.k_proj), _Linear(attn.v_proj)
        self.o = _Linear(getattr(attn, getattr(attn, "out_name", "o_proj")))
        self.gate, self.up, self.down = _Linear(mlp.gate_proj), _Linear(mlp.up_proj), _Linear(mlp.down_proj)
        self.norm_in = _Norm(layer.input_layernorm, 0.0)
        self.norm_ff = _Norm(layer.post_attention_layernorm, 0.0)
        self.window = attn.sliding_window
        self.scale = float(attn.head_dim ** -0.5 if attn.scale is None else attn.scale)
        self.rotary = rotary

    def __call__(self, x: np.ndarray, kc: np.ndarray, vc: np.ndarray, slot: int, lo: np.ndarray,
                 cos: np.ndarray, sin: np.ndarray) -> None:
        """Run the layer on ``x [n, d]`` in place; row ``r``'s K/V go into slot ``slot`` of
        ``kc[r], vc[r] [Hkv, L, D]`` and it attends over slots ``lo[r] .. slot``."""
        n = x.shape[0]
        h = x.copy()
        rms_norm_rows(h, self.norm_in.w, self.norm_in.eps)                          # [n, d]
        q = self.q(h).reshape(n, self.heads, self.head_dim)                         # [n, H*D] -> [n, H, D]
        k = self.k(h).reshape(n, self.kv_heads, self.head_dim)                      # [n, Hkv, D]
        v = self.v(h).reshape(n, self.kv_heads, self.head_dim)                      # [n, Hkv, D]
        a = np.empty_like(q)                                                        # [n, H, D]
        for r in range(n):
            rope_attend(q[r], k[r], v[r], kc[r], vc[r], slot, int(lo[r]), cos[r], sin[r], self.scale, a[r])
        x += self.o(a.reshape(n, -1))                                               # [n, H*D] -> [n, d]
        h = x.copy()
        rms_norm_rows(h, self.norm_ff.w, self.norm_ff.eps)
        g = swiglu_forward(self.gate(h), self.up(h))                                # silu(gate) * up [n, I]: the module's kernel
        x += self.down(g)                                                           # [n, d]


def batch_decode_plan(model) -> "BatchDecodePlan | None":
    """A :class:`BatchDecodePlan` for ``model``, or ``None`` when the model is not of the plain
    ``llama`` layout (its ``decode_layout``; no mixture of experts, SiLU gates, static RoPE) or a
    weight is neither float32 nor GGUF-quantised: the scheduler then steps through the modules."""
    if getattr(model, "decode_layout", None) != "llama":
        return None
    backbone = getattr(model, getattr(model, "backbone_name", "model"), None)
    try:
        return BatchDecodePlan(model, backbone)
    except (_Unfit, AttributeError):
        return None


class BatchDecodePlan:
    """The arrays of a ``llama``-layout decoder, resolved once, that decode one token for each
    of the first ``n`` rows of a batch :class:`KVCache` per :meth:`step`."""

    def __init__(self, model, backbone):
        emb = backbone.embed_tokens
        if isinstance(emb, QuantizedEmbedding):
            self.embed_q, self.embed_f = emb.qweight, None
        elif emb.weight.dtype == np.float32:
            self.embed_q, self.embed_f = None, np.asarray(emb.weight.data)
        else:
            raise _Unfit("embedding")
        self.layers = [_Layer(layer) for layer in backbone.layers]
        self.norm = _Norm(backbone.norm, 0.0)
        self.head = _Linear(model.lm_head)

    def fits(self, cache: KVCache) -> bool:
        """True when ``cache`` is a float32 :class:`KVCache` with one cache per layer of the plan."""
        return (type(cache) is KVCache and len(cache.layers) == len(self.layers)
                and all(layer.k.dtype == np.float32 for layer in cache.layers))

    def step(self, tokens: np.ndarray, cache: KVCache) -> np.ndarray:
        """Feed ``tokens [n]`` to rows ``0..n-1`` of ``cache`` (a view of ``n`` rows, as
        :meth:`KVCache.rows` makes) after its filled slots; returns the logits ``[n, V]`` and
        advances the cache as the module forward does."""
        n, slot = len(tokens), cache.length
        seen = cache.seen[:n]                                                       # [n] real tokens so far
        ids = np.asarray(tokens, np.int64)
        x = quant_rows(self.embed_q, ids) if self.embed_q is not None else self.embed_f[ids]   # [n, d]
        x = np.array(x, np.float32)
        tables = {}
        for ly in self.layers:
            if id(ly.rotary) not in tables:
                cos, sin = ly.rotary.cos_sin(seen[:, None])                          # [n, 1, 1, R]
                tables[id(ly.rotary)] = (np.ascontiguousarray(cos[:, 0, 0]), np.ascontiguousarray(sin[:, 0, 0]))
        start = slot - seen                                                         # [n] first real slot of each row
        for ly, lc in zip(self.layers, cache.layers):
            cos, sin = tables[id(ly.rotary)]
            lo = start if ly.window is None else np.maximum(start, slot - ly.window + 1)
            ly(x, lc.k, lc.v, slot, lo, cos, sin)
        rms_norm_rows(x, self.norm.w, self.norm.eps)
        logits = self.head(x)                                                       # [n, V]
        for lc in cache.layers:
            lc.length = slot + 1
        cache.advance(np.ones((n, 1), np.int64))
        return logits
