"""``axon.nn.functional`` (import as ``F``): torch's functional API on axon tensors.

The hot ops (linear, layer_norm, rms_norm, softmax, log_softmax, cross_entropy, gelu, silu, swiglu,
embedding, dropout, conv1d) are single fused nodes (``_fused.py`` / ``ops.py``);
``scaled_dot_product_attention`` picks a kernel (BLAS without a gradient, flash with one) or
its readable composite reference.
"""

from __future__ import annotations

import axon_kernels as kernels
import numpy as np

from .. import kernel_ops, ops
from ..autograd import is_grad_enabled
from ..creation import one_hot, pad
from ..random import get_rng
from ..tensor import Tensor
from . import _fused

__all__ = [
    "linear", "embedding", "layer_norm", "rms_norm", "softmax", "log_softmax", "gelu", "gelu_tanh",
    "silu", "swiglu", "relu", "sigmoid", "tanh", "softplus", "dropout", "cross_entropy", "nll_loss", "mse_loss",
    "conv1d", "scaled_dot_product_attention", "pad", "one_hot", "normalize", "leaky_relu",
]


def _t(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def _float(x: Tensor, name: str) -> Tensor:
    if x.dtype.kind != "f":
        raise TypeError(f"{name}(): expected a floating tensor, got dtype {x.dtype}")
    return x


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``input @ weight.T + bias``; weight is [out_features, in_features]."""
    x = _float(_t(input), "linear")
    if weight.ndim != 2:
        raise ValueError(f"linear: weight must be 2-d [out, in], got shape {tuple(weight.shape)}")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input shape {tuple(x.shape)} does not match weight shape {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"linear: bias shape {tuple(bias.shape)} does not match weight shape {tuple(weight.shape)}")
    return _fused.Linear.apply(x, weight, bias)


def embedding(input, weight: Tensor, padding_idx: int | None = None) -> Tensor:
    """Rows of ``weight`` [num_embeddings, dim] at integer ids ``input`` -> [..., dim]."""
    ids = input.data if isinstance(input, Tensor) else np.asarray(input)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"embedding: ids must be an integer tensor, got dtype {ids.dtype}")
    if weight.ndim != 2:
        raise ValueError(f"embedding: weight must be 2-d [num_embeddings, dim], got shape {tuple(weight.shape)}")
    return _fused.Embedding.apply(ids, weight, padding_idx=padding_idx)


def layer_norm(input: Tensor, normalized_shape, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """Normalise over the trailing ``normalized_shape`` dims; optional elementwise affine."""
    x = _float(_t(input), "layer_norm")
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if tuple(x.shape[x.ndim - len(shape):]) != shape:
        raise ValueError(f"layer_norm: input shape {tuple(x.shape)} does not end with normalized_shape {shape}")
    return _fused.LayerNorm.apply(x, weight, bias, n=len(shape), eps=eps)


def rms_norm(input: Tensor, normalized_shape=None, weight=None, eps: float | None = 1e-6) -> Tensor:
    """x / sqrt(mean(x^2, -1) + eps) * weight, over the last dim (LLaMA's RMSNorm)."""
    x = _float(_t(input), "rms_norm")
    if weight is not None and tuple(weight.shape) != (x.shape[-1],):
        raise ValueError(f"rms_norm: weight shape {tuple(weight.shape)} does not match input shape {tuple(x.shape)}")
    return _fused.RMSNorm.apply(x, weight, eps=1e-6 if eps is None else eps)


def softmax(input: Tensor, dim: int = -1) -> Tensor:
    """Stable softmax along ``dim`` (a fully -inf row gives zeros)."""
    return _t(input).softmax(dim)


def log_softmax(input: Tensor, dim: int = -1) -> Tensor:
    """Stable log-softmax along ``dim``."""
    return _t(input).log_softmax(dim)


def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    """Exact GELU (erf); ``approximate="tanh"`` gives :func:`gelu_tanh`."""
    return _t(input).gelu(approximate=approximate)


def gelu_tanh(input: Tensor) -> Tensor:
    """GELU with the tanh approximation (HF ``gelu_new`` / ``gelu_pytorch_tanh``)."""
    return _t(input).gelu_tanh()


def silu(input: Tensor) -> Tensor:
    """x * sigmoid(x) (a fused node)."""
    return _t(input).silu()


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """``silu(gate) * up`` (LLaMA's gated MLP) as one fused node."""
    g, u = _float(_t(gate), "swiglu"), _float(_t(up), "swiglu")
    if tuple(g.shape) != tuple(u.shape):
        raise ValueError(f"swiglu: gate shape {tuple(g.shape)} and up shape {tuple(u.shape)} differ")
    return _fused.SwiGLU.apply(g, u)


def relu(input: Tensor) -> Tensor:
    """max(x, 0)."""
    return _t(input).relu()


def leaky_relu(input: Tensor, negative_slope: float = 0.01) -> Tensor:
    """x where x > 0 else ``negative_slope`` * x."""
    x = _t(input)
    return ops.Where.apply(x.data > 0, x, x * negative_slope)


def sigmoid(input: Tensor) -> Tensor:
    """1 / (1 + exp(-x))."""
    return _t(input).sigmoid()


def tanh(input: Tensor) -> Tensor:
    """Elementwise tanh."""
    return _t(input).tanh()


def softplus(input: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """log(1 + exp(beta x)) / beta, linear above ``threshold``."""
    return _t(input).softplus(beta=beta, threshold=threshold)


def normalize(input: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12) -> Tensor:
    """x / max(||x||_p, eps) along ``dim``."""
    x = _t(input)
    return x / x.norm(p=p, dim=dim, keepdim=True).clamp(min=eps)


def dropout(input: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p) (identity when not training)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, got {p}")
    x = _t(input)
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    return _fused.Dropout.apply(x, p=p, rng=get_rng())


def cross_entropy(input: Tensor, target, ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of logits [N, C] (or [N, C, d1...] / [..., C] with a matching target) and int targets."""
    logits = _float(_t(input), "cross_entropy")
    t = target.data if isinstance(target, Tensor) else np.asarray(target)
    if t.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: target must be integer class ids, got dtype {t.dtype}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if logits.ndim == 1:
        logits, t = logits.unsqueeze(0), t.reshape(1)
    elif logits.ndim > 2:  # torch layout [N, C, d1, ...] -> [N * d1 * ..., C]
        if t.shape != (logits.shape[0],) + tuple(logits.shape[2:]):
            raise ValueError(f"cross_entropy: target shape {t.shape} does not fit logits shape {tuple(logits.shape)}")
        out_shape = t.shape
        logits = logits.permute(0, *range(2, logits.ndim), 1).reshape(-1, logits.shape[1])
        t = t.reshape(-1)
        loss = _fused.CrossEntropy.apply(logits, t, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction)
        return loss.reshape(out_shape) if reduction == "none" else loss
    if t.shape != (logits.shape[0],):
        raise ValueError(f"cross_entropy: target shape {t.shape} does not fit logits shape {tuple(logits.shape)}")
    return _fused.CrossEntropy.apply(logits, t, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction)


def nll_loss(input: Tensor, target, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of log-probabilities [N, C] at int targets [N]."""
    logp = _t(input)
    t = target.data if isinstance(target, Tensor) else np.asarray(target)
    valid = t != ignore_index
    picked = -logp.gather(1, np.where(valid, t, 0)[:, None]).squeeze(1)  # [N]
    picked = picked * Tensor(valid.astype(logp.dtype))
    if reduction == "none":
        return picked
    if reduction == "sum":
        return picked.sum()
    return picked.sum() / max(int(valid.sum()), 1)


def mse_loss(input: Tensor, target, reduction: str = "mean") -> Tensor:
    """Mean (or sum / none) of squared differences."""
    x = _t(input)
    y = _t(target)
    if x.shape != y.shape:
        raise ValueError(f"mse_loss: input shape {tuple(x.shape)} and target shape {tuple(y.shape)} differ")
    d = x - y
    sq = d * d
    if reduction == "none":
        return sq
    return sq.sum() if reduction == "sum" else sq.mean()


def conv1d(input: Tensor, weight: Tensor, bias=None, stride: int = 1, padding=0, dilation: int = 1,
           groups: int = 1) -> Tensor:
    """torch.nn.functional.conv1d: input [B, Cin, L], weight [Cout, Cin/groups, K].

    ``padding`` is an int (both sides), ``"valid"`` or ``"same"`` (stride 1). Mamba's causal
    depthwise conv is ``conv1d(x, w, b, padding=K-1, groups=C)[..., :L]``.
    """
    x = _float(_t(input), "conv1d")
    if x.ndim != 3 or weight.ndim != 3:
        raise ValueError(f"conv1d: expected input [B, C, L] and weight [Cout, Cin/groups, K], got {tuple(x.shape)} and {tuple(weight.shape)}")
    k = weight.shape[-1]
    if padding == "valid":
        padding = 0
    if padding == "same":
        if stride != 1:
            raise ValueError("conv1d: padding='same' needs stride=1")
        total = dilation * (k - 1)
        x = pad(x, (total // 2, total - total // 2))
    elif padding:
        x = pad(x, (int(padding), int(padding)))
    return _fused.Conv1d.apply(x, weight, bias, stride=int(stride), dilation=int(dilation), groups=int(groups))


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask=None,
                                 dropout_p: float = 0.0, is_causal: bool = False, scale=None,
                                 enable_gqa: bool = False, window=None, key_mask=None) -> Tensor:
    """softmax(q k^T * scale + mask) v, torch's semantics plus three documented extensions.

    q [B, H, Tq, D]; k, v [B, Hkv, Tk, D] (GQA when H != Hkv: query head h uses kv head
    h // (H / Hkv), i.e. torch's ``repeat_interleave``). ``attn_mask``: bool (True = attend)
    or float (added to the scores), broadcastable to [B, H, Tq, Tk]. ``scale`` defaults to
    D**-0.5. Extensions: ``is_causal`` aligns bottom-right (the queries are the last Tq key
    positions — what decoding against a KV cache needs; the same as torch when Tq == Tk),
    ``window=W`` lets the query at position p see keys j with p - W < j <= p (causal implied),
    and ``key_mask`` bool [B, Tk] hides padding keys (False). Which key a query sees is
    ``axon_kernels.visible_mask`` in every path. A query row with no allowed key gives zeros.

    The path: with no gradient wanted (``no_grad``, or no input requiring grad), no ``attn_mask``
    and no dropout, the query-blocked BLAS kernel ``axon_kernels.blas_attention``; when a
    gradient is wanted and there is no mask and no dropout, the flash kernel with its backward
    once the score matrix is big enough (``axon.kernel_ops.can_use_flash``); otherwise the
    differentiable composite below (the definition).
    """
    q, k, v = _t(query), _t(key), _t(value)
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"scaled_dot_product_attention: expected 4-d q, k, v, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    b, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    if k.shape[0] != b or k.shape[3] != d or tuple(v.shape[:3]) != tuple(k.shape[:3]):
        raise ValueError(f"scaled_dot_product_attention: shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not fit")
    if h % hkv:
        raise ValueError(f"scaled_dot_product_attention: {h} query heads is not a multiple of {hkv} key/value heads")
    if (is_causal or window is not None) and tq > tk:
        raise ValueError(f"scaled_dot_product_attention: causal/window attention needs Tq <= Tk, got Tq={tq}, Tk={tk}")
    scale = d ** -0.5 if scale is None else float(scale)
    mask = attn_mask.data if isinstance(attn_mask, Tensor) else attn_mask
    if key_mask is not None:
        key_mask = np.asarray(key_mask.data if isinstance(key_mask, Tensor) else key_mask)
        if key_mask.dtype != np.bool_ or key_mask.shape != (b, tk):
            raise ValueError(f"scaled_dot_product_attention: key_mask must be bool [B={b}, Tk={tk}], got {key_mask.dtype} {key_mask.shape}")
        if key_mask.all():
            key_mask = None

    wants_grad = is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    floats = all(t.dtype in (np.float32, np.float64) for t in (q, k, v))
    if not wants_grad and mask is None and dropout_p == 0.0 and tq <= tk and floats:
        return Tensor(kernels.blas_attention(q.data, k.data, v.data, bool(is_causal), window, scale, key_mask))
    if key_mask is None and kernel_ops.can_use_flash(q, k, v, mask, dropout_p, is_causal, window):
        return kernel_ops.flash_sdpa(q, k, v, is_causal=is_causal, window=window, scale=scale)
    return _sdpa_reference(q, k, v, mask, dropout_p, is_causal, scale, window, key_mask)


def _sdpa_reference(q: Tensor, k: Tensor, v: Tensor, mask, dropout_p: float, is_causal: bool, scale: float,
                    window, key_mask=None) -> Tensor:
    """The composite definition of attention (differentiable through the primitives)."""
    b, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    g = h // hkv
    qg = q.reshape(b, hkv, g * tq, d)  # [B, H, Tq, D] -> [B, Hkv, G*Tq, D]  (head h = kv * G + group)
    scores = (qg @ k.transpose(-2, -1)) * scale  # [B, Hkv, G*Tq, Tk]
    scores = scores.reshape(b, h, tq, tk)  # [B, H, Tq, Tk]
    allowed = None
    if is_causal or window is not None or key_mask is not None:
        allowed = kernels.visible_mask(tq, tk, is_causal, window, key_mask)  # [Tq, Tk] or [B, 1, Tq, Tk]
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype == np.bool_:
            allowed = mask if allowed is None else np.logical_and(allowed, mask)
        else:
            scores = scores + Tensor(mask.astype(scores.dtype, copy=False))
    if allowed is not None:
        scores = scores.masked_fill(np.logical_not(allowed), -np.inf)
    p = scores.softmax(-1)  # [B, H, Tq, Tk]
    if dropout_p > 0.0:
        p = dropout(p, dropout_p, training=True)
    out = p.reshape(b, hkv, g * tq, tk) @ v  # [B, Hkv, G*Tq, D]
    return out.reshape(b, h, tq, d)  # [B, H, Tq, D]
