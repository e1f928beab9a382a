"""Layers whose weights stay GGUF-quantised in memory: QuantizedLinear and QuantizedEmbedding.

Both hold a :class:`kernels.quant.QuantMatrix` (the load-time repacked blocks, see
kernels/quant.py) instead of a float Parameter, so a Q4_1 model takes ~0.75 bytes per weight
instead of 4. The weights are frozen: no gradient flows to them. A gradient does flow to the
*input* of a QuantizedLinear (``dx = dy @ W``, dequantising row chunks), so adapters or
prompts upstream of frozen quantised layers can still be trained. To fine-tune the weights
themselves call :meth:`QuantizedLinear.dequantize` (or :func:`dequantize_model`), which gives
back ordinary float32 ``nn.Linear`` / ``nn.Embedding`` layers.

Decode (one token) uses the fused matvec kernel; prefill uses the fused matmul (or BLAS on
dequantised chunks for long prompts) -- see :func:`kernels.quant.quant_matmul` -- except
prompts of at least ``quant_int8.MIN_TOKENS`` tokens per sequence on 4-bit weights and a CPU with
AVX512-VNNI, which quantise the activations to int8 per block and use integer dot products
(`axon_kernels.quant_int8.use_for`; the choice goes by tokens per sequence, not rows, so a
sequence gets the same path alone or in a batch). Training through the layer (a gradient
recorded) stays on the float path, whose gradient ``dx = dy @ W`` is exact.
"""

from __future__ import annotations

import numpy as np

import axon
import axon.nn as nn
from axon.autograd import Function
from axon_kernels import quant_int8
from axon_kernels.quant import QuantMatrix, dequantize, pack, quant_matmul, quant_matvec, quant_rows, unpack

from axon_llm.embeddings import as_token_ids
from axon_llm.errors import InputError

__all__ = ["QuantizedLinear", "QuantizedEmbedding", "dequantize_model", "quantized_modules", "inference_kernels"]


class _QuantLinearFn(Function):
    """y = x @ W.T for a frozen quantised W; the gradient goes to x only."""

    @staticmethod
    def forward(ctx, x, *, w: QuantMatrix):
        lead = x.shape[:-1]
        x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)   # [..., in] -> [N, in]
        if x2.shape[0] == 1:
            y = quant_matvec(w, x2[0])[None]                                        # [1, out]
        elif ctx is None and quant_int8.use_for(w, x.shape[-2]):   # inference on a long prompt (per sequence)
            y = quant_int8.quant_matmul_int8(w, x2)                                 # [N, out]
        else:
            y = quant_matmul(w, x2)                                                 # [N, out]
        if ctx is not None:
            ctx.w = w
            ctx.x_dtype = x.dtype
        return y.reshape(lead + (w.out_features,))                                  # -> [..., out]

    @staticmethod
    def backward(ctx, grad):
        w: QuantMatrix = ctx.w
        g = grad.reshape(-1, w.out_features).astype(np.float32, copy=False)        # [N, out]
        dx = np.zeros((g.shape[0], w.in_features), np.float32)                     # [N, in]
        step = max(64, (1 << 21) // max(w.in_features, 1) // 64 * 64)
        for r0 in range(0, w.out_features, step):
            r1 = min(r0 + step, w.out_features)
            dx += g[:, r0:r1] @ unpack(w, r0, r1)                                  # [N, rows] @ [rows, in]
        return (dx.reshape(grad.shape[:-1] + (w.in_features,)).astype(ctx.x_dtype, copy=False),)


class QuantizedLinear(nn.Module):
    """``y = x W^T (+ b)`` with ``W`` [out, in] kept quantised (GGUF Q8_0/Q4_0/Q4_1/Q4_K/Q6_K).

    Build with :meth:`from_gguf` (raw GGUF blocks) or from a packed ``QuantMatrix``. The optional
    ``bias`` is an ordinary float32 Parameter.
    """

    def __init__(self, weight: QuantMatrix, bias=None):
        super().__init__()
        if not isinstance(weight, QuantMatrix):
            raise TypeError(f"QuantizedLinear needs a kernels.quant.QuantMatrix, got {type(weight).__name__}")
        self.qweight = weight
        self.out_features, self.in_features = weight.shape
        if bias is not None:
            b = np.asarray(bias, dtype=np.float32)
            if b.shape != (self.out_features,):
                raise InputError(f"bias shape {b.shape} does not match out_features {self.out_features}")
            self.bias = nn.Parameter(b)
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_gguf(cls, qtype: str, raw: np.ndarray, shape, bias=None) -> "QuantizedLinear":
        """From a GGUF tensor's blocks (``raw`` uint8, logical ``shape`` = (out, in))."""
        return cls(pack(qtype, raw, shape), bias)

    @property
    def qtype(self) -> str:
        """The GGUF quantisation type of the weight."""
        return self.qweight.qtype

    def forward(self, x):
        """``[..., in] -> [..., out]`` (float32)."""
        x = x if isinstance(x, axon.Tensor) else axon.tensor(np.asarray(x, dtype=np.float32))
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise InputError(f"QuantizedLinear expects [..., {self.in_features}], got shape {tuple(x.shape)}")
        if x.dtype.kind != "f":
            raise InputError(f"QuantizedLinear expects floating-point input, got {x.dtype}")
        if x.requires_grad and axon.is_grad_enabled():
            y = _QuantLinearFn.apply(x, w=self.qweight)                          # [..., out]
        else:                                    # inference: no graph node (decode calls this ~200x a token)
            y = axon.as_tensor(_QuantLinearFn.forward(None, x.data, w=self.qweight))
        return y + self.bias if self.bias is not None else y

    def dequantize(self) -> nn.Linear:
        """An ordinary float32 ``nn.Linear`` with the dequantised weight (to fine-tune it)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        lin.weight = nn.Parameter(dequantize(self.qweight))
        if self.bias is not None:
            lin.bias = nn.Parameter(np.array(self.bias.data, dtype=np.float32))
        return lin

    def extra_repr(self) -> str:
        """Sizes, quantisation type, bias and bytes of the packed blocks, shown by ``repr(module)``."""
        return (f"in_features={self.in_features}, out_features={self.out_features}, qtype={self.qtype}, "
                f"bias={self.bias is not None}, bytes={self.qweight.nbytes}")


class QuantizedEmbedding(nn.Module):
    """Token embedding ``[V, d]`` kept quantised: rows are dequantised as they are looked up."""

    def __init__(self, weight: QuantMatrix):
        super().__init__()
        if not isinstance(weight, QuantMatrix):
            raise TypeError(f"QuantizedEmbedding needs a kernels.quant.QuantMatrix, got {type(weight).__name__}")
        self.qweight = weight
        self.num_embeddings, self.embedding_dim = weight.shape

    @property
    def qtype(self) -> str:
        """The GGUF quantisation type of the table."""
        return self.qweight.qtype

    def forward(self, input_ids):
        """int ids ``[B, T]`` -> ``[B, T, d]`` float32 (ids outside the vocabulary: InputError)."""
        ids = as_token_ids(input_ids, self.num_embeddings)
        return axon.tensor(quant_rows(self.qweight, ids))                          # [B, T] -> [B, T, d]

    def dequantize(self) -> nn.Embedding:
        """An ordinary float32 ``nn.Embedding``."""
        emb = nn.Embedding(self.num_embeddings, self.embedding_dim)
        emb.weight = nn.Parameter(dequantize(self.qweight))
        return emb

    def extra_repr(self) -> str:
        """Sizes, quantisation type and bytes of the packed blocks, shown by ``repr(module)``."""
        return f"{self.num_embeddings}, {self.embedding_dim}, qtype={self.qtype}, bytes={self.qweight.nbytes}"


def inference_kernels(model: nn.Module) -> tuple[str, ...]:
    """The quantised kernels generating with ``model`` calls (names of
    ``axon_kernels.quant.INFERENCE_KERNELS``): each QuantizedLinear's matvec and prefill kernel
    (the LM head's matvec only: generation keeps the last position's logits), each
    QuantizedEmbedding's row lookup. What the first run compiles ahead (``axon-llm generate``)."""
    head = getattr(model, "lm_head", None)
    names = set()
    for _, m in quantized_modules(model):
        kind = m.qweight.kind
        if isinstance(m, QuantizedEmbedding):
            names.add(f"rows_{kind}")
        else:
            names.add(f"matvec_{kind}")
            if m is not head:
                names.add(f"dense_{kind}")
    return tuple(sorted(names))


def quantized_modules(model: nn.Module):
    """``(name, module)`` for every QuantizedLinear / QuantizedEmbedding in ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (QuantizedLinear, QuantizedEmbedding))]


def dequantize_model(model: nn.Module) -> nn.Module:
    """Replace every quantised layer by its float32 equivalent, in place (for fine-tuning).

    Layers sharing one quantised matrix (a tied ``lm_head``) end up sharing one Parameter.
    Returns ``model``.
    """
    shared: dict[int, nn.Parameter] = {}
    for name, mod in quantized_modules(model):
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        key = id(mod.qweight)
        new = mod.dequantize()
        if key in shared:
            new.weight = shared[key]
        else:
            shared[key] = new.weight
        setattr(parent, attr, new)
    return model
