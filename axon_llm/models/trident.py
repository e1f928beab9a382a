"""Trident: the BitNet b1.58 language model (transformers' ``BitNetForCausalLM``).

A LLaMA-shaped decoder whose seven projections are :class:`~axon_llm.ternary.TernaryLinear`
(ternary weights, int8 activations), with two extra RMSNorms ("SubLN") in front of the
output projections and a squared-ReLU gated MLP::

    h  = RMSNorm(x)                                    input_layernorm
    x += o_proj(attn_sub_norm(attn(q_proj h, k_proj h, v_proj h)))    RoPE + GQA, causal
    h  = RMSNorm(x)                                    post_attention_layernorm
    x += down_proj(ffn_sub_norm(relu(gate_proj h)^2 * up_proj h))

Embedding and lm_head stay float32 (lm_head untied unless ``tie_word_embeddings``). State-dict
names are transformers' (``model.layers.N.self_attn.q_proj.weight`` ...). The math and the
lines that implement it are in docs/models/trident.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

import axon
import axon.nn.functional as F
from axon import nn
from axon_llm.attention import AttentionContext, MultiHeadAttention, attend, merge_heads
from axon_llm.blocks import CausalLM, normal_embedding
from axon_llm.config import RotaryConfig, check_decoder, check_eps, check_rotary
from axon_llm.errors import CheckpointError, ConfigError, UnsupportedError
from axon_llm.models.llama import LLaMAModel
from axon_llm.rope import RotaryEmbedding, apply_rotary_pos_emb
from axon_llm.ternary import TernaryLinear, latent_weight, unpack_hf_ternary

__all__ = ["TridentConfig", "TridentBackbone", "TridentForCausalLM", "TridentForCausalLM", "BitNetAttention", "BitNetMLP",
           "BitNetDecoderLayer"]

TERNARY_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TridentConfig(RotaryConfig):
    """BitNet b1.58 hyper-parameters (transformers' ``BitNetConfig`` field names) and the crate's presets."""

    model_type: ClassVar[str] = "bitnet"
    architecture: ClassVar[str] = "BitNetForCausalLM"

    vocab_size: int = 128256
    hidden_size: int = 2560
    intermediate_size: int = 6912
    num_hidden_layers: int = 30
    num_attention_heads: int = 20
    num_key_value_heads: int | None = 5
    hidden_act: str = "relu2"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: dict | None = None
    attention_bias: bool = False
    attention_dropout: float = 0.0
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 128000
    eos_token_id: int | list[int] | None = 128001
    pad_token_id: int | None = None
    #: transformers' ``quantization_config``: None or quantization_mode "online" = float weights
    #: quantised on the fly; "offline" = pre-packed uint8 weights + weight_scale.
    quantization_config: dict | None = None

    def __post_init__(self) -> None:
        check_decoder(self)
        if self.head_dim % 2:
            raise ConfigError(f"TridentConfig: head_dim ({self.head_dim}) must be even for RoPE")
        if self.hidden_act != "relu2":
            raise UnsupportedError(f"TridentConfig.hidden_act={self.hidden_act!r}: BitNet b1.58 uses 'relu2'")
        if self.attention_bias:
            raise UnsupportedError("TridentConfig.attention_bias=True: BitNet b1.58 has no biases")
        check_eps(self, "rms_norm_eps")
        check_rotary(self)
        if self.rope_scaling is not None:
            raise UnsupportedError("TridentConfig: rope_scaling is not supported (BitNet uses plain RoPE)")
        q = self.quantization_config
        if q is not None:
            if q.get("quant_method", "bitnet") != "bitnet":
                raise UnsupportedError(f"quantization_config quant_method {q.get('quant_method')!r}; only 'bitnet'")
            if q.get("linear_class", "autobitlinear") not in ("autobitlinear", "bitlinear"):
                raise UnsupportedError(f"quantization_config linear_class {q.get('linear_class')!r}")
            if q.get("use_rms_norm"):
                raise UnsupportedError("quantization_config use_rms_norm=True (an extra RMSNorm inside "
                                       "every BitLinear) is not supported")

    @property
    def head_dim(self) -> int:
        """Width of one attention head: hidden_size // num_attention_heads."""
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict[str, Any]:
        """config.json for transformers. Saved weights are the float latent ones, so the file asks
        transformers to quantise them on the fly (``quantization_mode: online``), as we do."""
        out = super().to_dict()
        out["quantization_config"] = {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                      "quantization_mode": "online", "modules_to_not_convert": None,
                                      "use_rms_norm": False}
        return out

    def num_parameters(self) -> int:
        """Parameter count from the config alone (a tied lm_head counted once)."""
        d, f, V, hd = self.hidden_size, self.intermediate_size, self.vocab_size, self.head_dim
        q, kv = self.num_attention_heads * hd, self.num_key_value_heads * hd
        attn = d * q + 2 * d * kv + q * d + d            # q, k, v, o + attn_sub_norm
        mlp = 3 * d * f + f                              # gate, up, down + ffn_sub_norm
        per_layer = attn + mlp + 2 * d                   # + input / post-attention norms
        head = 0 if self.tie_word_embeddings else V * d
        return V * d + self.num_hidden_layers * per_layer + d + head

    def num_ternary_parameters(self) -> int:
        """Weights held by TernaryLinear layers (the ones packed to 2 bits)."""
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_attention_heads * hd, self.num_key_value_heads * hd
        return self.num_hidden_layers * (d * q + 2 * d * kv + q * d + 3 * d * f)

    # -- the crate's presets (d / layers / heads / kv / ffn / ctx), all theta 5e5, eps 1e-5 --
    @classmethod
    def _preset(cls, vocab, d, layers, heads, kv, ffn, ctx, **kw) -> "TridentConfig":
        return cls(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                   num_key_value_heads=kv, intermediate_size=ffn, max_position_embeddings=ctx,
                   rope_theta=500000.0, rms_norm_eps=1e-5, bos_token_id=kw.pop("bos_token_id", 1),
                   eos_token_id=kw.pop("eos_token_id", 2), **kw)

    @classmethod
    def tiny(cls) -> "TridentConfig":
        """vocab 1000, d 64, 2 layers, 4 heads, 2 kv heads, ffn 256, ctx 128."""
        return cls._preset(1000, 64, 2, 4, 2, 256, 128)

    @classmethod
    def default_150m(cls) -> "TridentConfig":
        """vocab 32000, d 512, 12 layers, 8 heads, 4 kv, ffn 2048, ctx 2048."""
        return cls._preset(32000, 512, 12, 8, 4, 2048, 2048)

    @classmethod
    def medium(cls) -> "TridentConfig":
        """vocab 32000, d 768, 16 layers, 12 heads, 4 kv, ffn 3072, ctx 2048."""
        return cls._preset(32000, 768, 16, 12, 4, 3072, 2048)

    @classmethod
    def trident_1b(cls, vocab_size: int = 32000) -> "TridentConfig":
        """d 2048, 24 layers, 16 heads, 4 kv, ffn 5504, ctx 4096."""
        return cls._preset(vocab_size, 2048, 24, 16, 4, 5504, 4096)

    @classmethod
    def trident_3b(cls, vocab_size: int = 32000) -> "TridentConfig":
        """d 3200, 26 layers, 32 heads, 8 kv, ffn 8640, ctx 4096."""
        return cls._preset(vocab_size, 3200, 26, 32, 8, 8640, 4096)

    @classmethod
    def smoke(cls, vocab_size: int = 1000) -> "TridentConfig":
        """d 256, 4 layers, 8 heads, 2 kv, ffn 688, ctx 512."""
        return cls._preset(vocab_size, 256, 4, 8, 2, 688, 512)

    @classmethod
    def bitnet_2b4t(cls) -> "TridentConfig":
        """microsoft/bitnet-b1.58-2B-4T: d 2560, 30 layers, 20 heads, 5 kv, ffn 6912, vocab 128256,
        ctx 4096, embeddings tied (2.41B parameters)."""
        return cls._preset(128256, 2560, 30, 20, 5, 6912, 4096, tie_word_embeddings=True,
                           bos_token_id=128000, eos_token_id=128001)


class BitNetAttention(MultiHeadAttention):
    """Causal GQA attention with RoPE (LLaMA's), ternary projections and a SubLN before ``o_proj``."""

    # diff vs LLaMA: TernaryLinear projections and attn_sub_norm in front of o_proj

    def __init__(self, config: TridentConfig, layer_idx: int, rotary: RotaryEmbedding):
        object.__setattr__(self, "_init_std", config.initializer_range)  # read by make_projections
        super().__init__(config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                         config.head_dim, layer_idx=layer_idx, rotary=rotary)
        H, Dh, d = config.num_attention_heads, config.head_dim, config.hidden_size
        self.o_proj = TernaryLinear(H * Dh, d, init_std=config.initializer_range)
        self.attn_sub_norm = nn.RMSNorm(H * Dh, eps=config.rms_norm_eps)

    def make_projections(self, hidden_size: int, bias: bool) -> None:
        """Ternary ``q_proj`` [d] -> [H Dh], ``k_proj`` and ``v_proj`` [d] -> [Hkv Dh], no biases."""
        H, Hkv, Dh, std = self.num_heads, self.num_kv_heads, self.head_dim, self._init_std
        self.q_proj = TernaryLinear(hidden_size, H * Dh, init_std=std)
        self.k_proj = TernaryLinear(hidden_size, Hkv * Dh, init_std=std)
        self.v_proj = TernaryLinear(hidden_size, Hkv * Dh, init_std=std)

    def forward(self, x, ctx: AttentionContext):
        """x [B, T, d] -> [B, T, d]."""
        q, k, v = self.project_qkv(x)                                    # [B, H|Hkv, T, Dh]
        cos, sin = ctx.rope(self.rotary)
        q, k = apply_rotary_pos_emb(q, cos, sin), apply_rotary_pos_emb(k, cos, sin)
        if ctx.cache is not None:
            k, v = ctx.cache.update(self.layer_idx, k, v)  # [B, Hkv, S, Dh]
        out = attend(q, k, v, ctx, causal=True)                          # [B, H, T, Dh]
        return self.o_proj(self.attn_sub_norm(merge_heads(out)))         # [B, T, H*Dh] -> [B, T, d]


class BitNetMLP(nn.Module):
    """``down_proj(ffn_sub_norm(relu(gate_proj x)^2 * up_proj x))`` with ternary projections."""

    def __init__(self, config: TridentConfig):
        super().__init__()
        d, f, std = config.hidden_size, config.intermediate_size, config.initializer_range
        self.gate_proj = TernaryLinear(d, f, init_std=std)
        self.up_proj = TernaryLinear(d, f, init_std=std)
        self.down_proj = TernaryLinear(f, d, init_std=std)
        self.ffn_sub_norm = nn.RMSNorm(f, eps=config.rms_norm_eps)

    def forward(self, x):
        """[B, T, d] -> [B, T, d] (via [B, T, ffn])."""
        g = F.relu(self.gate_proj(x))
        return self.down_proj(self.ffn_sub_norm(g * g * self.up_proj(x)))


class BitNetDecoderLayer(nn.Module):
    """Pre-norm residual block: attention then squared-ReLU MLP."""

    def __init__(self, config: TridentConfig, layer_idx: int, rotary: RotaryEmbedding):
        super().__init__()
        self.self_attn = BitNetAttention(config, layer_idx, rotary)
        self.mlp = BitNetMLP(config)
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, x, ctx: AttentionContext):
        """[B, T, d] -> [B, T, d]."""
        x = x + self.self_attn(self.input_layernorm(x), ctx)
        return x + self.mlp(self.post_attention_layernorm(x))


class TridentBackbone(LLaMAModel):
    """``model.*`` of BitNetForCausalLM: embed_tokens -> layers -> norm, built as LLaMA's."""

    # diff vs LLaMA: BitNet's layers, plain RoPE over the whole head, N(0, std) embeddings
    layer_class = BitNetDecoderLayer

    def make_embedding(self, config: TridentConfig) -> nn.Embedding:
        """``[V, d]`` ~ N(0, initializer_range)."""
        return normal_embedding(config)

    def make_rotary(self, config: TridentConfig) -> RotaryEmbedding:
        """Plain RoPE over the whole head."""
        return RotaryEmbedding(config.head_dim, config.max_position_embeddings, config.rope_theta)


class TridentForCausalLM(CausalLM):
    """BitNet b1.58 causal LM (HF ``BitNetForCausalLM``): ``logits = model(input_ids, attention_mask=None, cache=None)``.

    ``pack()`` switches every TernaryLinear to the packed int8 x ternary kernel (inference);
    ``unpack()`` back to the straight-through training form.
    """

    # diff vs LLaMA: ternary layers (pack / unpack) and BitNet's own checkpoint format (load_hf_state)
    config_class = TridentConfig
    backbone_class = TridentBackbone
    architectures = {"BitNetForCausalLM": "bitnet"}
    train_name = "trident"

    def ternary_layers(self) -> list[tuple[str, TernaryLinear]]:
        """(name, layer) for every TernaryLinear, in state-dict order."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, TernaryLinear)]

    def pack(self) -> "TridentForCausalLM":
        """Quantise every TernaryLinear to 2-bit codes and run them on the integer kernel."""
        for _, m in self.ternary_layers():
            m.pack()
        return self

    def unpack(self) -> "TridentForCausalLM":
        """Back to the training form (straight-through quantisation of the float weights)."""
        for _, m in self.ternary_layers():
            m.unpack()
        return self

    def packed_weight_nbytes(self) -> tuple[int, int]:
        """(bytes of the packed ternary weights, bytes the same weights take as float32)."""
        packed = sum(m.packed_nbytes() for _, m in self.ternary_layers())
        dense = sum(4 * m.in_features * m.out_features for _, m in self.ternary_layers())
        return packed, dense

    @classmethod
    def from_hf(cls, folder) -> "TridentForCausalLM":
        """A TridentModel from a transformers BitNetForCausalLM folder (dense or packed weights)."""
        from axon_llm.loaders.safetensors import HFLoader

        loader = HFLoader(folder)
        model = cls(TridentConfig.from_dict(loader.config))
        model.load_hf_state(loader.tensors())
        model.eval()
        return model

    def load_hf_state(self, tensors) -> None:
        """Load transformers' BitNet tensors: dense float weights (quantised on the fly, the
        training form) or the pre-quantised uint8 ``weight`` + ``weight_scale`` format, which
        goes straight into the packed inference form of each TernaryLinear.

        Packed conventions (transformers' ``integrations/bitnet.py``): ``linear_class
        "bitlinear"`` computes ``y = xq Wint^T / (weight_scale a)`` so the weight scale is
        ``s = weight_scale``; ``"autobitlinear"`` (offline) computes ``y = xq Wint^T *
        weight_scale``, so ``s = 1 / weight_scale``.
        """
        from axon_llm.loaders.safetensors import load_state

        sd = dict(tensors)
        q = self.config.quantization_config or {}
        divide = q.get("linear_class", "autobitlinear") == "bitlinear"
        ternary_layers = dict(self.ternary_layers())
        packed: dict[str, tuple[np.ndarray, float]] = {}
        for name, layer in ternary_layers.items():
            wkey, skey = f"{name}.weight", f"{name}.weight_scale"
            if skey not in sd:
                continue
            scale_arr = np.asarray(sd.pop(skey), dtype=np.float64).reshape(-1)
            if scale_arr.size != 1:
                raise CheckpointError(f"{skey} must hold one number, got shape {scale_arr.shape}")
            if wkey not in sd:
                raise CheckpointError(f"checkpoint has {skey} but not {wkey}")
            w = np.asarray(sd[wkey])
            if w.dtype == np.uint8:
                try:
                    ternary = unpack_hf_ternary(w, layer.out_features)
                except CheckpointError as e:
                    raise CheckpointError(f"{wkey}: {e}") from None
            else:
                ternary = np.asarray(w, dtype=np.float32)
                if not np.isin(ternary, (-1.0, 0.0, 1.0)).all():
                    raise CheckpointError(f"{wkey}: weights with a weight_scale must be ternary (-1, 0, 1)")
            if ternary.shape != (layer.out_features, layer.in_features):
                raise CheckpointError(f"{wkey}: shape {w.shape} does not fit [{layer.out_features}, "
                                      f"{layer.in_features}] (packed: [{-(-layer.out_features // 4)}, "
                                      f"{layer.in_features}])")
            s = float(scale_arr[0]) if divide else 1.0 / float(scale_arr[0])
            if not (np.isfinite(s) and s > 0):
                raise CheckpointError(f"{skey}: the weight scale must be positive and finite, got {scale_arr[0]}")
            packed[name] = (ternary, s)
            sd[wkey] = latent_weight(ternary, s)                    # training form of the same layer
        load_state(self, sd, strict=False)          # a stored tied lm_head is skipped; unused tensors warn
        for name, (ternary, s) in packed.items():
            ternary_layers[name].set_ternary(ternary, s)


#: the contract's name (``BitNetForCausalLM -> TridentModel``) and the crate's: the same class
TridentModel = TridentForCausalLM
