"""SSM: the Mamba language model (transformers' ``MambaForCausalLM``), on the selective-scan kernel.

Structure (state-dict names are transformers')::

    backbone.embeddings                      Embedding(V, d)
    backbone.layers.N.norm                   RMSNorm(d)          x += mixer(norm(x))
    backbone.layers.N.mixer.*                MambaMixer          (axon_llm/mamba.py)
    backbone.norm_f                          RMSNorm(d)
    lm_head                                  tied to backbone.embeddings (unless tie_word_embeddings=False)

The math, and which line implements it, is in docs/models/ssm.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

import axon
from axon import nn
from axon_llm.blocks import CausalLM, normal_embedding
from axon_llm.config import ModelConfig, check_eps, check_positive
from axon_llm.errors import ConfigError, InputError
from axon_llm.cache import LayerStateCache
from axon_llm.mamba import MambaMixer, MambaState

__all__ = ["SSMConfig", "SSMBlock", "SSMModel", "SSMForCausalLM", "SSMCache", "StateContext"]


@dataclass
class SSMConfig(ModelConfig):
    """Mamba hyper-parameters, with transformers' ``MambaConfig`` field names.

    ``intermediate_size`` (d_inner) defaults to ``expand * hidden_size`` and ``time_step_rank``
    (dt_rank) to ``ceil(hidden_size / 16)``, as in transformers.
    """

    model_type: ClassVar[str] = "mamba"
    architecture: ClassVar[str] = "MambaForCausalLM"

    vocab_size: int = 50280
    hidden_size: int = 768
    state_size: int = 16
    num_hidden_layers: int = 32
    expand: int = 2
    conv_kernel: int = 4
    intermediate_size: int | None = None
    time_step_rank: int | str | None = "auto"
    layer_norm_epsilon: float = 1e-5
    use_bias: bool = False
    use_conv_bias: bool = True
    hidden_act: str = "silu"
    residual_in_fp32: bool = True
    tie_word_embeddings: bool = True
    initializer_range: float = 0.1
    time_step_scale: float = 1.0
    time_step_min: float = 1e-3
    time_step_max: float = 0.1
    time_step_floor: float = 1e-4
    pad_token_id: int | None = 0
    bos_token_id: int | None = 0
    eos_token_id: int | None = 0
    max_position_embeddings: int = 1 << 20  # no positional limit; the generation loop reads it

    def __post_init__(self):
        if self.intermediate_size is None:
            self.intermediate_size = int(self.expand * self.hidden_size)
        if self.time_step_rank in (None, "auto"):
            self.time_step_rank = math.ceil(self.hidden_size / 16)
        check_positive(self, "vocab_size", "hidden_size", "state_size", "num_hidden_layers", "conv_kernel",
                  "intermediate_size", "time_step_rank")
        if self.hidden_act != "silu":
            raise ConfigError(f"SSMConfig.hidden_act: only 'silu' (Mamba's activation) is supported, got {self.hidden_act!r}")
        check_eps(self, "layer_norm_epsilon")

    @classmethod
    def from_d_model(cls, d_model: int, vocab_size: int, num_layers: int = 4) -> "SSMConfig":
        """The crate's constructor: d_inner 2d, d_state 16, d_conv 4, dt_rank ceil(d/16)."""
        return cls(vocab_size=vocab_size, hidden_size=d_model, num_hidden_layers=num_layers,
                   state_size=16, expand=2, conv_kernel=4)

    @classmethod
    def tiny(cls) -> "SSMConfig":
        """A test-sized model (vocab 1000, d 64, 2 layers)."""
        return cls.from_d_model(64, 1000, num_layers=2)

    @classmethod
    def mamba_130m(cls) -> "SSMConfig":
        """state-spaces/mamba-130m-hf: d 768, 24 layers, vocab 50280 (129.1M parameters)."""
        return cls(vocab_size=50280, hidden_size=768, num_hidden_layers=24)


    def num_parameters(self) -> int:
        """Parameter count from the config alone (tied lm_head counted once)."""
        d, di, n, k, r, V = (self.hidden_size, self.intermediate_size, self.state_size,
                             self.conv_kernel, self.time_step_rank, self.vocab_size)
        mixer = (d * 2 * di + (2 * di if self.use_bias else 0)          # in_proj
                 + di * k + (di if self.use_conv_bias else 0)            # conv1d
                 + di * (r + 2 * n)                                      # x_proj
                 + r * di + di                                           # dt_proj
                 + di * n + di                                           # A_log, D
                 + di * d + (d if self.use_bias else 0))                 # out_proj
        block = d + mixer                                                # norm + mixer
        head = 0 if self.tie_word_embeddings else V * d
        return V * d + self.num_hidden_layers * block + d + head


class SSMCache(LayerStateCache):
    """Per-layer streaming state (conv state [B, di, k-1] + SSM state [B, di, n]) of an SSM model.

    ``seen`` is the number of tokens consumed; feeding T tokens advances it by T.
    Its size does not depend on ``max_length`` (Mamba keeps no per-token memory).
    """

    def __init__(self, config: SSMConfig, batch_size: int, max_length: int | None = None, dtype=np.float32):
        if batch_size < 1:
            raise InputError(f"a cache needs batch_size >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.max_length = max_length
        self.layers = [MambaState(batch_size, config.intermediate_size, config.state_size,
                                  config.conv_kernel, dtype) for _ in range(config.num_hidden_layers)]


class SSMBlock(nn.Module):
    """One residual Mamba block: ``x + mixer(RMSNorm(x))`` (HF ``MambaBlock``)."""

    def __init__(self, config: SSMConfig, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.mixer = MambaMixer(
            config.hidden_size, config.intermediate_size, config.state_size, config.conv_kernel,
            config.time_step_rank, config.use_bias, config.use_conv_bias,
            time_step_min=config.time_step_min, time_step_max=config.time_step_max,
            time_step_floor=config.time_step_floor, time_step_scale=config.time_step_scale)

    def forward(self, x: axon.Tensor, state: MambaState | None = None,
                attention_mask=None) -> axon.Tensor:
        """[B, T, d] -> [B, T, d]."""
        return x + self.mixer(self.norm(x), state=state, attention_mask=attention_mask)


class SSMModel(nn.Module):
    """The Mamba backbone (HF ``MambaModel``): embeddings -> blocks -> norm_f."""

    def __init__(self, config: SSMConfig):
        super().__init__()
        self.embeddings = normal_embedding(config)          # HF's init (tied head)
        self.layers = nn.ModuleList([SSMBlock(config, i) for i in range(config.num_hidden_layers)])
        self.norm_f = nn.RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)

    def forward(self, ids: np.ndarray, ctx: "StateContext") -> axon.Tensor:
        """[B, T] ids -> [B, T, d] hidden states (final norm applied)."""
        h = self.embeddings(ids)                            # [B, T] -> [B, T, d]
        for i, layer in enumerate(self.layers):
            h = layer(h, ctx.state(i), ctx.mask)
        return self.norm_f(h)


@dataclass
class StateContext:
    """The per-call context of a state-space model (SSM, Hydra), in the skeleton's place of the
    attention context: the new tokens' padding mask (float 0/1 ``[B, T]`` or ``None``) and the
    streaming cache whose ``layers[i]`` is layer ``i``'s state (or ``None``: no cache)."""

    mask: np.ndarray | None
    cache: object | None
    router_logits: list = field(default_factory=list)

    @classmethod
    def build(cls, ids: np.ndarray, attention_mask=None, cache=None) -> "StateContext":
        """Check ``attention_mask`` and the cache's batch against ``ids [B, T]``."""
        if cache is not None and cache.batch_size != ids.shape[0]:
            raise InputError(f"cache was made for batch {cache.batch_size}, input has batch {ids.shape[0]}")
        return cls(check_attention_mask(attention_mask, ids), cache)

    def state(self, i: int):
        """Layer ``i``'s streaming state, or ``None`` without a cache."""
        return None if self.cache is None else self.cache.layers[i]

    def finish(self) -> None:
        """Nothing to do: every layer advanced its own state."""


def check_attention_mask(attention_mask, ids: np.ndarray):
    """attention_mask -> float 0/1 [B, T] for the new tokens, or None.

    Accepts ``[B, T]`` or, as transformers' generate passes it, ``[B, S]`` covering the cached
    tokens too (the last T columns are the new tokens').
    """
    if attention_mask is None:
        return None
    m = attention_mask.numpy() if isinstance(attention_mask, axon.Tensor) else attention_mask
    m = np.asarray(m)
    if m.ndim == 1:
        m = m[None, :]
    B_, T = ids.shape
    if m.ndim != 2 or m.shape[0] != B_ or m.shape[1] < T:
        raise InputError(f"attention_mask shape {m.shape} does not fit input_ids shape {ids.shape}")
    if not np.isin(m, (0, 1)).all():
        raise InputError("attention_mask must hold only 0 and 1")
    return m[:, -T:].astype(np.float32)


class SSMForCausalLM(CausalLM):
    """Mamba causal LM (HF ``MambaForCausalLM``): ``logits = model(input_ids, attention_mask, cache)``;
    ``model.generate(ids, max_new_tokens)`` streams through the (conv, ssm) state cache."""

    # diff vs LLaMA: HF prefix "backbone", a state context instead of the attention context
    config_class = SSMConfig
    backbone_class = SSMModel
    backbone_name = "backbone"
    embedding_path = "backbone.embeddings"
    architectures = {"MambaForCausalLM": "mamba"}
    train_name = "ssm"

    def context(self, ids, attention_mask=None, cache: SSMCache | None = None) -> StateContext:
        """The padding mask and the (conv, ssm) state cache of this call."""
        return StateContext.build(ids, attention_mask, cache)

    @classmethod
    def from_hf(cls, folder) -> "SSMForCausalLM":
        """An SSMForCausalLM from a transformers MambaForCausalLM folder.

        Like transformers' ``MambaModel.load_hook``, accepts the older ``backbone.embedding.weight``
        name; a stored copy of the tied ``lm_head.weight`` is ignored.
        """
        from axon_llm.loaders.safetensors import HFLoader, load_state

        loader = HFLoader(folder)
        model = cls(SSMConfig.from_dict(loader.config))
        tensors = {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in loader.tensors().items()}
        load_state(model, tensors, strict=False)          # a stored tied lm_head is skipped; unused tensors warn
        model.eval()
        return model

    def new_cache(self, batch_size: int, max_length: int | None = None) -> SSMCache:
        """A fresh streaming state for ``batch_size`` sequences (size independent of max_length)."""
        table = getattr(self.backbone.embeddings, "weight", None)          # None: a QuantizedEmbedding (GGUF)
        return SSMCache(self.config, batch_size, max_length, dtype=np.float32 if table is None else table.dtype)
