"""axon: a small deep-learning framework on NumPy with PyTorch's names.

``axon.Tensor`` (tensor.py) wraps an ndarray; ``axon/autograd.py`` is the reverse-mode engine;
``axon/ops.py`` holds one Function per primitive; ``axon.nn``, ``axon.optim``, ``axon.save`` /
``axon.load`` and ``axon.testing`` build on them. See docs/autograd.md.
"""

from __future__ import annotations

import numpy as np

from .tensor import Tensor, ValuesIndices, as_tensor, matmul, tensor, where
from .autograd import Function, enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from .random import get_rng, manual_seed
from .creation import (
    arange, cat, concat, empty, empty_like, eye, full, full_like, linspace, one_hot, ones, ones_like,
    pad, rand, rand_like, randint, randn, randn_like, stack, tril, triu, zeros, zeros_like,
)

float16 = half = np.dtype(np.float16)
float32 = float = np.dtype(np.float32)
float64 = double = np.dtype(np.float64)
int8 = np.dtype(np.int8)
uint8 = np.dtype(np.uint8)
int32 = int = np.dtype(np.int32)
int64 = long = np.dtype(np.int64)
bool = np.dtype(np.bool_)


def _unary(name):
    def fn(input, *args, **kwargs):
        t = input if isinstance(input, Tensor) else Tensor(input)
        return getattr(t, name)(*args, **kwargs)

    fn.__name__ = name
    fn.__doc__ = f"Functional form of ``Tensor.{name}``."
    return fn


exp, log, sqrt, rsqrt, tanh, sigmoid, relu, abs, sin, cos = (
    _unary(n) for n in ("exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "relu", "abs", "sin", "cos")
)
sum, mean, var, std, max, min, amax, amin, argmax, argmin, logsumexp, cumsum, prod = (
    _unary(n) for n in ("sum", "mean", "var", "std", "max", "min", "amax", "amin", "argmax", "argmin", "logsumexp", "cumsum", "prod")
)
reshape, flatten, squeeze, unsqueeze, transpose, permute, clamp, clip, topk, sort, argsort = (
    _unary(n) for n in ("reshape", "flatten", "squeeze", "unsqueeze", "transpose", "permute", "clamp", "clip", "topk", "sort", "argsort")
)
gather, index_select, masked_fill, split, chunk, softmax, log_softmax, repeat_interleave, isnan, isfinite = (
    _unary(n) for n in ("gather", "index_select", "masked_fill", "split", "chunk", "softmax", "log_softmax", "repeat_interleave", "isnan", "isfinite")
)
maximum, minimum, flip, roll, narrow, unbind, scatter_add, allclose, equal, norm = (
    _unary(n) for n in ("maximum", "minimum", "flip", "roll", "narrow", "unbind", "scatter_add", "allclose", "equal", "norm")
)


def is_tensor(x):
    """True for an axon.Tensor."""
    return isinstance(x, Tensor)


from . import nn, optim, testing  # noqa: E402
from .serialization import load, save  # noqa: E402
