"""The primitive differentiable operations: one :class:`Function` per op.

Each ``forward(ctx, *arrays)`` computes with NumPy and saves what its ``backward`` needs;
each ``backward(ctx, grad)`` returns one gradient per positional input (None for inputs
that are not differentiable). Gradients may come back in the broadcast shape — the engine
(``axon/autograd.py``) reduces them to each input's shape, in one place.

Fused ops used by ``axon.nn.functional`` (linear, layer_norm, cross_entropy, ...) live in
``axon/nn/_fused.py``; they follow the same pattern.
"""

from __future__ import annotations

import math

import numpy as np

from axon_kernels.blas import gemm

from ._erf import erf
from .autograd import Function

# ---------------------------------------------------------------------------- arithmetic


class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        return np.add(a, b)

    @staticmethod
    def backward(ctx, grad):
        return grad, grad


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        return np.subtract(a, b)

    @staticmethod
    def backward(ctx, grad):
        return grad, (-grad if ctx.needs_input_grad[1] else None)


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a if ctx.needs_input_grad[1] else None, b if ctx.needs_input_grad[0] else None)
        return np.multiply(a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        return (grad * b if b is not None else None), (grad * a if a is not None else None)


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return np.divide(a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        ga = grad / b
        gb = -ga * a / b if ctx.needs_input_grad[1] else None
        return ga, gb


class PowScalar(Function):
    @staticmethod
    def forward(ctx, a, *, exponent):
        ctx.save_for_backward(a)
        ctx.exponent = exponent
        if exponent == 2:
            return a * a
        if exponent == 0.5:
            return np.sqrt(a)
        return np.power(a, np.asarray(exponent, dtype=a.dtype) if a.dtype.kind == "f" else exponent)

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved_tensors
        p = ctx.exponent
        if p == 2:
            return (grad * a * 2,)
        return (grad * (p * np.power(a, np.asarray(p - 1, dtype=a.dtype))),)


class Pow(Function):
    @staticmethod
    def forward(ctx, a, b):
        out = np.power(a, b)
        ctx.save_for_backward(a, b, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        a, b, out = ctx.saved_tensors
        ga = grad * b * np.power(a, b - 1) if ctx.needs_input_grad[0] else None
        gb = None
        if ctx.needs_input_grad[1]:
            with np.errstate(divide="ignore", invalid="ignore"):
                gb = grad * out * np.where(a > 0, np.log(np.where(a > 0, a, 1)), 0)
        return ga, gb


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return np.negative(a)

    @staticmethod
    def backward(ctx, grad):
        return (-grad,)


class Clone(Function):
    @staticmethod
    def forward(ctx, a):
        return a.copy()

    @staticmethod
    def backward(ctx, grad):
        return (grad,)


class Cast(Function):
    @staticmethod
    def forward(ctx, a, *, dtype):
        ctx.in_dtype = a.dtype
        return a.astype(dtype)

    @staticmethod
    def backward(ctx, grad):
        return (grad.astype(ctx.in_dtype),)


class Maximum(Function):
    """Elementwise max; on ties the gradient is split evenly (as torch does)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return np.maximum(a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        wa = (a > b) + 0.5 * (a == b)
        wa = wa.astype(grad.dtype)
        return grad * wa, grad * (1 - wa)


class Minimum(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return np.minimum(a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        wa = ((a < b) + 0.5 * (a == b)).astype(grad.dtype)
        return grad * wa, grad * (1 - wa)


class Where(Function):
    @staticmethod
    def forward(ctx, cond, a, b):
        ctx.save_for_backward(cond)
        return np.where(cond, a, b)

    @staticmethod
    def backward(ctx, grad):
        (cond,) = ctx.saved_tensors
        zero = np.zeros((), dtype=grad.dtype)
        ga = np.where(cond, grad, zero) if ctx.needs_input_grad[1] else None
        gb = np.where(cond, zero, grad) if ctx.needs_input_grad[2] else None
        return None, ga, gb


# ---------------------------------------------------------------------------- unary math


class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        out = np.exp(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return (grad * out,)


class Log(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(a)

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved_tensors
        return (grad / a,)


class Sqrt(Function):
    @staticmethod
    def forward(ctx, a):
        with np.errstate(invalid="ignore"):
            out = np.sqrt(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        with np.errstate(divide="ignore"):
            return (grad / (2 * out),)


class Rsqrt(Function):
    @staticmethod
    def forward(ctx, a):
        with np.errstate(divide="ignore", invalid="ignore"):
            out = 1 / np.sqrt(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return (grad * (-0.5) * out * out * out,)


class Tanh(Function):
    @staticmethod
    def forward(ctx, a):
        out = np.tanh(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return (grad * (1 - out * out),)


def _sigmoid(a: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function: 0.5 * (1 + tanh(a / 2))."""
    out = np.tanh(a * 0.5)
    out += 1
    out *= 0.5
    return out


class Sigmoid(Function):
    @staticmethod
    def forward(ctx, a):
        out = _sigmoid(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return (grad * out * (1 - out),)


class Sin(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.sin(a)

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved_tensors
        return (grad * np.cos(a),)


class Cos(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.cos(a)

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved_tensors
        return (-grad * np.sin(a),)


class Abs(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.abs(a)

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved_tensors
        return (grad * np.sign(a),)


class Relu(Function):
    @staticmethod
    def forward(ctx, a):
        out = np.maximum(a, 0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return (np.where(out > 0, grad, np.zeros((), grad.dtype)),)


_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


class Gelu(Function):
    """Exact GELU: x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))."""

    @staticmethod
    def forward(ctx, a):
        cdf = erf(a * a.dtype.type(_SQRT_HALF)).astype(a.dtype, copy=False)  # float16 runs the float32 loop
        cdf += 1
        cdf *= 0.5  # Phi(x)
        ctx.save_for_backward(a, cdf)
        return a * cdf

    @staticmethod
    def backward(ctx, grad):
        a, cdf = ctx.saved_tensors
        pdf = np.exp(a * a * a.dtype.type(-0.5))
        pdf *= a.dtype.type(_INV_SQRT_2PI)  # phi(x)
        pdf *= a
        pdf += cdf  # d/dx [x Phi(x)] = Phi(x) + x phi(x)
        return (grad * pdf,)


class GeluTanh(Function):
    """GELU with the tanh approximation (GPT-2's ``gelu_new``)."""

    @staticmethod
    def forward(ctx, a):
        dt = a.dtype.type
        t = np.tanh(dt(_SQRT_2_OVER_PI) * (a + dt(0.044715) * a * a * a))
        ctx.save_for_backward(a, t)
        return dt(0.5) * a * (1 + t)

    @staticmethod
    def backward(ctx, grad):
        a, t = ctx.saved_tensors
        dt = a.dtype.type
        du = dt(_SQRT_2_OVER_PI) * (1 + dt(3 * 0.044715) * a * a)
        d = dt(0.5) * (1 + t) + dt(0.5) * a * (1 - t * t) * du
        return (grad * d,)


class Silu(Function):
    """x * sigmoid(x)."""

    @staticmethod
    def forward(ctx, a):
        s = _sigmoid(a)
        ctx.save_for_backward(a, s)
        return a * s

    @staticmethod
    def backward(ctx, grad):
        a, s = ctx.saved_tensors
        d = a * (1 - s)
        d += 1
        d *= s  # s (1 + x (1 - s))
        return (grad * d,)


class Softplus(Function):
    """log(1 + exp(beta x)) / beta; linear above ``threshold`` (torch's definition)."""

    @staticmethod
    def forward(ctx, a, *, beta, threshold):
        z = a * a.dtype.type(beta)
        ctx.save_for_backward(z)
        ctx.threshold = threshold
        out = np.logaddexp(np.zeros((), a.dtype), z) / a.dtype.type(beta)
        return np.where(z > threshold, a, out)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        return (grad * np.where(z > ctx.threshold, 1, _sigmoid(z)).astype(grad.dtype),)


class Clamp(Function):
    @staticmethod
    def forward(ctx, a, *, lo, hi):
        out = np.clip(a, lo, hi)
        if out.dtype != a.dtype:
            out = out.astype(a.dtype)
        ctx.save_for_backward(a)
        ctx.lo, ctx.hi = lo, hi
        return out

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved_tensors
        keep = np.ones(a.shape, dtype=bool)
        if ctx.lo is not None:
            keep &= a >= ctx.lo
        if ctx.hi is not None:
            keep &= a <= ctx.hi
        return (np.where(keep, grad, np.zeros((), grad.dtype)),)


# ---------------------------------------------------------------------------- reductions


def _keep_shape(shape, axes):
    """The shape a reduction over ``axes`` has with keepdim=True."""
    if axes is None:
        return (1,) * len(shape)
    return tuple(1 if i in axes else s for i, s in enumerate(shape))


class Sum(Function):
    @staticmethod
    def forward(ctx, a, *, axes, keepdim):
        ctx.shape = a.shape
        ctx.axes = axes
        return np.asarray(np.sum(a, axis=axes, keepdims=keepdim))

    @staticmethod
    def backward(ctx, grad):
        g = grad.reshape(_keep_shape(ctx.shape, ctx.axes))
        return (np.broadcast_to(g, ctx.shape),)


class Mean(Function):
    @staticmethod
    def forward(ctx, a, *, axes, keepdim):
        ctx.shape = a.shape
        ctx.axes = axes
        out = np.mean(a, axis=axes, keepdims=keepdim)
        return np.asarray(out, dtype=a.dtype)

    @staticmethod
    def backward(ctx, grad):
        shape = ctx.shape
        n = math.prod(shape) if ctx.axes is None else math.prod(shape[a] for a in ctx.axes)
        g = grad.reshape(_keep_shape(shape, ctx.axes)) * grad.dtype.type(1.0 / max(n, 1))
        return (np.broadcast_to(g, shape),)


class Prod(Function):
    @staticmethod
    def forward(ctx, a, *, axes, keepdim):
        out = np.asarray(np.prod(a, axis=axes, keepdims=True))
        ctx.save_for_backward(a, out)
        ctx.axes = axes
        return out if keepdim else np.asarray(np.prod(a, axis=axes, keepdims=False))

    @staticmethod
    def backward(ctx, grad):
        a, out = ctx.saved_tensors
        g = grad.reshape(out.shape)
        # d prod / d a_i = prod_{j != i} a_j; computed by exclusion so zeros are handled
        flat_axes = tuple(range(a.ndim)) if ctx.axes is None else ctx.axes
        moved = np.moveaxis(a, flat_axes, tuple(range(a.ndim - len(flat_axes), a.ndim)))
        lead = moved.shape[: a.ndim - len(flat_axes)]
        m = moved.reshape(lead + (-1,))
        left = np.cumprod(np.concatenate([np.ones(lead + (1,), a.dtype), m[..., :-1]], -1), -1)
        right = np.cumprod(np.concatenate([np.ones(lead + (1,), a.dtype), m[..., ::-1][..., :-1]], -1), -1)[..., ::-1]
        excl = (left * right).reshape(moved.shape)
        excl = np.moveaxis(excl, tuple(range(a.ndim - len(flat_axes), a.ndim)), flat_axes)
        return (g * excl,)


class MaxAll(Function):
    """max/min over all elements; the gradient is shared evenly between ties."""

    @staticmethod
    def forward(ctx, a, *, largest):
        if a.size == 0:
            raise ValueError("max()/min() of an empty tensor")
        out = np.asarray(a.max() if largest else a.min())
        ctx.save_for_backward(a, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        a, out = ctx.saved_tensors
        mask = (a == out).astype(grad.dtype)
        mask /= mask.sum()
        return (mask * grad,)


class AMax(Function):
    """amax/amin over ``axes``; ties share the gradient evenly."""

    @staticmethod
    def forward(ctx, a, *, axes, keepdim, largest):
        fn = np.max if largest else np.min
        out = np.asarray(fn(a, axis=axes, keepdims=True))
        ctx.save_for_backward(a, out)
        ctx.axes = axes
        return out if keepdim else out.reshape([s for i, s in enumerate(out.shape) if not (axes is None or i in axes)])

    @staticmethod
    def backward(ctx, grad):
        a, out = ctx.saved_tensors
        mask = (a == out).astype(grad.dtype)
        mask /= mask.sum(axis=ctx.axes, keepdims=True)
        return (mask * grad.reshape(out.shape),)


class LogSumExp(Function):
    @staticmethod
    def forward(ctx, a, *, axes, keepdim):
        m = np.max(a, axis=axes, keepdims=True)
        m = np.where(np.isfinite(m), m, 0)
        out = np.log(np.sum(np.exp(a - m), axis=axes, keepdims=True)) + m  # [..., 1, ...]
        ctx.save_for_backward(a, out)
        return out if keepdim else np.squeeze(out, axis=axes)

    @staticmethod
    def backward(ctx, grad):
        a, out = ctx.saved_tensors
        return (grad.reshape(out.shape) * np.exp(a - out),)


class CumSum(Function):
    @staticmethod
    def forward(ctx, a, *, axis):
        ctx.axis = axis
        return np.cumsum(a, axis=axis)

    @staticmethod
    def backward(ctx, grad):
        ax = ctx.axis
        return (np.flip(np.cumsum(np.flip(grad, ax), axis=ax), ax),)


# ---------------------------------------------------------------------------- softmax


_LOWEST = {np.dtype(t).char: np.finfo(t).min for t in (np.float16, np.float32, np.float64)}


def softmax_array(a: np.ndarray, axis: int) -> np.ndarray:
    """Stable softmax; a row that is entirely -inf gives zeros (not NaN)."""
    m = a.max(axis=axis, keepdims=True)
    np.maximum(m, _LOWEST[a.dtype.char], out=m)  # an all -inf row: exp(-inf - finite) = 0
    e = np.subtract(a, m)
    np.exp(e, out=e)
    s = e.sum(axis=axis, keepdims=True)  # >= 1 unless the row was all -inf (then 0)
    np.maximum(s, 1, out=s)
    e /= s
    return e


class Softmax(Function):
    @staticmethod
    def forward(ctx, a, *, axis):
        out = softmax_array(a, axis)
        ctx.save_for_backward(out)
        ctx.axis = axis
        return out

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        gy = grad * y
        gy -= y * np.sum(gy, axis=ctx.axis, keepdims=True)  # y * (g - sum(g * y))
        return (gy,)


class LogSoftmax(Function):
    @staticmethod
    def forward(ctx, a, *, axis):
        m = np.max(a, axis=axis, keepdims=True)
        m[~np.isfinite(m)] = 0
        shifted = a - m
        lse = np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))
        shifted -= lse
        ctx.save_for_backward(shifted)
        ctx.axis = axis
        return shifted

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return (grad - np.exp(y) * np.sum(grad, axis=ctx.axis, keepdims=True),)


# ---------------------------------------------------------------------------- matmul


class MatMul(Function):
    """Batched ``a @ b`` (both at least 2-d); a 2-d ``b`` is handled with one GEMM each way."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a if ctx.needs_input_grad[1] else None, b if ctx.needs_input_grad[0] else None)
        ctx.b_ndim = b.ndim
        if b.ndim == 2 and a.ndim > 2 and a.flags.c_contiguous:
            return gemm(a.reshape(-1, a.shape[-1]), b).reshape(a.shape[:-1] + (b.shape[1],))  # [..., M, N]
        return gemm(a, b) if a.ndim == 2 and b.ndim == 2 else np.matmul(a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        ga = gb = None
        if b is not None:  # dL/da = g @ b^T
            bt = np.swapaxes(b, -1, -2)
            if grad.ndim == 2 and bt.ndim == 2:
                ga = gemm(grad, bt)
            elif bt.ndim == 2 and grad.flags.c_contiguous:  # [..., M, N] @ [N, K] as one GEMM
                ga = gemm(grad.reshape(-1, grad.shape[-1]), bt).reshape(grad.shape[:-1] + (bt.shape[1],))
            else:
                ga = np.matmul(grad, bt)
        if a is not None:  # dL/db = a^T @ g
            if ctx.b_ndim == 2 and a.ndim > 2:
                k, n = a.shape[-1], grad.shape[-1]
                gb = gemm(a.reshape(-1, k).T, grad.reshape(-1, n))  # [K, N]: the GEMM sums over the batch
            else:
                gb = np.matmul(np.swapaxes(a, -1, -2), grad)
        return ga, gb


# ---------------------------------------------------------------------------- shape


class Reshape(Function):
    @staticmethod
    def forward(ctx, a, *, shape):
        ctx.shape = a.shape
        return a.reshape(shape)

    @staticmethod
    def backward(ctx, grad):
        return (grad.reshape(ctx.shape),)


class Permute(Function):
    @staticmethod
    def forward(ctx, a, *, dims):
        inverse = [0] * len(dims)
        for i, d in enumerate(dims):
            inverse[d] = i
        ctx.inverse = inverse
        return a.transpose(dims)

    @staticmethod
    def backward(ctx, grad):
        return (grad.transpose(ctx.inverse),)


class Expand(Function):
    @staticmethod
    def forward(ctx, a, *, shape):
        return np.broadcast_to(a, shape)

    @staticmethod
    def backward(ctx, grad):
        return (grad,)  # the engine sums it back to the input's shape


class Repeat(Function):
    @staticmethod
    def forward(ctx, a, *, reps):
        if len(reps) < a.ndim:
            raise ValueError(f"repeat(): {len(reps)} repeats for a {a.ndim}-d tensor")
        ctx.in_shape = (1,) * (len(reps) - a.ndim) + a.shape
        ctx.reps = reps
        return np.tile(a, reps)

    @staticmethod
    def backward(ctx, grad):
        split = []
        for r, s in zip(ctx.reps, ctx.in_shape):
            split += [r, s]
        g = grad.reshape(split).sum(axis=tuple(range(0, len(split), 2)))
        return (g,)


class RepeatInterleave(Function):
    @staticmethod
    def forward(ctx, a, *, repeats, axis):
        ctx.axis, ctx.repeats = axis, repeats
        return np.repeat(a, repeats, axis=axis)

    @staticmethod
    def backward(ctx, grad):
        ax, r = ctx.axis, ctx.repeats
        shape = grad.shape[:ax] + (grad.shape[ax] // r, r) + grad.shape[ax + 1 :]
        return (grad.reshape(shape).sum(axis=ax + 1),)


class Tril(Function):
    @staticmethod
    def forward(ctx, a, *, k, upper):
        ctx.k, ctx.upper = k, upper
        return np.triu(a, k) if upper else np.tril(a, k)

    @staticmethod
    def backward(ctx, grad):
        return (np.triu(grad, ctx.k) if ctx.upper else np.tril(grad, ctx.k),)


class Flip(Function):
    @staticmethod
    def forward(ctx, a, *, axes):
        ctx.axes = axes
        return np.flip(a, axes)

    @staticmethod
    def backward(ctx, grad):
        return (np.flip(grad, ctx.axes),)


class Roll(Function):
    @staticmethod
    def forward(ctx, a, *, shifts, axes):
        ctx.shifts, ctx.axes = shifts, axes
        return np.roll(a, shifts, axes)

    @staticmethod
    def backward(ctx, grad):
        s = ctx.shifts
        neg = tuple(-x for x in s) if isinstance(s, (tuple, list)) else -s
        return (np.roll(grad, neg, ctx.axes),)


class Cat(Function):
    @staticmethod
    def forward(ctx, *arrays, axis):
        ctx.axis = axis
        ctx.bounds = np.cumsum([x.shape[axis] for x in arrays])[:-1]
        return np.concatenate(arrays, axis=axis)

    @staticmethod
    def backward(ctx, grad):
        return tuple(np.split(grad, ctx.bounds, axis=ctx.axis))


class Stack(Function):
    @staticmethod
    def forward(ctx, *arrays, axis):
        ctx.axis = axis
        return np.stack(arrays, axis=axis)

    @staticmethod
    def backward(ctx, grad):
        ax = ctx.axis
        return tuple(grad[(slice(None),) * ax + (i,)] for i in range(grad.shape[ax]))


class Pad(Function):
    """Constant padding with torch's ``pad`` order: (last_lo, last_hi, prev_lo, prev_hi, ...)."""

    @staticmethod
    def forward(ctx, a, *, pad, value):
        if len(pad) % 2 or len(pad) // 2 > a.ndim:
            raise ValueError(f"pad {pad} does not fit a tensor of shape {a.shape}")
        widths = [(0, 0)] * a.ndim
        for i in range(len(pad) // 2):
            widths[a.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1])
        if any(lo < 0 or hi < 0 for lo, hi in widths):
            raise ValueError(f"negative padding {pad} is not supported")
        ctx.slices = tuple(slice(lo, lo + n) for (lo, _), n in zip(widths, a.shape))
        return np.pad(a, widths, mode="constant", constant_values=value)

    @staticmethod
    def backward(ctx, grad):
        return (grad[ctx.slices],)


# ---------------------------------------------------------------------------- indexing


class Index(Function):
    """``a[key]``; basic keys scatter back by assignment, advanced keys with ``np.add.at``."""

    @staticmethod
    def forward(ctx, a, *, key, basic):
        ctx.key, ctx.basic = key, basic
        ctx.shape, ctx.dtype = a.shape, a.dtype
        return np.asarray(a[key])

    @staticmethod
    def backward(ctx, grad):
        out = np.zeros(ctx.shape, dtype=grad.dtype)
        if ctx.basic:
            out[ctx.key] = grad
        else:
            np.add.at(out, ctx.key, grad)
        return (out,)


def _along_axis_index(index: np.ndarray, axis: int):
    """The fancy-index tuple that ``np.take_along_axis(a, index, axis)`` uses."""
    idx = []
    for d in range(index.ndim):
        if d == axis:
            idx.append(index)
        else:
            shape = [1] * index.ndim
            shape[d] = index.shape[d]
            idx.append(np.arange(index.shape[d]).reshape(shape))
    return tuple(idx)


class Gather(Function):
    @staticmethod
    def forward(ctx, a, index, *, axis):
        if index.ndim != a.ndim:
            raise ValueError(f"gather(): index shape {index.shape} and input shape {a.shape} need the same number of dims")
        ctx.save_for_backward(index)
        ctx.shape, ctx.axis = a.shape, axis
        return np.take_along_axis(a, index, axis=axis)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        out = np.zeros(ctx.shape, dtype=grad.dtype)
        np.add.at(out, _along_axis_index(index, ctx.axis), grad)
        return (out, None)


class IndexSelect(Function):
    @staticmethod
    def forward(ctx, a, index, *, axis):
        if index.ndim > 1:
            raise ValueError(f"index_select(): index must be 0-d or 1-d, got shape {index.shape}")
        ctx.save_for_backward(index)
        ctx.shape, ctx.axis = a.shape, axis
        return np.take(a, index, axis=axis)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        out = np.zeros(ctx.shape, dtype=grad.dtype)
        np.add.at(out, (slice(None),) * ctx.axis + (index,), grad)
        return (out, None)


class ScatterAdd(Function):
    """``out = a.copy(); out[index along axis] += src`` (src has index's shape)."""

    @staticmethod
    def forward(ctx, a, index, src, *, axis):
        if index.shape != np.shape(src) and np.ndim(src) != 0:
            raise ValueError(f"scatter_add(): src shape {np.shape(src)} must equal index shape {index.shape}")
        ctx.save_for_backward(index)
        ctx.axis = axis
        out = a.copy()
        np.add.at(out, _along_axis_index(index, axis), src)
        return out

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        gsrc = np.take_along_axis(grad, index, axis=ctx.axis) if ctx.needs_input_grad[2] else None
        return grad, None, gsrc


class MaskedFill(Function):
    @staticmethod
    def forward(ctx, a, mask, *, value):
        out = np.where(mask, np.asarray(value, dtype=a.dtype), a)
        if out.shape != a.shape:
            raise ValueError(f"masked_fill(): mask shape {mask.shape} does not broadcast to input shape {a.shape}")
        ctx.save_for_backward(mask)
        return out

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return np.where(mask, np.zeros((), grad.dtype), grad), None
