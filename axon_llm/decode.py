"""The fast decode step: one token of a LLaMA-family model through raw arrays, almost no Python.

``generate`` feeds one token per step after the prefill. Through the modules that step costs
about as much Python (``Module.__getattr__``, autograd bookkeeping, small-array RoPE and softmax)
as kernel time. A :class:`DecodePlan` is built once per ``generate`` call from the model's
modules: it holds, per layer, the norm weights, each projection's matvec (resolved once: fused
packed-quantised kernel or BLAS), the biases, the window and the layer's cache buffers, and runs
a token as::

    x = embed(token)                                          # [d]
    for each layer:
        h = rms_norm(x)                                       # into a preallocated buffer
        q, k, v = Wq h (+bq), Wk h (+bk), Wv h (+bv)          # [H*D], [Hkv*D], [Hkv*D]
        a = rope_attend(q, k, v, cache)                       # RoPE, cache write, attention: one kernel
        x += Wo a
        h = rms_norm(x)
        x += Wdown (silu(Wgate h) * Wup h)                    # SiLU-gate in place
    logits = Wlm rms_norm(x)                                  # [V]

Which models get it (:func:`decode_plan` returns ``None`` for the rest, which then decode through
the modules): LLaMA, Mistral without MoE and Qwen2 (with or without sliding windows), float32
or GGUF-quantised, any RoPE type except ``dynamic``. Gemma 3 (QK-norm, ``(1 + w)`` norms,
soft-capping), Mixtral's MoE, Phi, GPT-2 and the state-space families do not.

Its reference is the module forward (``generate(..., fast_decode=False)``); tests compare the
logits of several decode steps and the greedy tokens (tests/axon_llm/test_decode_plan.py).
"""

from __future__ import annotations

import numpy as np

import axon
import axon.nn as nn
from axon_kernels.decode import matvec_into, rms_norm_into, rope_attend, silu_mul
from axon_kernels.quant import quant_rows

from axon_llm.attention import MultiHeadAttention
from axon_llm.cache import KVCache
from axon_llm.quantized import QuantizedEmbedding, QuantizedLinear

# The model classes are recognised by name, not imported: blocks.py imports generation.py, which
# imports this module, so importing blocks or the model files here would close an import cycle.
_LLAMA = "axon_llm.models.llama"


def _defined_in(fn, module: str, qualname: str) -> bool:
    """True when ``fn`` is the function ``module.qualname`` (a method not overridden since)."""
    return getattr(fn, "__module__", None) == module and getattr(fn, "__qualname__", None) == qualname


def _is_a(obj, module: str, name: str) -> bool:
    """``isinstance(obj, module.name)`` without importing ``module``."""
    return any(c.__module__ == module and c.__name__ == name for c in type(obj).__mro__)

__all__ = ["DecodePlan", "decode_plan"]


def _weight(lin):
    """The matvec operand of a Linear / QuantizedLinear (None: a layer the plan does not know)."""
    if isinstance(lin, QuantizedLinear):
        return lin.qweight
    if type(lin) is nn.Linear and lin.weight.dtype == np.float32:
        return np.ascontiguousarray(lin.weight.data)
    return None


def _bias(lin):
    return None if lin.bias is None else np.asarray(lin.bias.data, np.float32)


class _Proj:
    """One projection: ``y = W x (+ b)`` into a buffer owned by the plan."""

    __slots__ = ("run", "out", "bias")

    def __init__(self, lin):
        self.run, self.out = matvec_into(_weight(lin))
        self.bias = _bias(lin)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``W x (+ b)`` -> the buffer ``[out]``."""
        self.run(x)
        if self.bias is not None:
            self.out += self.bias
        return self.out


def _supported_layer(layer) -> bool:
    if not _defined_in(type(layer).forward, _LLAMA, "LLaMADecoderLayer.forward"):
        return False
    dense_mistral = (_defined_in(type(layer).feed_forward, "axon_llm.models.mistral", "MistralDecoderLayer.feed_forward")
                     and not hasattr(layer, "block_sparse_moe"))
    if not _defined_in(type(layer).feed_forward, _LLAMA, "LLaMADecoderLayer.feed_forward") and not dense_mistral:   # MoE
        return False
    attn, mlp = layer.self_attn, getattr(layer, "mlp", None)
    if type(attn) is not MultiHeadAttention or attn.rotary is None or not attn.causal:
        return False
    if attn.rotary.rope_type == "dynamic":
        return False
    if not _is_a(mlp, "axon_llm.blocks", "GatedMLP") or mlp.act is not axon.nn.functional.silu:
        return False
    norms = (layer.input_layernorm, layer.post_attention_layernorm)
    if any(type(n) is not nn.RMSNorm or n.weight is None for n in norms):
        return False
    lins = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    return all(_weight(lin) is not None for lin in lins)


def decode_plan(model, cache) -> "DecodePlan | None":
    """A :class:`DecodePlan` for ``model`` decoding one row into ``cache``, or ``None`` when the
    model's layers are not the LLaMA family's (see the module doc) or the cache is not a
    single-row float32/float16 :class:`KVCache`."""
    backbone = getattr(model, getattr(model, "backbone_name", "model"), None)
    if backbone is None or not _defined_in(type(backbone).forward, _LLAMA, "LLaMAModel.forward"):
        return None
    if not _defined_in(type(backbone).embed, _LLAMA, "LLaMAModel.embed") or type(backbone.norm) is not nn.RMSNorm:
        return None
    if type(cache) is not KVCache or cache.batch_size != 1 or len(cache.layers) != len(backbone.layers):
        return None
    if any(layer.k.dtype not in (np.float32, np.float16) for layer in cache.layers):
        return None
    emb = backbone.embed_tokens
    if not (isinstance(emb, QuantizedEmbedding) or (isinstance(emb, nn.Embedding) and emb.weight.dtype == np.float32)):
        return None
    if _weight(model.lm_head) is None or not all(_supported_layer(layer) for layer in backbone.layers):
        return None
    return DecodePlan(model, backbone, cache)


class _Layer:
    """One decoder layer's arrays and projections."""

    def __init__(self, layer, kv: tuple[np.ndarray, np.ndarray]):
        attn, mlp = layer.self_attn, layer.mlp
        self.norm1 = np.asarray(layer.input_layernorm.weight.data, np.float32)
        self.eps1 = float(layer.input_layernorm.eps)
        self.norm2 = np.asarray(layer.post_attention_layernorm.weight.data, np.float32)
        self.eps2 = float(layer.post_attention_layernorm.eps)
        self.q, self.k, self.v, self.o = (_Proj(attn.q_proj), _Proj(attn.k_proj), _Proj(attn.v_proj),
                                          _Proj(attn.o_proj))
        self.gate, self.up, self.down = _Proj(mlp.gate_proj), _Proj(mlp.up_proj), _Proj(mlp.down_proj)
        self.heads, self.kv_heads, self.head_dim = attn.num_heads, attn.num_kv_heads, attn.head_dim
        self.window = attn.sliding_window
        self.scale = float(attn.head_dim ** -0.5 if attn.scale is None else attn.scale)
        self.rotary = attn.rotary
        self.kc, self.vc = kv[0][0], kv[1][0]                                 # [Hkv, L, D] (row 0)
        self.attn_out = np.empty((self.heads, self.head_dim), np.float32)    # [H, D]


class DecodePlan:
    """Raw arrays of a LLaMA-family model, built once, that run one token per :meth:`step`.

    ``step(token)`` embeds the token, runs every layer on preallocated buffers (writing its K/V
    into the cache's slot ``len(cache)``), advances the cache and returns the float32 logits
    ``[V]`` — what the module forward returns for ``ids [[token]]`` with ``logits_to_keep=1``.
    """

    def __init__(self, model, backbone, cache: KVCache):
        self.cache = cache
        self.layers = [_Layer(layer, (lc.k, lc.v)) for layer, lc in zip(backbone.layers, cache.layers)]
        emb = backbone.embed_tokens
        self.embed_q = emb.qweight if isinstance(emb, QuantizedEmbedding) else None
        self.embed_f = None if self.embed_q is not None else np.asarray(emb.weight.data, np.float32)
        self.norm = np.asarray(backbone.norm.weight.data, np.float32)
        self.eps = float(backbone.norm.eps)
        self.head = _Proj(model.lm_head)
        d = model.config.hidden_size
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
            from axon_llm.errors import InputError

            raise InputError(f"the KV cache holds {cache.max_length} tokens; {slot} are used and 1 more was fed")
        position = int(cache.seen[0])
        tables = self._rope(position)
        x, h = self.x, self.h
        if self.embed_q is not None:
            x[:] = quant_rows(self.embed_q, np.array([token], np.int64))[0]
        else:
            x[:] = self.embed_f[token]
        for ly in self.layers:
            cos, sin = tables[id(ly.rotary)]
            rms_norm_into(x, ly.norm1, ly.eps1, h)
            q = ly.q(h).reshape(ly.heads, ly.head_dim)                        # [H*D] -> [H, D]
            k = ly.k(h).reshape(ly.kv_heads, ly.head_dim)                     # [Hkv, D]
            v = ly.v(h).reshape(ly.kv_heads, ly.head_dim)
            lo = 0 if ly.window is None else max(0, slot - ly.window + 1)
            rope_attend(q, k, v, ly.kc, ly.vc, slot, lo, cos, sin, ly.scale, ly.attn_out)
            x += ly.o(ly.attn_out.reshape(-1))                                # [H, D] -> [H*D] -> [d]
            rms_norm_into(x, ly.norm2, ly.eps2, h)
            g = ly.gate(h)
            silu_mul(g, ly.up(h))
            x += ly.down(g)
        rms_norm_into(x, self.norm, self.eps, h)
        logits = self.head(h).copy()                                          # [V]
        for lc in cache.layers:
            lc.length = slot + 1
        cache.advance(np.ones((1, 1), np.int64))
        return logits
