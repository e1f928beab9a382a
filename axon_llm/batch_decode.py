"""The batched decode step: the next token of ``n`` rows of a batch cache, through raw arrays.

`BatchScheduler` decodes every active sequence with one ``[n, 1]`` step. Through the modules
that step pays the Python of the module forward (``Module.__getattr__``, autograd bookkeeping,
small-array RoPE, the padding mask rebuilt per call) once per layer and projection, whatever
``n``. A :class:`BatchDecodePlan` resolves the layers' arrays once (as
`axon_llm.decode.DecodePlan` does for one row) and runs a step as (``llama`` layout, no MoE)::

    x = embed(tokens)                                       # [n, d]
    for each layer:
        h = rms_norm(x)                                     # [n, d]
        q, k, v = h [Wq; Wk; Wv].T (+ biases)               # [n, H*D], [n, Hkv*D], [n, Hkv*D]: one product
        a = batch_rope_attend(q, k, v, cache)               # each row: RoPE at its position, K/V into slot
                                                            #   `length`, attention over its own slots
        x += a Wo.T
        g, u = h' [Wgate; Wup].T                            # h' = rms_norm(x); one product
        x += (silu(g) * u) Wdown.T
    logits = rms_norm(x) Wlm.T                              # [n, V]

Every projection is one matmul over the ``n`` rows (`axon_kernels.quant.quant_matmul`: the
few-token kernel reads each weight once for all rows); ``q, k, v`` and ``gate, up`` are joined
into one product each where their packed matrices allow it (:class:`_Fused`), and the
attention of all rows is one kernel call per layer
(`axon_kernels.batch_attend.batch_rope_attend`, bit-identical to a `rope_attend` per row).
The batch cache's layout is the scheduler's: row ``r``'s real tokens are its last ``seen[r]`` filled slots (holes before them),
so its attention runs over slots ``length - seen[r] .. length`` (the same ``lo`` bound a sliding
window uses) and its new token sits at position ``seen[r]``.

Its reference is the module forward on the same cache (``model(ids [n, 1], cache=view)``, what
`BatchScheduler._step` ran before); tests compare the logits of several steps and the greedy
tokens (tests/axon_llm/test_batch_decode.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np

import axon.nn.functional as F
from axon_kernels.batch_attend import batch_rope_attend
from axon_kernels.decode import rms_norm_rows
from axon_kernels.quant import TILE_ROWS, QuantMatrix, quant_matmul, quant_rows
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


class _Fused:
    """Several projections of the same input as one product, outputs side by side: ``q, k, v``
    (and ``gate, up``) of a layer cost one quantised matmul call instead of three (two).

    Only for packed matrices of one kind, type, group and input size whose outputs fill whole
    tiles (each output row is then computed by the same operations as alone: the results are
    identical). The joined arrays replace the matrices' own: each :class:`QuantMatrix` of the
    model is re-pointed at its views of them, so the model holds one copy of its weights."""

    __slots__ = ("w", "bias", "cuts", "parts")

    def __init__(self, parts: list[_Linear]):
        ws = [p.w for p in parts]
        w0 = ws[0]
        if not all(isinstance(w, QuantMatrix) and w.kind == w0.kind and w.qtype == w0.qtype and w.group == w0.group
                   and w.in_features == w0.in_features and (w.offset is None) == (w0.offset is None)
                   and w.qs.dtype == w0.qs.dtype and w.out_features % TILE_ROWS == 0 for w in ws):
            raise _Unfit("projections of different kinds")
        if len({p.bias is None for p in parts}) > 1:
            raise _Unfit("projections with and without a bias")
        ends = np.cumsum([w.out_features for w in ws]).tolist()
        self.cuts, self.parts = list(zip([0] + ends[:-1], ends)), parts             # each one's output columns
        joined = {}
        for name in ("qs", "scale", "offset"):
            if getattr(w0, name) is None:
                joined[name] = None
                continue
            whole = np.concatenate([getattr(w, name) for w in ws])                # [tiles of all, ...]
            t0 = 0
            for w in ws:                                                           # the model's matrices: views
                t1 = t0 + w.out_features // TILE_ROWS
                setattr(w, name, whole[t0:t1])
                t0 = t1
            joined[name] = whole
        self.w = dataclasses.replace(w0, shape=(ends[-1], w0.in_features), **joined)
        self.bias = None if parts[0].bias is None else np.concatenate([p.bias for p in parts])

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        """``x [n, in]`` -> each projection's ``[n, out_i]`` (C-contiguous, as the kernels take them)."""
        if x.shape[0] == 1:          # one row: separate matvecs (a joined one can cross quant.PARALLEL_MIN_BYTES
            return [p(x) for p in self.parts]   # and wake the threads: 1-row step 12.2 -> 15.1 ms measured)
        y = quant_matmul(self.w, x)                                                 # [n, sum out]
        if self.bias is not None:
            y += self.bias
        return [np.ascontiguousarray(y[:, a:b]) for a, b in self.cuts]


def _joined(parts: list[_Linear]):
    """``x -> [p(x) for p in parts]``: one :class:`_Fused` product when the weights allow it."""
    try:
        return _Fused(parts)
    except _Unfit:
        return lambda x: [p(x) for p in parts]


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
        self.qkv, self.gate_up = _joined([self.q, self.k, self.v]), _joined([self.gate, self.up])
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
        q, k, v = self.qkv(h)                                                       # [n, H*D], [n, Hkv*D], [n, Hkv*D]
        q = q.reshape(n, self.heads, self.head_dim)                                 # [n, H, D]
        k = k.reshape(n, self.kv_heads, self.head_dim)                              # [n, Hkv, D]
        v = v.reshape(n, self.kv_heads, self.head_dim)                              # [n, Hkv, D]
        a = np.empty_like(q)                                                        # [n, H, D]
        batch_rope_attend(q, k, v, kc, vc, slot, lo, cos, sin, self.scale, a)      # every row in one call
        x += self.o(a.reshape(n, -1))                                               # [n, H*D] -> [n, d]
        h = x.copy()
        rms_norm_rows(h, self.norm_ff.w, self.norm_ff.eps)
        gate, up = self.gate_up(h)                                                  # [n, I] each
        g = swiglu_forward(gate, up)                                                # silu(gate) * up [n, I]: the module's kernel
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
