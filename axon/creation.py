"""Tensor factories with torch's names: ``zeros``, ``ones``, ``full``, ``arange``, ``randn``, ...

Sizes may be given as ``zeros(2, 3)`` or ``zeros((2, 3))``. Floating factories default to
float32; ``arange`` with only integer arguments gives int64 (as torch does).
"""

from __future__ import annotations

import numpy as np

from . import ops
from .random import get_rng
from .tensor import Tensor, _norm_dim, _shape_arg

__all__ = [
    "zeros", "ones", "full", "empty", "arange", "linspace", "eye", "randn", "rand", "randint",
    "zeros_like", "ones_like", "full_like", "randn_like", "rand_like", "empty_like",
    "cat", "concat", "stack", "pad", "one_hot", "tril", "triu",
]


def _float(dtype):
    return np.dtype(np.float32 if dtype is None else dtype)


def _new(arr, requires_grad):
    return Tensor(arr, requires_grad=requires_grad)


def zeros(*size, dtype=None, requires_grad: bool = False) -> Tensor:
    """A tensor of zeros of the given size."""
    return _new(np.zeros(_shape_arg(size), dtype=_float(dtype)), requires_grad)


def ones(*size, dtype=None, requires_grad: bool = False) -> Tensor:
    """A tensor of ones of the given size."""
    return _new(np.ones(_shape_arg(size), dtype=_float(dtype)), requires_grad)


def empty(*size, dtype=None, requires_grad: bool = False) -> Tensor:
    """An uninitialised tensor (zeros here, for reproducibility)."""
    return zeros(*size, dtype=dtype, requires_grad=requires_grad)


def full(size, fill_value, dtype=None, requires_grad: bool = False) -> Tensor:
    """A tensor filled with ``fill_value`` (float32 for a float value, int64 for an int, bool for a bool)."""
    if dtype is None:
        dtype = np.bool_ if isinstance(fill_value, bool) else np.int64 if isinstance(fill_value, int) else np.float32
    return _new(np.full(_shape_arg((size,)) if isinstance(size, int) else tuple(size), fill_value, dtype=dtype), requires_grad)


def arange(start, end=None, step=1, dtype=None, requires_grad: bool = False) -> Tensor:
    """``[start, end)`` in steps of ``step``; int64 when all arguments are ints, else float32."""
    if end is None:
        start, end = 0, start
    if dtype is None:
        ints = all(isinstance(v, (int, np.integer)) for v in (start, end, step))
        dtype = np.int64 if ints else np.float32
    return _new(np.arange(start, end, step).astype(dtype), requires_grad)


def linspace(start, end, steps: int, dtype=None) -> Tensor:
    """``steps`` evenly spaced values from ``start`` to ``end`` inclusive (float32 by default)."""
    return Tensor(np.linspace(start, end, steps).astype(_float(dtype)))


def eye(n: int, m=None, dtype=None) -> Tensor:
    """Identity matrix [n, m] (float32 by default)."""
    return Tensor(np.eye(n, m, dtype=_float(dtype)))


def randn(*size, dtype=None, requires_grad: bool = False) -> Tensor:
    """Standard-normal samples from axon's generator (see ``axon.manual_seed``)."""
    arr = get_rng().standard_normal(_shape_arg(size), dtype=np.float64).astype(_float(dtype))
    return _new(arr, requires_grad)


def rand(*size, dtype=None, requires_grad: bool = False) -> Tensor:
    """Uniform samples in [0, 1)."""
    return _new(get_rng().random(_shape_arg(size)).astype(_float(dtype)), requires_grad)


def randint(low, high=None, size=(), dtype=np.int64) -> Tensor:
    """Integers in ``[low, high)`` (``randint(high, size=...)`` also works)."""
    if high is None:
        low, high = 0, low
    return Tensor(get_rng().integers(low, high, size=tuple(size)).astype(dtype))


def zeros_like(t, dtype=None, requires_grad: bool = False) -> Tensor:
    """Zeros with ``t``'s shape (and dtype unless given)."""
    return Tensor(np.zeros(t.shape, dtype=t.dtype if dtype is None else dtype), requires_grad=requires_grad)


def ones_like(t, dtype=None, requires_grad: bool = False) -> Tensor:
    """Ones with ``t``'s shape (and dtype unless given)."""
    return Tensor(np.ones(t.shape, dtype=t.dtype if dtype is None else dtype), requires_grad=requires_grad)


def empty_like(t, dtype=None, requires_grad: bool = False) -> Tensor:
    """Like :func:`zeros_like`."""
    return zeros_like(t, dtype, requires_grad)


def full_like(t, fill_value, dtype=None, requires_grad: bool = False) -> Tensor:
    """``fill_value`` with ``t``'s shape (and dtype unless given)."""
    return Tensor(np.full(t.shape, fill_value, dtype=t.dtype if dtype is None else dtype), requires_grad=requires_grad)


def randn_like(t, dtype=None, requires_grad: bool = False) -> Tensor:
    """Standard-normal samples with ``t``'s shape."""
    return randn(*t.shape, dtype=t.dtype if dtype is None else dtype, requires_grad=requires_grad)


def rand_like(t, dtype=None, requires_grad: bool = False) -> Tensor:
    """U[0, 1) samples with ``t``'s shape."""
    return rand(*t.shape, dtype=t.dtype if dtype is None else dtype, requires_grad=requires_grad)


def _tensors(ts, name):
    ts = [t if isinstance(t, Tensor) else Tensor(t) for t in ts]
    if not ts:
        raise ValueError(f"{name}(): expected a non-empty sequence of tensors")
    return ts


def cat(tensors, dim: int = 0) -> Tensor:
    """Concatenate along an existing dim; all other dims must match."""
    ts = _tensors(tensors, "cat")
    d = _norm_dim(dim, ts[0].ndim)
    ref = ts[0].shape
    for t in ts[1:]:
        if t.ndim != len(ref) or any(a != b for i, (a, b) in enumerate(zip(t.shape, ref)) if i != d):
            raise ValueError(f"cat(): shapes {tuple(ref)} and {tuple(t.shape)} differ outside dim {d}")
    if len(ts) == 1:
        return ts[0]
    return ops.Cat.apply(*ts, axis=d)


concat = cat


def stack(tensors, dim: int = 0) -> Tensor:
    """Stack equally shaped tensors along a new dim."""
    ts = _tensors(tensors, "stack")
    for t in ts[1:]:
        if t.shape != ts[0].shape:
            raise ValueError(f"stack(): shapes {tuple(ts[0].shape)} and {tuple(t.shape)} differ")
    return ops.Stack.apply(*ts, axis=_norm_dim(dim, ts[0].ndim + 1))


def pad(input: Tensor, pad, mode: str = "constant", value: float = 0.0) -> Tensor:
    """torch.nn.functional.pad with constant mode: ``pad=(left, right, top, bottom, ...)``."""
    if mode != "constant":
        raise ValueError(f"pad(): mode {mode!r} not supported (only 'constant')")
    return ops.Pad.apply(input, pad=tuple(int(p) for p in pad), value=value)


def one_hot(index, num_classes: int = -1) -> Tensor:
    """int64 one-hot encoding with a trailing class dim (no gradient)."""
    idx = index.data if isinstance(index, Tensor) else np.asarray(index)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"one_hot(): index must be integer, got {idx.dtype}")
    n = int(idx.max()) + 1 if num_classes < 0 else num_classes
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"one_hot(): class values must be in [0, {n})")
    return Tensor((idx[..., None] == np.arange(n)).astype(np.int64))


def tril(t: Tensor, diagonal: int = 0) -> Tensor:
    """Functional :meth:`Tensor.tril`."""
    return t.tril(diagonal)


def triu(t: Tensor, diagonal: int = 0) -> Tensor:
    """Functional :meth:`Tensor.triu`."""
    return t.triu(diagonal)
