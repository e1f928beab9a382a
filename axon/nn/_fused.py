"""Fused Functions behind ``axon.nn.functional``: one node each, with a hand-written backward.

Each of these could be written as a composite of primitives, and ``tests/axon/test_fused.py``
checks each one against such a composite, forward and backward. Fusing saves the graph
bookkeeping and the intermediate arrays, which is what keeps a training step close to the BLAS
time (benchmarks/bench_autograd.py).
"""

from __future__ import annotations

import numpy as np

from axon_kernels.blas import GEMM_MIN_WORK, gemm, gemm_threads
from axon_kernels.cross_entropy import cross_entropy_grad, cross_entropy_rows
from axon_kernels.embedding import embedding_backward
from axon_kernels.rms_norm import rms_norm_backward, rms_norm_forward
from axon_kernels.swiglu import swiglu_backward, swiglu_forward
from axon_kernels.workers import defer

from ..autograd import Function
from ..ops import _sigmoid, softmax_array

# ------------------------------------------------------------------------------ linear


class Linear(Function):
    """y = x @ W^T + b with W stored [out, in] (torch's layout)."""

    fresh_grads = True

    @staticmethod
    def forward(ctx, x, w, b):
        if x.shape[-1] != w.shape[1]:
            raise ValueError(f"linear: input shape {x.shape} does not match weight shape {w.shape} (in_features={w.shape[1]})")
        x2 = x.reshape(-1, x.shape[-1])  # [N, in]
        y = gemm(x2, w.T)  # [N, out]
        if b is not None:
            y += b
        ctx.save_for_backward(x2 if ctx.needs_input_grad[1] else None, w if ctx.needs_input_grad[0] else None)
        ctx.x_shape = x.shape
        return y.reshape(x.shape[:-1] + (w.shape[0],))  # [..., out]

    @staticmethod
    def backward(ctx, grad):
        """The input gradient now, the weight gradient deferred (`_deferred_weight_grad`)."""
        x2, w = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1])  # [N, out]
        if w is not None and x2 is not None and _deferred_weight_grad(g2, x2):
            gw = defer(lambda: np.matmul(g2.T, x2))  # [out, in]: on a helper thread, while ...
            gx = np.matmul(g2, w).reshape(ctx.x_shape)  # [..., in]: ... this one goes on here
        else:
            gx = gemm(g2, w).reshape(ctx.x_shape) if w is not None else None  # [..., in]
            gw = gemm(g2.T, x2) if x2 is not None else None  # [out, in]
        gb = g2.sum(axis=0) if ctx.needs_input_grad[2] else None  # [out]
        return gx, gw, gb


def _deferred_weight_grad(g2, x2) -> bool:
    """Whether `Linear.backward` defers the weight gradient ``g^T x`` (`axon_kernels.workers.defer`).

    The rest of the backward needs only the input gradient ``g W``; the weight gradient is needed
    once the whole backward is done (the engine adds a leaf's deferred gradient at the end). So
    this thread computes ``g W`` alone (one-threaded BLAS) while a helper thread computes ``g^T x``
    meanwhile -- and, if this thread gets to the next node's serial work (SwiGLU, RMSNorm, RoPE)
    first, alongside that too: the second core no longer idles through it. Only when the products
    are split over threads at all (`axon_kernels.blas.gemm_threads` > 1) and large enough to be
    (`blas.GEMM_MIN_WORK`). Each product is one whole ``np.matmul`` on one thread, so the values
    do not depend on which thread ran it."""
    return gemm_threads() > 1 and g2.shape[0] * g2.shape[1] * x2.shape[1] >= GEMM_MIN_WORK


# ------------------------------------------------------------------------------ norms


class LayerNorm(Function):
    """Normalise over the last ``n`` dims, then scale and shift."""

    @staticmethod
    def forward(ctx, x, w, b, *, n, eps):
        axes = tuple(range(x.ndim - n, x.ndim))
        mu = x.mean(axis=axes, keepdims=True)
        xc = x - mu
        var = np.mean(xc * xc, axis=axes, keepdims=True)
        rstd = 1.0 / np.sqrt(var + x.dtype.type(eps))
        xhat = xc
        xhat *= rstd  # [..., *normalized_shape]
        y = xhat * w if w is not None else xhat.copy()
        if b is not None:
            y += b
        ctx.save_for_backward(xhat, rstd, w)
        ctx.axes = axes
        return y

    @staticmethod
    def backward(ctx, grad):
        xhat, rstd, w = ctx.saved_tensors
        axes = ctx.axes
        batch_axes = tuple(range(grad.ndim - len(axes)))
        gw = np.sum(grad * xhat, axis=batch_axes) if ctx.needs_input_grad[1] else None
        gb = np.sum(grad, axis=batch_axes) if ctx.needs_input_grad[2] else None
        gx = None
        if ctx.needs_input_grad[0]:
            gxhat = grad * w if w is not None else grad
            m1 = gxhat.mean(axis=axes, keepdims=True)
            m2 = np.mean(gxhat * xhat, axis=axes, keepdims=True)
            gx = gxhat - m1
            gx -= xhat * m2
            gx *= rstd  # rstd (g - mean(g) - xhat mean(g xhat))
        return gx, gw, gb


class RMSNorm(Function):
    """y = x / sqrt(mean(x^2) + eps) * w over the last dim.

    With a weight, one kernel pass each way (``axon_kernels.rms_norm``: saves x and the [N]
    rstd, no [N, D] temporary); without one, NumPy.
    """

    fresh_grads = True

    @staticmethod
    def forward(ctx, x, w, *, eps):
        if w is not None and w.shape == x.shape[-1:]:
            x2 = x.reshape(-1, x.shape[-1])  # [N, D]
            y, rstd = rms_norm_forward(x2, w, eps)  # [N, D], [N]
            ctx.save_for_backward(x2, rstd, w)
            ctx.fused = True
            return y.reshape(x.shape)
        ms = np.mean(x * x, axis=-1, keepdims=True)
        rstd = 1.0 / np.sqrt(ms + x.dtype.type(eps))  # [..., 1]
        xhat = x * rstd
        ctx.save_for_backward(xhat, rstd, w)
        ctx.fused = False
        return xhat * w if w is not None else xhat

    @staticmethod
    def backward(ctx, grad):
        if ctx.fused:
            x2, rstd, w = ctx.saved_tensors
            gx, gw = rms_norm_backward(grad.reshape(x2.shape), x2, rstd, w)  # [N, D], [D]
            return gx.reshape(grad.shape) if ctx.needs_input_grad[0] else None, gw if ctx.needs_input_grad[1] else None
        xhat, rstd, w = ctx.saved_tensors
        gw = None
        if ctx.needs_input_grad[1]:
            gw = (grad * xhat).reshape(-1, xhat.shape[-1]).sum(axis=0)
        gx = None
        if ctx.needs_input_grad[0]:
            gxhat = grad * w if w is not None else grad
            m = np.mean(gxhat * xhat, axis=-1, keepdims=True)
            gx = gxhat - xhat * m
            gx *= rstd  # rstd (g - xhat mean(g xhat))
        return gx, gw


# ------------------------------------------------------------------------------ SwiGLU


class SwiGLU(Function):
    """silu(gate) * up (LLaMA's gated MLP activation) as one node.

    The composite (a SiLU node, then a product node) keeps gate, sigmoid(gate), silu(gate) and
    up alive and makes four [N, inter] temporaries in its backward; this keeps gate and up only
    and runs one kernel pass each way (``axon_kernels.swiglu``, sigmoid recomputed):
    d/dgate = grad up s (1 + gate (1 - s)), d/dup = grad gate s, with s = sigmoid(gate).
    """

    fresh_grads = True

    @staticmethod
    def forward(ctx, gate, up):
        if gate.shape != up.shape:
            raise ValueError(f"swiglu: gate shape {gate.shape} and up shape {up.shape} differ")
        ctx.save_for_backward(gate, up)
        return swiglu_forward(gate, up)  # [..., inter]

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        gg, gu = swiglu_backward(np.ascontiguousarray(grad), gate, up)
        return gg if ctx.needs_input_grad[0] else None, gu if ctx.needs_input_grad[1] else None


# ------------------------------------------------------------------------------ embedding


class Embedding(Function):
    """Rows of ``W`` picked by integer ``ids``; backward adds each row's gradient into its id's row
    (`axon_kernels.embedding.embedding_backward`)."""

    @staticmethod
    def forward(ctx, ids, w, *, padding_idx):
        if ids.dtype.kind not in "iu":
            raise TypeError(f"embedding: ids must be integers, got {ids.dtype}")
        n = w.shape[0]
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise IndexError(f"embedding: ids must be in [0, {n}), got min {ids.min()} max {ids.max()}")
        ctx.save_for_backward(ids)
        ctx.w_shape, ctx.padding_idx = w.shape, padding_idx
        return w[ids]  # [..., D]

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1])  # [N, D]
        gw = embedding_backward(ids.reshape(-1), g2, ctx.w_shape[0], ctx.padding_idx)  # [V, D]: each id's rows summed
        return None, gw


# ------------------------------------------------------------------------------ losses


class CrossEntropy(Function):
    """Mean (or sum / none) of -log softmax(logits)[target], with ignore_index and label smoothing.

    Forward: one kernel pass per row gives logsumexp, the target's logit and the row mean
    (``axon_kernels.cross_entropy.cross_entropy_rows``), so no [N, C] array is made; the logits
    and the [N] logsumexp are saved. Backward: one pass writes the gradient
    ``scale * (softmax - (1 - eps) onehot - eps / C)`` (``cross_entropy_grad``), the only
    [N, C] array of the op.
    """

    @staticmethod
    def forward(ctx, logits, target, *, ignore_index, label_smoothing, reduction):
        n, c = logits.shape
        valid = target != ignore_index  # [N]
        safe_t = np.where(valid, target, 0)
        if valid.any() and (safe_t.min() < 0 or safe_t.max() >= c):
            raise IndexError(f"cross_entropy: targets must be in [0, {c}) or ignore_index={ignore_index}")
        lse, picked, mean = cross_entropy_rows(logits, safe_t)  # [N] each
        loss = lse - picked  # -log p[target]
        if label_smoothing:
            loss = (1 - label_smoothing) * loss + label_smoothing * (lse - mean)
        loss = np.where(valid, loss, 0).astype(logits.dtype)
        count = int(valid.sum())
        ctx.save_for_backward(logits, lse, safe_t, valid)
        ctx.count, ctx.eps, ctx.reduction = count, label_smoothing, reduction
        if reduction == "none":
            return loss
        if reduction == "sum":
            return np.asarray(loss.sum(), dtype=logits.dtype)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(loss.sum() / count if count else np.nan, dtype=logits.dtype)

    @staticmethod
    def backward(ctx, grad):
        logits, lse, t, valid = ctx.saved_tensors
        n = logits.shape[0]
        if ctx.reduction == "none":
            scale = grad.reshape(n) * valid  # [N]
        else:
            denom = ctx.count if ctx.reduction == "mean" else 1
            scale = (grad.reshape(()) / max(denom, 1)) * valid
        return cross_entropy_grad(logits, lse, t, scale.astype(logits.dtype), ctx.eps), None


# ------------------------------------------------------------------------------ dropout


class Dropout(Function):
    @staticmethod
    def forward(ctx, x, *, p, rng):
        keep = rng.random(x.shape, dtype=np.float32) >= p
        mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - p))
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return (grad * mask,)


# ------------------------------------------------------------------------------ conv1d


class Conv1d(Function):
    """1-d convolution (cross-correlation, torch's definition) with stride, dilation, groups.

    x [B, Cin, L] (already padded), w [Cout, Cin/groups, K]; the K taps are a short loop of
    batched matmuls, so depthwise convs (Mamba's causal conv, groups == Cin) stay cheap.
    """

    @staticmethod
    def forward(ctx, x, w, b, *, stride, dilation, groups):
        bsz, cin, length = x.shape
        cout, cin_g, k = w.shape
        if cin != cin_g * groups or cout % groups:
            raise ValueError(f"conv1d: input shape {x.shape} and weight shape {w.shape} do not fit groups={groups}")
        lout = (length - dilation * (k - 1) - 1) // stride + 1
        if lout <= 0:
            raise ValueError(f"conv1d: input length {length} too short for kernel {k} with dilation {dilation}")
        cout_g = cout // groups
        span = stride * (lout - 1) + 1
        ctx.save_for_backward(x, w)
        ctx.cfg = (stride, dilation, groups, lout)
        if cin_g == 1 and cout_g == 1:  # depthwise (Mamba): a weighted sum of K shifted copies
            y = np.zeros((bsz, cout, lout), dtype=np.result_type(x, w))
            for j in range(k):
                y += w[None, :, 0, j, None] * x[..., j * dilation : j * dilation + span : stride]  # [B, C, Lout]
            if b is not None:
                y += b[:, None]
            return y
        xg = x.reshape(bsz, groups, cin_g, length)  # [B, G, Cin/G, L]
        wg = w.reshape(groups, cout_g, cin_g, k)  # [G, Cout/G, Cin/G, K]
        y = np.zeros((bsz, groups, cout_g, lout), dtype=np.result_type(x, w))
        for j in range(k):
            xs = xg[..., j * dilation : j * dilation + span : stride]  # [B, G, Cin/G, Lout]
            y += np.matmul(wg[None, :, :, :, j], xs)  # [1, G, Cout/G, Cin/G] @ [B, G, Cin/G, Lout]
        y = y.reshape(bsz, cout, lout)
        if b is not None:
            y += b[:, None]
        return y

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        stride, dilation, groups, lout = ctx.cfg
        bsz, cin, length = x.shape
        cout, cin_g, k = w.shape
        cout_g = cout // groups
        span = stride * (lout - 1) + 1
        gb = grad.sum(axis=(0, 2)) if ctx.needs_input_grad[2] else None
        if cin_g == 1 and cout_g == 1:  # depthwise
            gx = np.zeros_like(x) if ctx.needs_input_grad[0] else None
            gw = np.zeros_like(w) if ctx.needs_input_grad[1] else None
            for j in range(k):
                sl = slice(j * dilation, j * dilation + span, stride)
                if gw is not None:
                    gw[:, 0, j] = np.einsum("bct,bct->c", grad, x[..., sl])
                if gx is not None:
                    gx[..., sl] += w[None, :, 0, j, None] * grad
            return gx, gw, gb
        xg = x.reshape(bsz, groups, cin_g, length)
        wg = w.reshape(groups, cout_g, cin_g, k)
        gg = grad.reshape(bsz, groups, cout_g, lout)  # [B, G, Cout/G, Lout]
        gx = np.zeros_like(xg) if ctx.needs_input_grad[0] else None
        gw = np.zeros_like(wg) if ctx.needs_input_grad[1] else None
        for j in range(k):
            sl = slice(j * dilation, j * dilation + span, stride)
            if gw is not None:  # sum_b,t g[b,o,t] x[b,i,t*s+j*d]
                gw[..., j] = np.matmul(gg, np.swapaxes(xg[..., sl], -1, -2)).sum(axis=0)
            if gx is not None:  # x[b,i,t*s+j*d] += sum_o w[o,i,j] g[b,o,t]
                gx[..., sl] += np.matmul(np.swapaxes(wg[..., j], -1, -2)[None], gg)
        return (
            gx.reshape(x.shape) if gx is not None else None,
            gw.reshape(w.shape) if gw is not None else None,
            gb,
        )


__all__ = ["Linear", "LayerNorm", "RMSNorm", "SwiGLU", "Embedding", "CrossEntropy", "Dropout", "Conv1d", "softmax_array"]
