"""Autograd Functions over the `kernels` package.

* :class:`FlashAttention` — tiled attention forward and backward (`kernels.flash_attention`);
  ``F.scaled_dot_product_attention`` dispatches here when a gradient is wanted, there is no mask
  and no dropout, and the score matrix is big enough for tiling to pay (`can_use_flash`); with no
  gradient wanted it runs `kernels.blas_attention` instead (no autograd node).
* :class:`SelectiveScan` — Mamba's selective scan (`kernels.selective_scan` and its backward).
* :class:`TernaryLinear` — BitNet b1.58 ``act_quant(x) @ weight_quant(W).T + b`` with the
  straight-through estimator: the forward uses the quantised values, the backward treats
  both quantisers as the identity.

Each Function's forward/backward works on NumPy arrays (see axon/autograd.py); the wrappers
below take and return axon Tensors.
"""

from __future__ import annotations

import numpy as np

import axon_kernels as kernels

from .autograd import Function
from .tensor import Tensor

__all__ = [
    "FlashAttention",
    "flash_attention",
    "can_use_flash",
    "flash_sdpa",
    "SelectiveScan",
    "selective_scan",
    "TernaryLinear",
    "ternary_linear",
]


def _as(grad, like):
    """A gradient in the dtype of the input it belongs to."""
    return None if grad is None else grad.astype(like.dtype, copy=False)


# --------------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------------


class FlashAttention(Function):
    """out = softmax(scale q k^T, masked) v over [B, H, T, D]; saves only out and lse [B, H, Tq]."""

    @staticmethod
    def forward(ctx, q, k, v, *, causal=False, window=None, scale=None, block_q=64, block_kv=64):
        out, lse = kernels.flash_attention(q, k, v, causal, window, scale, block_q, block_kv)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.options = (causal, window, scale, block_q, block_kv)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse = ctx.saved_tensors
        causal, window, scale, block_q, block_kv = ctx.options
        dq, dk, dv = kernels.flash_attention_backward(q, k, v, out, lse, grad, causal, window, scale, block_q, block_kv)
        return _as(dq, q), _as(dk, k), _as(dv, v)


def flash_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, window=None, scale=None,
                    block_q: int = 64, block_kv: int = 64) -> Tensor:
    """Differentiable `kernels.flash_attention` (output only): q [B, H, Tq, D] -> [B, H, Tq, D]."""
    return FlashAttention.apply(q, k, v, causal=causal, window=window, scale=scale, block_q=block_q, block_kv=block_kv)


# Below this many scores per head (Tq * Tk) the dense composite is faster. Only the gradient path
# reaches this test (without a gradient `blas_attention` runs), so the question is forward +
# backward on 2 shared cores: the composite's batched matmuls (one small threaded GEMM per
# batch row and head) stall on a loaded machine, the tiled kernel does not. Measured (B=8,
# H=4/2, D=64, causal, load 20-25 on 2 cores; benchmarks/bench_kernels.py prints the table):
# the composite wins at T = 16 and 32 (2.7-16 ms vs 7-24 ms), flash wins at T = 64 (51-64 ms vs
# 150-290 ms) and T = 128 (the training shape of benchmarks/bench_train.py), and from 256 on
# in every run. (Earlier quiet-machine runs at B=1 put the crossover between 128 and 512.)
FLASH_MIN_SCORES = 1 << 12


def can_use_flash(q: Tensor, k: Tensor, v: Tensor, mask, dropout_p: float, is_causal: bool, window) -> bool:
    """True when `scaled_dot_product_attention` should run the flash kernel.

    It must mean exactly what the kernel computes — no mask, no dropout, at least one key,
    Tq <= Tk (the queries are the last Tq positions), one float dtype; a window is causal in
    both — and be big enough to pay off (`FLASH_MIN_SCORES`).
    """
    if mask is not None or dropout_p > 0.0:
        return False
    tq, tk = q.shape[2], k.shape[2]
    if tk == 0 or tq > tk or tq * tk < FLASH_MIN_SCORES:
        return False
    return q.dtype in (np.float32, np.float64) and q.dtype == k.dtype == v.dtype


def flash_sdpa(q: Tensor, k: Tensor, v: Tensor, is_causal: bool = False, window=None, scale=None) -> Tensor:
    """`F.scaled_dot_product_attention`'s fast path (callers check `can_use_flash` first)."""
    return FlashAttention.apply(q, k, v, causal=bool(is_causal), window=window, scale=scale)


# --------------------------------------------------------------------------------------------
# selective scan
# --------------------------------------------------------------------------------------------


class SelectiveScan(Function):
    """y = selective_scan(u, delta, A, B, C, D, z, delta_bias) (mamba_ssm convention); None inputs get no grad."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D=None, z=None, delta_bias=None, *, delta_softplus=False):
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.delta_softplus = delta_softplus
        return kernels.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)

    @staticmethod
    def backward(ctx, grad):
        saved = ctx.saved_tensors
        grads = kernels.selective_scan_backward(*saved[:5], grad, *saved[5:], ctx.delta_softplus)
        return tuple(_as(g, x) for g, x in zip(grads, saved))


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus: bool = False,
                   return_last_state: bool = False):
    """Differentiable selective scan: Tensors u, delta, z [b, d, l]; A [d, n]; B, C [b, n, l]; D, delta_bias [d].

    Returns y [b, d, l]; with ``return_last_state`` also the final state [b, d, n] as a plain
    (non-differentiable) NumPy array, to seed decoding with `kernels.selective_scan_step`.
    """
    y = SelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus=delta_softplus)
    if not return_last_state:
        return y
    raw = [x.data if isinstance(x, Tensor) else x for x in (u, delta, A, B, C, D, z, delta_bias)]
    _, last = kernels.selective_scan(*raw, delta_softplus=delta_softplus, return_last_state=True)
    return y, last


# --------------------------------------------------------------------------------------------
# ternary linear (BitNet b1.58)
# --------------------------------------------------------------------------------------------


class TernaryLinear(Function):
    """y = act_quant(x) @ weight_quant(W)^T + b with straight-through gradients.

    Forward: xq = q / a (per-token int8, `kernels.quantize_activations`), Wq = t / s
    (`kernels.ternary_codes`). Backward (STE): dx = dy Wq, dW = dy^T xq, db = sum dy.
    """

    @staticmethod
    def forward(ctx, x, weight, bias=None):
        q, a = kernels.quantize_activations(x)  # int8 [..., in], float32 [..., 1]
        t, s = kernels.ternary_codes(weight)  # int8 [out, in], float
        dtype = np.result_type(x.dtype, weight.dtype)
        xq = (q.astype(dtype) / a.astype(dtype))  # [..., in]
        wq = t.astype(dtype) / dtype.type(s)  # [out, in]
        ctx.save_for_backward(xq, wq, x, weight, bias)
        y = xq @ wq.T  # [..., in] -> [..., out]
        return y if bias is None else y + bias

    @staticmethod
    def backward(ctx, grad):
        xq, wq, x, weight, bias = ctx.saved_tensors
        dx = grad @ wq  # [..., out] -> [..., in]
        dw = grad.reshape(-1, grad.shape[-1]).T @ xq.reshape(-1, xq.shape[-1])  # [out, in]
        db = None if bias is None else grad.reshape(-1, grad.shape[-1]).sum(axis=0)
        return _as(dx, x), _as(dw, weight), _as(db, bias)


def ternary_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """BitNet b1.58 linear layer for training: x [..., in], weight [out, in] -> [..., out] (STE gradients)."""
    return TernaryLinear.apply(x, weight, bias)
