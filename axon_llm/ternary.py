"""Ternary (BitNet b1.58) linear layer: straight-through training, packed int8 x ternary inference.

The b1.58 recipe (Ma et al. 2024; transformers' ``AutoBitLinear``)::

    weights     s = 1 / max(mean|W|, 1e-5)          (one scale per tensor)
                Wq = clip(round(W s), -1, 1) / s     values {-1/s, 0, +1/s}
    activations a = 127 / max(max|x|, 1e-5)          (one scale per token, last axis)
                xq = clip(round(x a), -128, 127) / a
    y = xq @ Wq^T (+ bias)

``round`` is round-half-to-even (``np.round``, as ``torch.round``), and ``a`` is evaluated as torch
evaluates transformers' ``127 / max|x|`` -- ``(1 / max|x|) * 127``, two float32 roundings -- so
that the codes are bit-identical to transformers' for the same input, exact .5 ties included
(``kernels.quantize_activations``; docs/models/trident.md).

Training (``TernaryLinear`` with its float ``weight``): both quantisers are applied in the
forward pass and their gradient is the identity (straight-through estimator), so the float
"latent" weights receive the gradient of the quantised network. The autograd Function is
``axon.kernel_ops.ternary_linear`` (codes from ``kernels.ternary_codes`` and
``kernels.quantize_activations``, the same float32 formulas as transformers' quantisers).

Inference (after :meth:`TernaryLinear.pack`): the weights are stored as 2-bit codes, four to a
byte (``kernels.ternary_quantize``), and ``kernels.ternary_matmul`` multiplies int8 activations
by them with integer accumulation, then rescales once by ``1 / (a s)``. Same numbers as the
training forward, 1/16 of the float32 weight memory.

transformers' pre-quantised format is read too (:func:`unpack_hf_ternary`): ``weight`` is uint8
``[ceil(out/4), in]`` packed along *out_features* (value ``w + 1`` in bits ``2i..2i+1`` of row
``r`` is row ``i * ceil(out/4) + r`` of the ternary matrix) with a ``weight_scale``.
"""

from __future__ import annotations

import math

import numpy as np

import axon
import axon_kernels as kernels
from axon import kernel_ops, nn
from axon_llm.errors import CheckpointError, InputError, UnsupportedError

__all__ = ["TernaryLinear", "unpack_hf_ternary", "pack_hf_ternary", "latent_weight"]


def unpack_hf_ternary(packed: np.ndarray, out_features: int) -> np.ndarray:
    """transformers' packed uint8 [ceil(out/4), in] -> int8 ternary [out, in] (codes 0,1,2 -> -1,0,1)."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 2:
        raise CheckpointError(f"packed ternary weights must be a 2-D uint8 array, got {packed.dtype} {packed.shape}")
    rows = packed.shape[0]
    if not (4 * rows - 3 <= out_features <= 4 * rows):
        raise CheckpointError(f"packed ternary weights with {rows} rows cannot hold {out_features} output features")
    parts = [((packed >> (2 * i)) & 3) for i in range(4)]            # 4 x [rows, in]
    codes = np.concatenate(parts, axis=0)[:out_features]              # [4 rows, in] -> [out, in]
    if (codes == 3).any():
        raise CheckpointError("packed ternary weights contain the invalid 2-bit code 3")
    return codes.astype(np.int8) - 1


def pack_hf_ternary(ternary: np.ndarray) -> np.ndarray:
    """int ternary [out, in] -> transformers' packed uint8 [ceil(out/4), in] (inverse of unpack_hf_ternary)."""
    t = np.asarray(ternary)
    out, _ = t.shape
    rows = (out + 3) // 4
    codes = np.zeros((4 * rows, t.shape[1]), dtype=np.uint8)
    codes[:out] = (t + 1).astype(np.uint8)
    packed = np.zeros((rows, t.shape[1]), dtype=np.uint8)
    for i in range(4):
        packed |= codes[i * rows:(i + 1) * rows] << (2 * i)
    return packed


def latent_weight(ternary: np.ndarray, scale: float) -> np.ndarray:
    """A float weight whose absmean quantisation is exactly ``ternary / scale``.

    With ``f = mean|t|`` (the share of non-zero codes), ``W = t / (s f)`` has ``mean|W| = 1/s``,
    so absmean quantisation finds the scale ``s`` again and ``round(W s) = round(t / f) -> t``
    after clipping (``|t / f| >= 1`` where ``t != 0``).
    """
    t = np.asarray(ternary, dtype=np.float32)
    frac = float(np.abs(t).mean()) if t.size else 0.0
    if frac == 0.0:
        return np.zeros_like(t)
    return t / np.float32(scale * frac)


class TernaryLinear(nn.Module):
    """A BitNet b1.58 linear layer: ``y = act_quant(x) @ weight_quant(W)^T (+ bias)``.

    ``weight`` [out, in] is the float latent weight trained through the straight-through
    estimator. :meth:`pack` switches the layer to inference form (2-bit weights + one scale,
    run by ``kernels.ternary_matmul``); :meth:`unpack` switches back.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 init_std: float = 0.02):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features

        def normal_init(arr, rng):
            arr[...] = rng.standard_normal(arr.shape) * init_std

        self.weight = nn.Parameter.lazy((out_features, in_features), init=normal_init)
        self.bias = nn.Parameter.lazy((out_features,)) if bias else None   # zeros
        self.packed: np.ndarray | None = None   # uint8 [out, ceil(in/4)] once packed
        self.scale: float | None = None          # the weight scale s of the packed codes

    @property
    def is_packed(self) -> bool:
        """True after :meth:`pack` (forward then runs the 2-bit integer kernel)."""
        return self.packed is not None

    def pack(self) -> "TernaryLinear":
        """Quantise the float weight to 2-bit codes (4 per byte) for the integer inference kernel."""
        self.packed, self.scale = kernels.ternary_quantize(np.asarray(self.weight.data, dtype=np.float32))
        return self

    def set_ternary(self, ternary: np.ndarray, scale: float) -> "TernaryLinear":
        """Install already-quantised weights (ternary ints [out, in] meaning ``ternary / scale``)."""
        t = np.asarray(ternary, dtype=np.float32)
        if t.shape != (self.out_features, self.in_features):
            raise CheckpointError(f"ternary weights of shape {t.shape} do not fit TernaryLinear"
                             f"({self.in_features}, {self.out_features})")
        scale = float(scale)
        if not (math.isfinite(scale) and scale > 0):
            raise CheckpointError(f"ternary weight scale must be a positive finite number, got {scale}")
        self.packed, self.scale = kernels.ternary_pack(t.astype(np.int8)), scale
        self.weight.data = latent_weight(t, scale)   # so unpack() computes the same function
        return self

    def unpack(self) -> "TernaryLinear":
        """Back to the training form (the float latent weight is kept while packed)."""
        self.packed, self.scale = None, None
        return self

    def packed_nbytes(self) -> int:
        """Bytes of the packed weight codes (+ the float32 scale)."""
        return 0 if self.packed is None else self.packed.nbytes + 4

    def forward(self, x: axon.Tensor) -> axon.Tensor:
        """[..., in] -> [..., out]."""
        if x.shape[-1] != self.in_features:
            raise InputError(f"TernaryLinear expects {self.in_features} input features, got shape {tuple(x.shape)}")
        if self.packed is not None:
            if self.training and axon.is_grad_enabled() and self.weight.requires_grad:
                raise UnsupportedError("TernaryLinear is packed (the inference form, which has no gradient): "
                                   "call unpack() before training, or run under axon.no_grad() / eval()")
            y = kernels.ternary_matmul(np.asarray(x.data, dtype=np.float32), self.packed, self.scale,
                                       self.in_features)              # [..., in] -> [..., out]
            out = axon.tensor(y.astype(x.dtype, copy=False))
            return out if self.bias is None else out + self.bias
        return kernel_ops.ternary_linear(x, self.weight, self.bias)   # quantise both, STE backward

    def extra_repr(self) -> str:
        """The layer's sizes, bias and packed state, shown by ``repr(module)``."""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, packed={self.is_packed}")
