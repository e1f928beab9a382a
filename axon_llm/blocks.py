"""Building blocks shared by the transformer models.

* :func:`activation` — an activation function by its HF name (``gelu``, ``gelu_new``, ``silu`` ...);
* :class:`GatedMLP` — LLaMA's SwiGLU MLP (``gate_proj``, ``up_proj``, ``down_proj``);
* :class:`TransformerBlock` / :class:`TransformerEncoder` / :class:`TransformerDecoder` — generic
  pre- or post-norm blocks and stacks for building new models from parts (the HF-parity models
  use their own HF-named blocks, which are made of the same pieces);
* :class:`CausalLM` — what every causal LM here shares: input checks, ``new_cache``,
  ``generate``, ``save_pretrained``, tied-weight bookkeeping.

A causal LM implements ``forward(input_ids, attention_mask=None, cache=None) -> logits [B, T, V]``
and the small hooks ``cache_shape()``; the rest comes from :class:`CausalLM`.
"""

from __future__ import annotations

import numpy as np

import axon
import axon.nn as nn
import axon.nn.functional as F

from axon_llm.attention import AttentionContext, MultiHeadAttention
from axon_llm.cache import KVCache
from axon_llm.embeddings import PositionalEmbedding, TokenEmbedding, as_token_ids
from axon_llm.errors import ConfigError, GenerationError

__all__ = ["activation", "GatedMLP", "MLP", "TransformerBlock", "TransformerEncoder", "TransformerDecoder",
           "CausalLM"]

_ACTIVATIONS = {
    "gelu": F.gelu,                      # exact (erf)
    "gelu_new": F.gelu_tanh,             # tanh approximation (GPT-2, Phi)
    "gelu_pytorch_tanh": F.gelu_tanh,
    "gelu_fast": F.gelu_tanh,
    "silu": F.silu,
    "swish": F.silu,
    "relu": F.relu,
}


def activation(name: str):
    """The activation function called ``name`` in HF configs (``ConfigError`` if unknown)."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ConfigError(f"unknown activation {name!r}; known: {', '.join(sorted(_ACTIVATIONS))}") from None


class GatedMLP(nn.Module):
    """SwiGLU MLP (LLaMA, Mistral): ``down_proj(act(gate_proj(x)) * up_proj(x))``."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str = "silu", bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.act = activation(act)

    def forward(self, x):
        """``[B, T, d] -> [B, T, d]``."""
        if self.act is F.silu and not axon.is_grad_enabled():
            return self.down_proj(axon.as_tensor(self._silu_gate_inference(x)))
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))

    def _silu_gate_inference(self, x) -> np.ndarray:
        """``silu(gate_proj x) * up_proj x`` without autograd, in place: the same operations as
        ``F.silu`` (``a * (0.5 (1 + tanh(a / 2)))``), two ``[B, T, inter]`` arrays alive at a
        time instead of three (a 500-token prefill's largest activations)."""
        a = self.gate_proj(x).data                                         # [B, T, inter]
        s = np.multiply(a, a.dtype.type(0.5))
        np.tanh(s, out=s)
        s += 1
        s *= 0.5
        s *= a                                                             # silu(a)
        del a
        s *= self.up_proj(x).data
        return s


class MLP(nn.Module):
    """Plain two-layer MLP: ``fc2(act(fc1(x)))`` (Phi's names)."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str = "gelu_new", bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.fc2 = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.act = activation(act)

    def forward(self, x):
        """``[B, T, d] -> [B, T, d]``."""
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """A generic block: attention + MLP with residuals, pre-norm (GPT/LLaMA) or post-norm (BERT).

    pre-norm:  ``x = x + attn(norm1(x)); x = x + mlp(norm2(x))``
    post-norm: ``x = norm1(x + attn(x)); x = norm2(x + mlp(x))``
    """

    def __init__(self, d_model: int, num_heads: int, d_ff: int, *, layer_idx: int = 0, causal: bool = True,
                 pre_norm: bool = True, act: str = "gelu", norm: str = "layernorm", eps: float = 1e-5,
                 num_kv_heads: int | None = None, rotary=None, sliding_window: int | None = None,
                 bias: bool = True, dropout: float = 0.0):
        super().__init__()
        if d_model % num_heads:
            raise ConfigError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        kv = num_kv_heads or num_heads
        if num_heads % kv:
            raise ConfigError(f"num_heads ({num_heads}) must be divisible by num_kv_heads ({kv})")
        self.pre_norm = pre_norm
        self.self_attn = MultiHeadAttention(d_model, num_heads, kv, d_model // num_heads, layer_idx=layer_idx,
                                            rotary=rotary, bias=bias, sliding_window=sliding_window,
                                            causal=causal, dropout=dropout)
        self.mlp = MLP(d_model, d_ff, act=act, bias=bias)
        make_norm = {"layernorm": lambda: nn.LayerNorm(d_model, eps=eps),
                     "rmsnorm": lambda: nn.RMSNorm(d_model, eps=eps)}.get(norm)
        if make_norm is None:
            raise ConfigError(f"norm must be 'layernorm' or 'rmsnorm', got {norm!r}")
        self.norm1, self.norm2 = make_norm(), make_norm()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, ctx: AttentionContext):
        """``[B, T, d] -> [B, T, d]``."""
        if self.pre_norm:
            x = x + self.dropout(self.self_attn(self.norm1(x), ctx))
            return x + self.dropout(self.mlp(self.norm2(x)))
        x = self.norm1(x + self.dropout(self.self_attn(x, ctx)))
        return self.norm2(x + self.dropout(self.mlp(x)))


class TransformerEncoder(nn.Module):
    """A stack of non-causal blocks (post-norm by default, as BERT): ``[B, T, d] -> [B, T, d]``."""

    def __init__(self, num_layers: int, d_model: int, num_heads: int, d_ff: int, *, pre_norm: bool = False,
                 act: str = "gelu", eps: float = 1e-12, dropout: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList([
            TransformerBlock(d_model, num_heads, d_ff, layer_idx=i, causal=False, pre_norm=pre_norm, act=act,
                             eps=eps, dropout=dropout) for i in range(num_layers)])

    def forward(self, x, attention_mask=None):
        """``x [B, T, d]``, optional padding mask ``[B, T]`` (1 = real token)."""
        ctx = AttentionContext.build(x.shape[0], x.shape[1], attention_mask)
        for layer in self.layers:
            x = layer(x, ctx)
        return x


class CausalLM(nn.Module):
    """Shared behaviour of every causal LM; subclasses set ``config`` and implement ``forward``.

    Subclasses provide ``cache_shape() -> (num_layers, num_kv_heads, head_dim)``; models with
    tied weights list the tied keys in ``tied_keys`` (not stored in checkpoints).
    """

    tied_keys: tuple[str, ...] = ()
    hf_architecture: str | None = None

    def token_ids(self, input_ids) -> np.ndarray:
        """Validated int64 ``[B, T]`` ids (``InputError`` outside ``[0, vocab)``)."""
        return as_token_ids(input_ids, self.config.vocab_size)

    def cache_shape(self) -> tuple[int, int, int]:
        """``(num_layers, num_kv_heads, head_dim)`` of the KV cache."""
        c = self.config
        return c.num_hidden_layers, c.num_key_value_heads, c.head_dim

    def new_cache(self, batch_size: int, max_length: int) -> KVCache:
        """A preallocated cache for ``batch_size`` rows of up to ``max_length`` tokens."""
        layers, kv, hd = self.cache_shape()
        dtype = next(iter(self.parameters())).dtype
        return KVCache(layers, batch_size, max_length, kv, hd, dtype=dtype)

    def tied_weights(self) -> tuple[str, ...]:
        """State-dict keys that alias another parameter (not written to checkpoints)."""
        return tuple(self.tied_keys)

    @property
    def generation_config(self):
        """The model's default :class:`~axon_llm.sampling.GenerationConfig`, as transformers'
        ``model.generation_config``: greedy, 24 new tokens, EOS / pad ids from ``config`` — or
        what was assigned (``from_pretrained`` assigns the folder's ``generation_config.json``).
        ``generate`` uses it unless given a ``generation_config`` or ``eos_token_id``."""
        cfg = self.__dict__.get("_generation_config")
        if cfg is not None:
            return cfg
        from axon_llm.generation import generation_config_from_model_config

        return generation_config_from_model_config(getattr(self, "config", None))

    @generation_config.setter
    def generation_config(self, value) -> None:
        from axon_llm.sampling import GenerationConfig

        if value is not None and not isinstance(value, GenerationConfig):
            raise GenerationError(f"generation_config must be a GenerationConfig (or None for the config's defaults), "
                            f"got {type(value).__name__}")
        self.__dict__["_generation_config"] = value

    def generate(self, input_ids, max_new_tokens: int | None = None, do_sample: bool | None = None,
                 **kwargs) -> np.ndarray:
        """Continue ``input_ids [B, T]``; returns int64 ``[B, T + new]`` (see ``axon_llm.generation.generate``).

        Unset settings come from :attr:`generation_config` (greedy, 24 new tokens, stopping at the
        model's EOS); ``eos_token_id=None`` switches EOS off.
        """
        from axon_llm.generation import generate

        return generate(self, input_ids, max_new_tokens=max_new_tokens, do_sample=do_sample, **kwargs)

    def merge_adapter(self):
        """Fold a LoRA adapter into the weights (see :func:`axon_llm.lora.merge_adapter`); returns ``self``."""
        from axon_llm.lora import merge_adapter

        return merge_adapter(self)

    def save_pretrained(self, directory):
        """Write ``config.json`` + ``model.safetensors`` that transformers (and ``from_pretrained``) load,
        plus ``generation_config.json`` when :attr:`generation_config` is not just the config's defaults."""
        from axon_llm.loaders.safetensors import save_pretrained

        return save_pretrained(self, directory)


class TransformerDecoder(CausalLM):
    """A small generic decoder-only LM from the parts above (sinusoidal or rotary positions).

    ``TransformerDecoder(vocab_size, d_model, num_heads, num_layers, d_ff)``; call protocol as
    every causal LM: ``logits = model(ids, attention_mask=None, cache=None)``.
    """

    def __init__(self, vocab_size: int, d_model: int, num_heads: int, num_layers: int, d_ff: int, *,
                 max_len: int = 2048, act: str = "gelu", eps: float = 1e-5, dropout: float = 0.0):
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(vocab_size=vocab_size, num_hidden_layers=num_layers,
                                      num_key_value_heads=num_heads, head_dim=d_model // num_heads)
        self.embed_tokens = TokenEmbedding(vocab_size, d_model)
        self.positions = PositionalEmbedding(d_model, max_len)
        self.layers = nn.ModuleList([
            TransformerBlock(d_model, num_heads, d_ff, layer_idx=i, causal=True, pre_norm=True, act=act, eps=eps,
                             dropout=dropout) for i in range(num_layers)])
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, input_ids, attention_mask=None, cache=None):
        """ids ``[B, T]`` -> logits ``[B, T, V]``."""
        ids = self.token_ids(input_ids)
        ctx = AttentionContext.build(ids.shape[0], ids.shape[1], attention_mask, cache)
        x = self.embed_tokens(ids) + self.positions(ctx.positions)           # [B, T, d]
        for layer in self.layers:
            x = layer(x, ctx)
        ctx.finish()
        return self.lm_head(self.norm(x))                                   # [B, T, V]
