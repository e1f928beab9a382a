"""The fast decode step: one token of a decoder through raw arrays, almost no Python.

``generate`` feeds one token per step after the prefill. Through the modules that step costs
about as much Python (``Module.__getattr__``, autograd bookkeeping, small-array RoPE and softmax)
as kernel time. A :class:`DecodePlan` is built once per ``generate`` call from the model's
modules: it holds, per layer, the norm weights, each projection's matvec (resolved once: fused
packed-quantised kernel or BLAS), the biases, the window and the layer's cache buffers, and runs
a token as (the ``llama`` layout)::

    x = embed(token)                                          # [d]
    for each layer:
        h = rms_norm(x)                                       # into a preallocated buffer
        q, k, v = Wq h (+bq), Wk h (+bk), Wv h (+bv)          # [H*D], [Hkv*D], [Hkv*D]
        a = rope_attend(q, k, v, cache)                       # RoPE, cache write, attention: one kernel
        x += Wo a
        h = rms_norm(x)
        x += Wdown (silu(Wgate h) * Wup h)                    # SiLU-gate in place
    logits = Wlm rms_norm(x)                                  # [V]

**Which models get it: the layout protocol.** A model class opts in by naming the layout its
layers follow in the class attribute ``decode_layout`` (read from the instance, so a class that
builds several variants may make it a property); a model without it decodes through the modules.
The layouts (:data:`LAYOUTS`):

- ``"llama"`` — the block above: LLaMA, Mistral, Qwen2 (q/k/v biases, sliding windows per layer)
  and Mixtral, whose feed-forward is a sparse mixture of SwiGLU experts (router softmax, top-k,
  weights renormalised, the chosen experts' outputs summed);
- ``"gemma3"`` — Gemma 3: embeddings times ``sqrt(d)``, ``(1 + w)`` RMSNorms, QK-norm over each head
  before RoPE, a norm after attention and after the MLP, GeGLU (gelu-tanh), local layers with their
  own window and RoPE base, scores scaled by ``query_pre_attn_scalar ** -0.5``, soft-capped logits;
- ``"phi3"`` — Phi-3: the llama block with fused ``qkv_proj`` and ``gate_up_proj``.

A layout is a promise about the layer *structure*; :func:`decode_plan` still checks what varies per
instance and returns ``None`` (module path) when something does not fit: a weight that is neither
float32 nor GGUF-quantised, ``dynamic`` RoPE (its tables depend on the sequence length), an
activation other than the layout's, a cache that is not a single-row float32/float16
:class:`KVCache`. A subclass that changes the math of its parent's layers must set
``decode_layout = None`` (or its own layout).

Without a layout: GPT-2 (learned positions, LayerNorm, fused ``c_attn``), Phi-1/2 (parallel
attention + MLP on one LayerNorm, partial RoPE), BERT (an encoder), the state-space models
(SSM, Hydra: a recurrent step, not attention over a cache), Chimera (differential attention) and
Trident (ternary BitNet layers).

Its reference is the module forward (``generate(..., fast_decode=False)``); tests compare the
logits of several decode steps and the greedy tokens (tests/axon_llm/test_decode_plan.py).
"""

from __future__ import annotations

import math

import numpy as np

import axon.nn as nn
import axon.nn.functional as F
from axon_kernels.decode import (
    gelu_tanh_mul, matvec_into, rms_norm_into, rms_norm_rows, rope_attend, silu_mul,
)
from axon_kernels.quant import quant_rows

from axon_llm.cache import KVCache
from axon_llm.errors import InputError, UnsupportedError
from axon_llm.quantized import QuantizedEmbedding, QuantizedLinear

__all__ = ["DecodePlan", "decode_plan", "LAYOUTS"]

#: the values of a model class's ``decode_layout`` this module knows (see the module doc)
LAYOUTS = ("llama", "gemma3", "phi3")

#: the gated MLPs' activation -> the in-place kernel ``gate[:] = act(gate) * up``
_GATES = {F.silu: silu_mul, F.gelu_tanh: gelu_tanh_mul}


class _Unfit(Exception):
    """A layer the plan cannot run (the model then decodes through its modules)."""


def _weight(lin):
    """The matvec operand of a Linear / QuantizedLinear."""
    if isinstance(lin, QuantizedLinear):
        return lin.qweight
    if type(lin) is nn.Linear and lin.weight.dtype == np.float32:
        return np.ascontiguousarray(lin.weight.data)
    raise _Unfit(f"{type(lin).__name__} weight")


class _Proj:
    """One projection: ``y = W x (+ b)`` into a buffer owned by the plan."""

    __slots__ = ("run", "out", "bias")

    def __init__(self, lin):
        self.run, self.out = matvec_into(_weight(lin))
        self.bias = None if lin.bias is None else np.asarray(lin.bias.data, np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``W x (+ b)`` -> the buffer ``[out]``."""
        self.run(x)
        if self.bias is not None:
            self.out += self.bias
        return self.out


class _Norm:
    """An RMSNorm's weight (``1 + w`` for Gemma's, as its forward computes it) and eps."""

    __slots__ = ("w", "eps")

    def __init__(self, norm, offset: float):
        if not isinstance(norm, nn.RMSNorm) or norm.weight is None:
            raise _Unfit(f"{type(norm).__name__} norm")
        self.w = np.asarray(norm.weight.data + np.float32(offset) if offset else norm.weight.data, np.float32)
        self.eps = float(norm.eps)

    def __call__(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``out [d] = rms_norm(x [d])``."""
        rms_norm_into(x, self.w, self.eps, out)
        return out


class _Gated:
    """``down(act(gate h) * up h)`` (``gate_up``: one fused projection, gate rows first)."""

    def __init__(self, act, down, gate=None, up=None, gate_up=None, inter: int = 0):
        if act not in _GATES:
            raise _Unfit("activation")
        self.mul = _GATES[act]
        self.down = _Proj(down)
        self.gate_up = None if gate_up is None else _Proj(gate_up)
        self.gate = None if gate is None else _Proj(gate)
        self.up = None if up is None else _Proj(up)
        self.inter = inter

    def __call__(self, h: np.ndarray) -> np.ndarray:
        """``[d] -> [d]`` (the down projection's buffer)."""
        if self.gate_up is not None:
            gu = self.gate_up(h)                                              # [2I]
            g, u = gu[:self.inter], gu[self.inter:]
        else:
            g, u = self.gate(h), self.up(h)                                   # [I], [I]
        self.mul(g, u)
        return self.down(g)


class _MoE:
    """Mixtral's sparse MoE for one token, as ``axon_llm.moe.SparseMoE``: router softmax over the
    ``E`` experts, the ``k`` most probable (lower index first on ties), their probabilities
    renormalised, ``y = sum_j w_j expert_j(h)``."""

    def __init__(self, moe, d: int):
        self.router = _Proj(moe.gate)
        self.top_k = moe.top_k
        self.experts = [_Gated(F.silu, e.w2, gate=e.w1, up=e.w3) for e in moe.experts]
        self.y = np.empty(d, np.float32)

    def __call__(self, h: np.ndarray) -> np.ndarray:
        """``[d] -> [d]`` (a buffer of this layer)."""
        logits = self.router(h)                                               # [E]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = np.argsort(-p, kind="stable")[:self.top_k]                     # [k]
        kept = np.zeros_like(p)
        kept[top] = p[top]
        w = kept / kept.sum()                                                 # [E], zero off the top-k
        self.y[:] = 0.0
        for e in np.sort(top):                                                # the module's order: by expert
            self.y += self.experts[e](h) * w[e]
        return self.y


class _Layer:
    """One decoder layer's arrays, projections and cache buffers, for its layout."""

    def __init__(self, layer, kv: tuple[np.ndarray, np.ndarray], layout: str, d: int):
        attn = layer.self_attn
        gemma = layout == "gemma3"
        off = 1.0 if gemma else 0.0
        rotary = getattr(attn, "rotary", None)
        if rotary is None or not attn.causal or rotary.rope_type == "dynamic":
            raise _Unfit("attention")
        self.heads, self.kv_heads, self.head_dim = attn.num_heads, attn.num_kv_heads, attn.head_dim
        self.q_size, self.kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        if layout == "phi3":
            self.qkv, self.q, self.k, self.v = _Proj(attn.qkv_proj), None, None, None
        else:
            self.qkv = None
            self.q, self.k, self.v = _Proj(attn.q_proj), _Proj(attn.k_proj), _Proj(attn.v_proj)
        self.o = _Proj(getattr(attn, getattr(attn, "out_name", "o_proj")))
        self.q_norm = _Norm(attn.q_norm, off) if gemma else None                 # QK-norm per head
        self.k_norm = _Norm(attn.k_norm, off) if gemma else None
        self.norm_in = _Norm(layer.input_layernorm, off)
        if gemma:                                  # norms after attention and around the MLP
            self.post_attn = _Norm(layer.post_attention_layernorm, off)
            self.norm_ff = _Norm(layer.pre_feedforward_layernorm, off)
            self.post_ff = _Norm(layer.post_feedforward_layernorm, off)
        else:
            self.post_attn, self.post_ff = None, None
            self.norm_ff = _Norm(layer.post_attention_layernorm, off)
        mlp = getattr(layer, "mlp", None)
        if hasattr(layer, "block_sparse_moe"):
            self.ffn = _MoE(layer.block_sparse_moe, d)
        elif layout == "phi3":
            self.ffn = _Gated(mlp.act, mlp.down_proj, gate_up=mlp.gate_up_proj, inter=mlp.intermediate_size)
        else:
            self.ffn = _Gated(mlp.act, mlp.down_proj, gate=mlp.gate_proj, up=mlp.up_proj)
        self.window = attn.sliding_window
        self.scale = float(attn.head_dim ** -0.5 if attn.scale is None else attn.scale)
        self.rotary = rotary
        self.kc, self.vc = kv[0][0], kv[1][0]                                 # [Hkv, L, D] (row 0)
        self.attn_out = np.empty((self.heads, self.head_dim), np.float32)    # [H, D]
        self.t = np.empty(d, np.float32) if gemma else None                   # a post-norm's output

    def qkv_of(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``h [d]`` -> ``q [H, D]``, ``k, v [Hkv, D]`` (views of the projections' buffers)."""
        if self.qkv is not None:
            f = self.qkv(h)                                                   # [(H + 2 Hkv) D]
            q, k, v = f[:self.q_size], f[self.q_size:self.q_size + self.kv_size], f[self.q_size + self.kv_size:]
        else:
            q, k, v = self.q(h), self.k(h), self.v(h)
        return (q.reshape(self.heads, self.head_dim), k.reshape(self.kv_heads, self.head_dim),
                v.reshape(self.kv_heads, self.head_dim))

    def add(self, x: np.ndarray, y: np.ndarray, post: _Norm | None) -> None:
        """``x += y``, or ``x += post(y)`` (Gemma's norms after attention and after the MLP)."""
        x += y if post is None else post(y, self.t)

    def __call__(self, x: np.ndarray, h: np.ndarray, slot: int, cos: np.ndarray, sin: np.ndarray) -> None:
        """Run the layer on ``x [d]`` in place (``h [d]`` is scratch), writing K/V into ``slot``."""
        q, k, v = self.qkv_of(self.norm_in(x, h))
        if self.q_norm is not None:
            rms_norm_rows(q, self.q_norm.w, self.q_norm.eps)
            rms_norm_rows(k, self.k_norm.w, self.k_norm.eps)
        lo = 0 if self.window is None else max(0, slot - self.window + 1)
        rope_attend(q, k, v, self.kc, self.vc, slot, lo, cos, sin, self.scale, self.attn_out)
        self.add(x, self.o(self.attn_out.reshape(-1)), self.post_attn)     # [H, D] -> [H*D] -> [d]
        self.add(x, self.ffn(self.norm_ff(x, h)), self.post_ff)


def decode_plan(model, cache) -> "DecodePlan | None":
    """A :class:`DecodePlan` for ``model`` decoding one row into ``cache``, or ``None`` when the
    model names no ``decode_layout``, one of its layers does not fit the layout (see the module doc)
    or the cache is not a single-row float32/float16 :class:`KVCache`."""
    layout = getattr(model, "decode_layout", None)
    if layout is None:
        return None
    if layout not in LAYOUTS:
        raise UnsupportedError(f"{type(model).__name__}.decode_layout is {layout!r}; the fast decode step "
                               f"knows {', '.join(LAYOUTS)} (or None: decode through the modules)")
    backbone = getattr(model, getattr(model, "backbone_name", "model"), None)
    if type(cache) is not KVCache or cache.batch_size != 1 or len(cache.layers) != len(backbone.layers):
        return None
    if any(layer.k.dtype not in (np.float32, np.float16) for layer in cache.layers):
        return None
    emb = backbone.embed_tokens
    if not (isinstance(emb, QuantizedEmbedding) or (isinstance(emb, nn.Embedding) and emb.weight.dtype == np.float32)):
        return None
    try:
        return DecodePlan(model, backbone, cache, layout)
    except _Unfit:
        return None


class DecodePlan:
    """Raw arrays of a decoder, built once, that run one token per :meth:`step`.

    ``step(token)`` embeds the token, runs every layer on preallocated buffers (writing its K/V
    into the cache's slot ``len(cache)``), advances the cache and returns the float32 logits
    ``[V]`` — what the module forward returns for ``ids [[token]]`` with ``logits_to_keep=1``.
    """

    def __init__(self, model, backbone, cache: KVCache, layout: str = "llama"):
        self.cache = cache
        d = model.config.hidden_size
        self.layers = [_Layer(layer, (lc.k, lc.v), layout, d) for layer, lc in zip(backbone.layers, cache.layers)]
        emb = backbone.embed_tokens
        self.embed_q = emb.qweight if isinstance(emb, QuantizedEmbedding) else None
        self.embed_f = None if self.embed_q is not None else np.asarray(emb.weight.data, np.float32)
        gemma = layout == "gemma3"
        # diff vs LLaMA (gemma3): embeddings times sqrt(d) rounded to float32, as Gemma3Model.embed
        self.embed_scale = np.float32(math.sqrt(d)) if gemma else None
        self.norm = _Norm(backbone.norm, 1.0 if gemma else 0.0)
        self.head = _Proj(model.lm_head)
        cap = getattr(model.config, "final_logit_softcapping", None) if gemma else None
        self.softcap = None if cap is None else np.float32(cap)
        self.x = np.empty(d, np.float32)
        self.h = np.empty(d, np.float32)

    def _rope(self, position: int) -> dict:
        tables = {}
        pos = np.array([[position]], np.int64)
        for layer in self.layers:
            key = id(layer.rotary)
            if key not in tables:
                cos, sin = layer.rotary.cos_sin(pos)                          # [1, 1, 1, R]
                tables[key] = (np.ascontiguousarray(cos[0, 0, 0]), np.ascontiguousarray(sin[0, 0, 0]))
        return tables

    def step(self, token: int) -> np.ndarray:
        """Feed one token after the cache's filled slots; the next-token logits ``[V]`` (float32)."""
        cache = self.cache
        slot = cache.length
        if slot >= cache.max_length:
            raise InputError(f"the KV cache holds {cache.max_length} tokens; {slot} are used and 1 more was fed")
        tables = self._rope(int(cache.seen[0]))
        x, h = self.x, self.h
        if self.embed_q is not None:
            x[:] = quant_rows(self.embed_q, np.array([token], np.int64))[0]
        else:
            x[:] = self.embed_f[token]
        if self.embed_scale is not None:
            x *= self.embed_scale
        for ly in self.layers:
            cos, sin = tables[id(ly.rotary)]
            ly(x, h, slot, cos, sin)
        logits = self.head(self.norm(x, h)).copy()                            # [V]
        if self.softcap is not None:                                          # cap * tanh(logits / cap)
            logits /= self.softcap
            np.tanh(logits, out=logits)
            logits *= self.softcap
        for lc in cache.layers:
            lc.length = slot + 1
        cache.advance(np.ones((1, 1), np.int64))
        return logits
