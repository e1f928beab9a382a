"""Building blocks shared by the transformer models.

* :func:`activation` — an activation function by its HF name (``gelu``, ``gelu_new``, ``silu`` ...);
* :class:`GatedMLP` — LLaMA's SwiGLU MLP (``gate_proj``, ``up_proj``, ``down_proj``);
* :class:`TransformerBlock` / :class:`TransformerEncoder` / :class:`TransformerDecoder` — generic
  pre- or post-norm blocks and stacks for building new models from parts (the HF-parity models
  use their own HF-named blocks, which are made of the same pieces);
* :class:`PretrainedModel` — the protocol every HF-named model class declares (config classes,
  HF architectures, training name), from which the architecture table is derived;
* :class:`CausalLM` — THE causal-LM skeleton: default config, type check, per-call context,
  backbone, final norm, LM head (tied one way), ``new_cache``, ``generate``, ``save_pretrained``.

A model file gives :class:`CausalLM` its config class and backbone and overrides only the hooks
where it differs (each marked ``# diff vs LLaMA:``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import axon
import axon.nn as nn
import axon.nn.functional as F

from axon_llm.attention import AttentionContext, MultiHeadAttention
from axon_llm.cache import KVCache
from axon_llm.embeddings import PositionalEmbedding, TokenEmbedding, as_token_ids
from axon_llm.errors import ConfigError, GenerationError

__all__ = ["activation", "normal_embedding", "GatedMLP", "MLP", "TransformerBlock", "TransformerEncoder", "TransformerDecoder",
           "DecoderConfig", "DecoderStack", "PretrainedModel", "CausalLM"]

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
        if self.act is F.silu:
            return self.down_proj(F.swiglu(self.gate_proj(x), self.up_proj(x)))  # one fused node
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))

    def _silu_gate_inference(self, x) -> np.ndarray:
        """``silu(gate_proj x) * up_proj x`` without autograd, written over the gate's array: the
        same kernel as the autograd path's fused node (``axon_kernels.swiglu_forward``, so the two
        paths agree bit for bit), two ``[B, T, inter]`` arrays alive at a time instead of three (a
        500-token prefill's largest activations). Blocks of rows go to the threads
        (`axon_kernels.workers.run_chunks`); the kernel is elementwise, so the split changes nothing."""
        from axon_kernels.swiglu import swiglu_forward
        from axon_kernels.workers import run_chunks

        a = np.ascontiguousarray(self.gate_proj(x).data)                   # [B, T, inter]
        u = np.ascontiguousarray(self.up_proj(x).data)                     # [B, T, inter]
        a2, u2 = a.reshape(-1, a.shape[-1]), u.reshape(-1, u.shape[-1])    # [B*T, inter]
        rows = max(1, _SILU_BLOCK_FLOATS // max(a2.shape[1], 1))

        def block(i: int) -> None:
            g = a2[i * rows:(i + 1) * rows]
            g[...] = swiglu_forward(g, u2[i * rows:(i + 1) * rows])         # silu(gate) * up

        run_chunks(block, -(-a2.shape[0] // rows))
        return a


_SILU_BLOCK_FLOATS = 1 << 16       # elements per block of _silu_gate_inference (256 KB of float32)


def normal_embedding(config) -> nn.Embedding:
    """A ``[vocab_size, hidden_size]`` token table ~ N(0, ``config.initializer_range``) (the
    from-scratch init of the families that initialise themselves: SSM, Hydra, Chimera, Trident)."""
    table = nn.Embedding(config.vocab_size, config.hidden_size)
    nn.init.normal_(table.weight, std=config.initializer_range)
    return table


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


class PretrainedModel(nn.Module):
    """What every model class with a HF counterpart declares, and the one config check they share.

    The class attributes are the protocol the architecture table (``axon_llm.models.ARCHITECTURES``),
    ``from_pretrained`` and ``axon-llm train`` read; no caller looks at a model's type or name:

    * ``config_class`` — the default config (built when none is given); ``config_classes`` every
      config class the model accepts (Phi: ``PhiConfig`` and ``Phi3Config``), all subclasses of it;
    * ``architectures`` — ``{HF architecture name: config.json model_type}`` the class implements;
    * ``train_name`` — its ``axon-llm train --arch`` name (``None``: not trainable from the CLI);
    * ``hf_init`` — True when a from-scratch model takes transformers' ``_init_weights``
      (other families initialise themselves with their own recipes);
    * ``default_pad_token_id`` — the pad id training sets when the tokenizer has none;
    * ``tied_keys`` — state-dict keys aliasing another parameter, skipped by ``save_pretrained``.
    """

    config_class: type | None = None
    config_classes: tuple[type, ...] = ()
    architectures: dict[str, str] = {}
    train_name: str | None = None
    hf_init: bool = False
    #: the pad id a from-scratch training config needs when the tokenizer has none (BERT's padding row)
    default_pad_token_id: int | None = None
    #: state-dict keys that alias another parameter (tied weights): not written to checkpoints
    tied_keys: tuple[str, ...] = ()

    def tied_weights(self) -> tuple[str, ...]:
        """State-dict keys that alias another parameter (not written to checkpoints, filled on load)."""
        return tuple(self.tied_keys)

    @property
    def hf_architecture(self) -> str:
        """The HF architecture this model is saved as: the one of ``architectures`` whose model_type
        is the config's (``MixtralForCausalLM`` for an MoE ``MistralConfig``, ``Phi3ForCausalLM`` ...)."""
        model_type = self.config.to_dict()["model_type"]
        return next(a for a, t in self.architectures.items() if t == model_type)

    def save_pretrained(self, directory):
        """Write ``config.json`` + ``model.safetensors`` that transformers (and ``from_pretrained``) load,
        plus, for a causal LM, ``generation_config.json`` when its generation settings are not just
        the config's defaults."""
        from axon_llm.loaders.safetensors import save_pretrained

        return save_pretrained(self, directory)

    @classmethod
    def accepted_configs(cls) -> tuple[type, ...]:
        """Every config class this model is built from (``config_classes``, else ``(config_class,)``)."""
        return cls.config_classes or (cls.config_class,)

    def checked_config(self, config):
        """``config``, or the default ``config_class()`` for ``None``; ``ConfigError`` for another type."""
        config = self.config_class() if config is None else config
        if not isinstance(config, self.config_class):
            names = " or ".join(c.__name__ for c in self.accepted_configs())
            raise ConfigError(f"{type(self).__name__} needs a {names}, got {type(config).__name__}")
        return config

    def forward_with_aux_loss(self, input_ids):
        """``(logits, aux_loss)`` for training: the model's output and its weighted auxiliary loss
        (a scalar Tensor, e.g. an MoE's load balancing), or ``None`` when it has none."""
        return self(input_ids), None


class CausalLM(PretrainedModel):
    """THE skeleton of every causal LM: default config, type check, per-call context, backbone, head.

    ::

        ids  = token_ids(input_ids)                     # validated int64 [B, T]
        ctx  = context(ids, attention_mask, cache)      # positions, masks, cache slot, router logits
        h    = <backbone_name>(ids, ctx)                # embeddings -> layers -> final norm, [B, T, d]
        ctx.finish()                                    # advance the cache
        logits = lm_head(h)                             # [B, T, V]

    A model file sets ``config_class``, ``backbone_class`` (built as ``backbone_class(config)``
    under HF's prefix ``backbone_name``) and ``embedding_path`` (the input embedding, for tying),
    and overrides a hook only where it differs (a config with ``lm_head_bias = True`` gets a head bias; ``context`` for the state-space models, GPT-2's position check). ``forward(input_ids, attention_mask=None, cache=None) -> logits [B, T, V]``.

    Weight tying is done one way, :meth:`tie_weights`: ``lm_head.weight`` *is* the embedding's
    Parameter. This is transformers' own mechanism, so the state dict has both keys as in
    transformers, ``save_pretrained`` stores the embedding once (``tied_keys`` are skipped) and
    loading fills both; and ``lm_head`` stays a Linear for every model, so the LM-head paths
    (``logits_to_keep``, GGUF's quantised head) need no ``lm_head is None`` branch.
    """

    backbone_class: type | None = None
    backbone_name: str = "model"
    embedding_path: str = "model.embed_tokens"
    #: the fast decode step's layout these layers follow (``axon_llm.decode.LAYOUTS``), or None:
    #: decode through the modules. A family opts in explicitly; see axon_llm/decode.py.
    decode_layout: str | None = None

    def __init__(self, config=None):
        super().__init__()
        self.config = config = self.checked_config(config)
        setattr(self, self.backbone_name, self.backbone_class(config))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=getattr(config, "lm_head_bias", False))
        if getattr(config, "tie_word_embeddings", False):
            self.tie_weights()

    def tie_weights(self) -> None:
        """Make ``lm_head.weight`` the input embedding's Parameter (one tensor, two state-dict keys)."""
        self.lm_head.weight = self.get_submodule(self.embedding_path).weight
        self.tied_keys = ("lm_head.weight",)

    def token_ids(self, input_ids) -> np.ndarray:
        """Validated int64 ``[B, T]`` ids (``InputError`` outside ``[0, vocab)``)."""
        return as_token_ids(input_ids, self.config.vocab_size)

    def context(self, ids: np.ndarray, attention_mask=None, cache=None):
        """The context every layer of this call shares (an :class:`AttentionContext`: positions,
        padding mask, cache slot, router logits)."""
        return AttentionContext.build(ids.shape[0], ids.shape[1], attention_mask, cache)

    def run(self, input_ids, attention_mask=None, cache=None, logits_to_keep: int = 0):
        """``(logits [B, T, V], ctx)``: the forward pass plus its context (router logits ...)."""
        ids = self.token_ids(input_ids)
        ctx = self.context(ids, attention_mask, cache)
        h = getattr(self, self.backbone_name)(ids, ctx)                    # [B, T, d], final norm applied
        ctx.finish()
        if logits_to_keep:
            h = h[:, -int(logits_to_keep):]                                 # [B, T, d] -> [B, n, d]
        return self.lm_head(h), ctx                                         # [B, T or n, V]

    def forward(self, input_ids, attention_mask=None, cache=None, logits_to_keep: int = 0):
        """ids ``[B, T]`` -> logits ``[B, T, V]``; advances ``cache`` by ``T`` when given.

        ``logits_to_keep=n > 0`` computes the logits of the last ``n`` positions only, ``[B, n, V]``
        (transformers' ``logits_to_keep``): generation's prefill needs just the last one, and the
        LM head over the whole vocabulary is a fifth of a small model's prefill work.
        """
        return self.run(input_ids, attention_mask, cache, logits_to_keep)[0]

    def forward_with_router_logits(self, input_ids, attention_mask=None, cache=None):
        """``(logits [B, T, V], router_logits)``: one ``[B*T, E]`` Tensor per MoE layer, in layer
        order (empty for a dense model). MoE layers append theirs to ``ctx.router_logits``."""
        logits, ctx = self.run(input_ids, attention_mask, cache)
        return logits, list(ctx.router_logits)

    def cache_shape(self) -> tuple[int, int, int]:
        """``(num_layers, num_kv_heads, head_dim)`` of the KV cache."""
        c = self.config
        return c.num_hidden_layers, c.num_key_value_heads, c.head_dim

    def new_cache(self, batch_size: int, max_length: int, dtype=None) -> KVCache:
        """A preallocated cache for ``batch_size`` rows of up to ``max_length`` tokens; ``dtype``
        (default: the model's) may be ``np.float16`` for a half-precision K/V cache."""
        layers, kv, hd = self.cache_shape()
        dtype = next(iter(self.parameters())).dtype if dtype is None else np.dtype(dtype)
        return KVCache(layers, batch_size, max_length, kv, hd, dtype=dtype)

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


@dataclass
class DecoderConfig:
    """Sizes of a :class:`TransformerDecoder` (not a HF config: this model has no HF counterpart)."""

    vocab_size: int
    hidden_size: int
    num_attention_heads: int
    num_hidden_layers: int
    intermediate_size: int
    max_len: int = 2048
    act: str = "gelu"
    eps: float = 1e-5
    dropout: float = 0.0
    tie_word_embeddings: bool = False

    @property
    def num_key_value_heads(self) -> int:
        """No GQA: one kv head per query head."""
        return self.num_attention_heads

    @property
    def head_dim(self) -> int:
        """hidden_size // num_attention_heads."""
        return self.hidden_size // self.num_attention_heads


class DecoderStack(nn.Module):
    """The backbone of :class:`TransformerDecoder`: token + sinusoidal embeddings, pre-norm blocks, final norm."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        c = config
        self.embed_tokens = TokenEmbedding(c.vocab_size, c.hidden_size)
        self.positions = PositionalEmbedding(c.hidden_size, c.max_len)
        self.layers = nn.ModuleList([
            TransformerBlock(c.hidden_size, c.num_attention_heads, c.intermediate_size, layer_idx=i, causal=True,
                             pre_norm=True, act=c.act, eps=c.eps, dropout=c.dropout)
            for i in range(c.num_hidden_layers)])
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.eps)

    def forward(self, ids: np.ndarray, ctx: AttentionContext):
        """int64 ids ``[B, T]`` -> final hidden states ``[B, T, d]``."""
        x = self.embed_tokens(ids) + self.positions(ctx.positions)           # [B, T, d]
        for layer in self.layers:
            x = layer(x, ctx)
        return self.norm(x)


class TransformerDecoder(CausalLM):
    """A small generic decoder-only LM from the parts above (sinusoidal positions), on the skeleton.

    ``TransformerDecoder(vocab_size, d_model, num_heads, num_layers, d_ff)``; call protocol as
    every causal LM: ``logits = model(ids, attention_mask=None, cache=None)``.
    """

    config_class = DecoderConfig
    backbone_class = DecoderStack

    def __init__(self, vocab_size: int, d_model: int, num_heads: int, num_layers: int, d_ff: int, *,
                 max_len: int = 2048, act: str = "gelu", eps: float = 1e-5, dropout: float = 0.0):
        super().__init__(DecoderConfig(vocab_size, d_model, num_heads, num_layers, d_ff, max_len=max_len, act=act,
                                       eps=eps, dropout=dropout))
