"""``axon.Tensor``: a NumPy array plus what autograd needs, with PyTorch's method names.

``t.data`` is the ``np.ndarray``; ``t.grad`` is an ``axon.Tensor`` (or None); ``t._ctx`` is the
node (see ``axon/autograd.py``) that produced ``t``, None for leaves. Every differentiable
method calls one :class:`~axon.autograd.Function` from ``axon/ops.py`` or composes a few.

dtype rules: float32 by default; float64 (and float16) arrays keep their dtype; Python floats
become float32, Python ints int64; an op between a tensor and a Python scalar keeps the
tensor's dtype (an int tensor times a Python float gives float32).
"""

from __future__ import annotations

from collections import namedtuple

import math
import weakref

import numpy as np

from . import autograd as _autograd
from . import ops as _ops
from . import random as _random
from .autograd import TensorBase

__all__ = ["Tensor", "tensor", "as_tensor"]

_FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_SUPPORTED_KINDS = "fiub"

ValuesIndices = namedtuple("ValuesIndices", ["values", "indices"])
ValuesIndices.__doc__ = """(values, indices) returned by ``max(dim)``, ``min(dim)``, ``topk``, ``sort``: two tensors of the same shape."""


def _to_array(data, dtype=None) -> np.ndarray:
    """Convert ``data`` to an ndarray following axon's dtype rules (see the module docstring)."""
    if isinstance(data, Tensor):
        arr = data.data
    elif isinstance(data, (np.ndarray, np.generic)):
        arr = np.asarray(data)
    else:
        if isinstance(data, (list, tuple)) and any(isinstance(x, Tensor) for x in data):
            data = [x.data if isinstance(x, Tensor) else x for x in data]
        try:
            arr = np.asarray(data)
        except (ValueError, TypeError) as err:
            raise ValueError(f"cannot build a tensor from {type(data).__name__}: {err}") from None
        if dtype is None and arr.dtype == np.float64:
            arr = arr.astype(np.float32)  # python floats -> float32
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype.kind not in _SUPPORTED_KINDS:
            raise TypeError(f"unsupported dtype {dtype}")
        if arr.dtype != dtype:
            arr = arr.astype(dtype)
    if arr.dtype.kind not in _SUPPORTED_KINDS:
        raise TypeError(f"unsupported dtype {arr.dtype}: axon tensors hold float, int or bool data")
    return arr


def _norm_dim(dim, ndim: int) -> int:
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    lo, hi = -max(ndim, 1), max(ndim, 1) - 1
    if not lo <= dim <= hi:
        raise IndexError(f"Dimension out of range (expected to be in range of [{lo}, {hi}], but got {dim})")
    return int(dim) % max(ndim, 1)


def _norm_dims(dim, ndim: int):
    """None -> None (all dims); int or sequence -> sorted tuple of non-negative axes."""
    if dim is None:
        return None
    if isinstance(dim, (list, tuple)):
        return tuple(sorted({_norm_dim(d, ndim) for d in dim}))
    return (_norm_dim(dim, ndim),)


def _shape_arg(size) -> tuple:
    """Accept ``f(2, 3)``, ``f((2, 3))`` and ``f([2, 3])``."""
    if len(size) == 1 and isinstance(size[0], (list, tuple)):
        size = tuple(size[0])
    return tuple(int(s) for s in size)


def _convert_index(key):
    """Index keys: Tensors become arrays; returns (key, is_basic)."""
    if not isinstance(key, tuple):
        key = (key,)
    out = []
    basic = True
    for k in key:
        if isinstance(k, Tensor):
            k = k.data
        if isinstance(k, list):
            k = np.asarray(k)
        if isinstance(k, np.ndarray) or isinstance(k, (bool, np.bool_)):
            basic = False
        out.append(k)
    return tuple(out), basic


class Tensor(TensorBase):
    """A NumPy array with reverse-mode autograd and PyTorch's method names."""

    __slots__ = ()  # _data, _requires_grad, grad, _ctx: see axon.autograd.TensorBase
    __array_priority__ = 1000  # ndarray <op> Tensor -> Tensor.__rop__

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        self._data = _to_array(data, dtype)
        self._requires_grad = False
        self.grad = None
        self._ctx = None
        if requires_grad:
            self.requires_grad = True

    @classmethod
    def _make(cls, arr: np.ndarray) -> "Tensor":
        """Wrap an ndarray without any checks (the fast path used by Function.apply)."""
        t = object.__new__(Tensor)
        t._data = arr if isinstance(arr, np.ndarray) else np.asarray(arr)
        t._requires_grad = False
        t.grad = None
        t._ctx = None
        return t

    # ------------------------------------------------------------------ basic properties
    @property
    def data(self) -> np.ndarray:
        """The underlying ``np.ndarray``."""
        return self._data

    @data.setter
    def data(self, value) -> None:
        self._data = _to_array(value)

    @property
    def requires_grad(self) -> bool:
        """Whether gradients are accumulated for this tensor (only floating tensors)."""
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, flag: bool) -> None:
        if flag and self.dtype.kind != "f":
            raise TypeError(f"only floating point tensors can require gradients (got dtype {self.dtype})")
        self._requires_grad = bool(flag)

    def requires_grad_(self, flag: bool = True) -> "Tensor":
        """Set ``requires_grad`` in place; returns self."""
        self.requires_grad = flag
        return self

    @property
    def grad_fn(self):
        """The Function class that produced this tensor (None for leaves)."""
        return None if self._ctx is None else self._ctx.fn

    @property
    def is_leaf(self) -> bool:
        """True for tensors not produced by a recorded op (their ``.grad`` is filled by backward)."""
        return self._ctx is None

    @property
    def shape(self) -> tuple:
        """The shape as a tuple of ints."""
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        """The NumPy dtype (compare with ``axon.float32`` etc.)."""
        return self.data.dtype

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    def dim(self) -> int:
        """Number of dimensions (torch's ``t.dim()``)."""
        return len(self.shape)

    def size(self, dim=None):
        """The shape, or the length of dimension ``dim``."""
        shape = self.shape
        if dim is None:
            return tuple(shape)
        return shape[_norm_dim(dim, len(shape))]

    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    def is_floating_point(self) -> bool:
        """True for float16/32/64 tensors."""
        return self.dtype.kind == "f"

    @property
    def device(self) -> str:
        """Always ``"cpu"`` (kept for torch-style code)."""
        return "cpu"

    @property
    def T(self) -> "Tensor":
        """All dimensions reversed (torch's ``.T``)."""
        return self.permute(*reversed(range(self.ndim)))

    @property
    def mT(self) -> "Tensor":
        """The last two dimensions swapped."""
        return self.transpose(-2, -1)

    # ------------------------------------------------------------------ conversion
    def numpy(self) -> np.ndarray:
        """The data as an ndarray (shares memory, like torch's ``.numpy()``)."""
        return self.data

    def __array__(self, dtype=None, copy=None):
        arr = self.data
        if dtype is not None and arr.dtype != dtype:
            return arr.astype(dtype)
        return arr.copy() if copy else arr

    def item(self):
        """The single element as a Python number."""
        if self.data.size != 1:
            raise ValueError(f"item(): only one-element tensors can be converted to Python scalars, got shape {self.shape}")
        return self.data.reshape(()).item()

    def tolist(self):
        """The data as nested Python lists."""
        return self.data.tolist()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __index__(self):
        if self.dtype.kind not in "iu":
            raise TypeError("only integer tensors can be used as an index")
        return int(self.item())

    def __bool__(self):
        if self.data.size != 1:
            raise ValueError(f"the truth value of a tensor with {self.data.size} elements is ambiguous")
        return bool(self.data.reshape(()).item())

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        body = np.array2string(self.data, separator=", ", prefix="tensor(", precision=4)
        extras = []
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.int64), np.dtype(np.bool_)):
            extras.append(f"dtype={self.dtype}")
        if self._ctx is not None:
            extras.append(f"grad_fn=<{self._ctx.fn.__name__}>")
        elif self._requires_grad:
            extras.append("requires_grad=True")
        return "tensor(" + body + "".join(", " + e for e in extras) + ")"

    # ------------------------------------------------------------------ autograd API
    def backward(self, gradient=None, retain_graph: bool = False) -> None:
        """Accumulate gradients of this tensor into ``.grad`` of every leaf that requires grad."""
        _autograd.backward(self, gradient, retain_graph=retain_graph)

    def retain_grad(self) -> None:
        """Also store the gradient of this non-leaf tensor in ``.grad`` during backward."""
        if self._ctx is not None:
            self._ctx.retained = weakref.ref(self)

    def detach(self) -> "Tensor":
        """The same data, cut from the graph."""
        return Tensor._make(self.data)

    def detach_(self) -> "Tensor":
        """Cut this tensor from the graph in place; returns self."""
        self._ctx = None
        self._requires_grad = False
        return self

    def __deepcopy__(self, memo):
        """A copy of the data (and grad), detached from any graph."""
        t = Tensor._make(self.data.copy())
        t._requires_grad = self._requires_grad
        if self.grad is not None:
            t.grad = Tensor._make(self.grad.data.copy())
        return t

    def clone(self) -> "Tensor":
        """A differentiable copy."""
        return _ops.Clone.apply(self)

    def contiguous(self) -> "Tensor":
        """A no-op kept for torch compatibility (NumPy handles strides)."""
        return self

    # ------------------------------------------------------------------ dtype casts
    def to(self, *args, dtype=None, **kwargs) -> "Tensor":
        """Cast to a dtype: ``t.to(axon.float64)``; device names (``"cpu"``) are accepted and ignored."""
        for a in args:
            if isinstance(a, str) and a.startswith("cpu"):
                continue
            dtype = a.dtype if isinstance(a, Tensor) else a
        if dtype is None:
            return self
        dtype = np.dtype(dtype)
        if dtype == self.dtype:
            return self
        if dtype.kind not in _SUPPORTED_KINDS:
            raise TypeError(f"unsupported dtype {dtype}")
        return _ops.Cast.apply(self, dtype=dtype)

    type = to

    def type_as(self, other: "Tensor") -> "Tensor":
        """Cast to ``other``'s dtype."""
        return self.to(other.dtype)

    def float(self) -> "Tensor":
        """Cast to float32 (a no-op when already float32)."""
        return self.to(np.float32)

    def double(self) -> "Tensor":
        """Cast to float64."""
        return self.to(np.float64)

    def half(self) -> "Tensor":
        """Cast to float16."""
        return self.to(np.float16)

    def long(self) -> "Tensor":
        """Cast to int64 (no gradient)."""
        return self.to(np.int64)

    def int(self) -> "Tensor":
        """Cast to int32 (no gradient)."""
        return self.to(np.int32)

    def bool(self) -> "Tensor":
        """Cast to bool (no gradient)."""
        return self.to(np.bool_)

    # ------------------------------------------------------------------ operand helper
    def _operand(self, other):
        """``other`` as a Tensor or a raw ndarray whose dtype does not promote ``self``."""
        if isinstance(other, Tensor):
            return other
        if isinstance(other, (bool, np.bool_)):
            return np.asarray(other, dtype=self.dtype if self.dtype.kind != "b" else np.bool_)
        if isinstance(other, (int, np.integer)) and not isinstance(other, np.ndarray):
            return np.asarray(other, dtype=self.dtype if self.dtype.kind in "fiu" else np.int64)
        if isinstance(other, (float, np.floating)) and not isinstance(other, np.ndarray):
            return np.asarray(other, dtype=self.dtype if self.dtype.kind == "f" else np.float32)
        return Tensor(other)

    def _pair(self, other):
        """(self, other) ready for a binary op: an int tensor meeting a float scalar becomes float32."""
        o = self._operand(other)
        if self.dtype.kind in "iub" and not isinstance(o, Tensor) and o.dtype.kind == "f":
            return self.float(), o
        return self, o

    def _check_float(self, op: str) -> None:
        if self.dtype.kind != "f":
            raise TypeError(f"{op}() needs a floating tensor, got dtype {self.dtype}")

    # ------------------------------------------------------------------ arithmetic
    def __add__(self, other):
        a, b = self._pair(other)
        return _ops.Add.apply(a, b)

    def __radd__(self, other):
        a, b = self._pair(other)
        return _ops.Add.apply(b, a)

    def __sub__(self, other):
        a, b = self._pair(other)
        return _ops.Sub.apply(a, b)

    def __rsub__(self, other):
        a, b = self._pair(other)
        return _ops.Sub.apply(b, a)

    def __mul__(self, other):
        a, b = self._pair(other)
        return _ops.Mul.apply(a, b)

    def __rmul__(self, other):
        a, b = self._pair(other)
        return _ops.Mul.apply(b, a)

    def __truediv__(self, other):
        a, b = self._pair(other)
        if a.dtype.kind != "f" and b.dtype.kind != "f":
            a = a.float()
            b = b.float() if isinstance(b, Tensor) else b.astype(np.float32)
        return _ops.Div.apply(a, b)

    def __rtruediv__(self, other):
        b, a = self._pair(other)
        if b.dtype.kind != "f" and a.dtype.kind != "f":
            b = b.float()
            a = a.float() if isinstance(a, Tensor) else a.astype(np.float32)
        return _ops.Div.apply(a, b)

    def __floordiv__(self, other):
        return Tensor._make(np.floor_divide(self.data, _raw(self._operand(other))))

    def __mod__(self, other):
        return Tensor._make(np.mod(self.data, _raw(self._operand(other))))

    def __pow__(self, exponent):
        if isinstance(exponent, Tensor):
            return _ops.Pow.apply(self, exponent)
        if isinstance(exponent, (int, float, np.integer, np.floating)):
            return _ops.PowScalar.apply(self, exponent=float(exponent) if self.dtype.kind == "f" else exponent)
        return _ops.Pow.apply(self, Tensor(exponent))

    def __rpow__(self, base):
        return _ops.Pow.apply(self._operand(base), self)

    def __neg__(self):
        return _ops.Neg.apply(self)

    def __pos__(self):
        return self

    def __matmul__(self, other):
        return matmul(self, other)

    def __rmatmul__(self, other):
        return matmul(Tensor(other), self)

    def add(self, other, alpha=1):
        """``self + alpha * other``."""
        return self + (other * alpha if alpha != 1 else other)

    def sub(self, other, alpha=1):
        """``self - alpha * other``."""
        return self - (other * alpha if alpha != 1 else other)

    def mul(self, other):
        """``self * other``."""
        return self * other

    def div(self, other):
        """``self / other`` (true division; integer inputs give float32)."""
        return self / other

    def pow(self, exponent):
        """``self ** exponent``."""
        return self ** exponent

    def matmul(self, other):
        """``self @ other`` (see :func:`axon.matmul`)."""
        return matmul(self, other)

    # ------------------------------------------------------------------ comparisons (no grad)
    def _compare(self, other, fn):
        o = other.data if isinstance(other, Tensor) else other
        try:
            return Tensor._make(np.asarray(fn(self.data, o)))
        except ValueError as err:
            raise ValueError(f"cannot compare shapes {self.shape} and {np.shape(o)}: {err}") from None

    def __eq__(self, other):
        """Elementwise ``self == other`` (broadcast) -> bool tensor; also ``t.eq(other)``."""
        return self._compare(other, np.equal)

    def __ne__(self, other):
        """Elementwise ``self != other`` (broadcast) -> bool tensor; also ``t.ne(other)``."""
        return self._compare(other, np.not_equal)

    def __lt__(self, other):
        """Elementwise ``self < other`` (broadcast) -> bool tensor; also ``t.lt(other)``."""
        return self._compare(other, np.less)

    def __le__(self, other):
        """Elementwise ``self <= other`` (broadcast) -> bool tensor; also ``t.le(other)``."""
        return self._compare(other, np.less_equal)

    def __gt__(self, other):
        """Elementwise ``self > other`` (broadcast) -> bool tensor; also ``t.gt(other)``."""
        return self._compare(other, np.greater)

    def __ge__(self, other):
        """Elementwise ``self >= other`` (broadcast) -> bool tensor; also ``t.ge(other)``."""
        return self._compare(other, np.greater_equal)

    eq, ne, lt, le, gt, ge = __eq__, __ne__, __lt__, __le__, __gt__, __ge__

    def __and__(self, other):
        return self._compare(other, np.logical_and if self.dtype.kind == "b" else np.bitwise_and)

    def __or__(self, other):
        return self._compare(other, np.logical_or if self.dtype.kind == "b" else np.bitwise_or)

    def __xor__(self, other):
        return self._compare(other, np.logical_xor if self.dtype.kind == "b" else np.bitwise_xor)

    def __invert__(self):
        return Tensor._make(np.logical_not(self.data) if self.dtype.kind == "b" else np.invert(self.data))

    def logical_not(self):
        """Elementwise NOT (bool result)."""
        return Tensor._make(np.logical_not(self.data))

    def logical_and(self, other):
        """Elementwise AND (bool result)."""
        return self._compare(other, np.logical_and)

    def logical_or(self, other):
        """Elementwise OR (bool result)."""
        return self._compare(other, np.logical_or)

    def isnan(self):
        """Bool mask of NaNs."""
        return Tensor._make(np.isnan(self.data))

    def isinf(self):
        """Bool mask of infinities."""
        return Tensor._make(np.isinf(self.data))

    def isfinite(self):
        """Bool mask of finite values."""
        return Tensor._make(np.isfinite(self.data))

    def any(self, dim=None, keepdim=False):
        """True where any element (along ``dim``) is non-zero."""
        return Tensor._make(np.asarray(np.any(self.data, axis=_norm_dims(dim, self.ndim), keepdims=keepdim)))

    def all(self, dim=None, keepdim=False):
        """True where all elements (along ``dim``) are non-zero."""
        return Tensor._make(np.asarray(np.all(self.data, axis=_norm_dims(dim, self.ndim), keepdims=keepdim)))

    def equal(self, other) -> bool:
        """True when shapes and all values are equal."""
        o = other.data if isinstance(other, Tensor) else np.asarray(other)
        return self.shape == o.shape and bool(np.array_equal(self.data, o))

    def allclose(self, other, rtol=1e-5, atol=1e-8) -> bool:
        """``np.allclose`` on the data."""
        o = other.data if isinstance(other, Tensor) else np.asarray(other)
        return bool(np.allclose(self.data, o, rtol=rtol, atol=atol))

    # ------------------------------------------------------------------ elementwise math
    def exp(self):
        """Elementwise e**x."""
        return _ops.Exp.apply(self._floated())

    def log(self):
        """Elementwise natural log."""
        return _ops.Log.apply(self._floated())

    def sqrt(self):
        """Elementwise square root."""
        return _ops.Sqrt.apply(self._floated())

    def rsqrt(self):
        """Elementwise 1 / sqrt(x)."""
        return _ops.Rsqrt.apply(self._floated())

    def tanh(self):
        """Elementwise tanh."""
        return _ops.Tanh.apply(self._floated())

    def sigmoid(self):
        """Elementwise logistic function (overflow-free)."""
        return _ops.Sigmoid.apply(self._floated())

    def sin(self):
        """Elementwise sine."""
        return _ops.Sin.apply(self._floated())

    def cos(self):
        """Elementwise cosine."""
        return _ops.Cos.apply(self._floated())

    def abs(self):
        """Elementwise absolute value (gradient sign(x))."""
        return _ops.Abs.apply(self)

    def square(self):
        """Elementwise x * x."""
        return self * self

    def reciprocal(self):
        """Elementwise 1 / x."""
        return 1.0 / self._floated()

    def sign(self):
        """Elementwise sign (no gradient)."""
        return Tensor._make(np.sign(self.data))

    def floor(self):
        """Elementwise floor (no gradient)."""
        return Tensor._make(np.floor(self.data))

    def ceil(self):
        """Elementwise ceil (no gradient)."""
        return Tensor._make(np.ceil(self.data))

    def round(self):
        """Elementwise round-half-to-even (no gradient)."""
        return Tensor._make(np.round(self.data))

    def relu(self):
        """max(x, 0)."""
        return _ops.Relu.apply(self)

    def gelu(self, approximate: str = "none"):
        """GELU; ``approximate="tanh"`` gives gelu_tanh (GPT-2's ``gelu_new``)."""
        if approximate == "tanh":
            return _ops.GeluTanh.apply(self._floated())
        return _ops.Gelu.apply(self._floated())

    def gelu_tanh(self):
        """GELU with the tanh approximation."""
        return _ops.GeluTanh.apply(self._floated())

    def silu(self):
        """x * sigmoid(x)."""
        return _ops.Silu.apply(self._floated())

    def softplus(self, beta: float = 1.0, threshold: float = 20.0):
        """log(1 + exp(beta x)) / beta, linear above ``threshold`` (torch's definition)."""
        return _ops.Softplus.apply(self._floated(), beta=beta, threshold=threshold)

    def clamp(self, min=None, max=None):
        """Clip to ``[min, max]`` (either may be None); gradient 0 where clipped."""
        if min is None and max is None:
            raise ValueError("clamp(): at least one of min and max must be given")
        return _ops.Clamp.apply(self, lo=min, hi=max)

    clip = clamp

    def clamp_min(self, min):
        """max(x, min)."""
        return self.clamp(min=min)

    def clamp_max(self, max):
        """min(x, max)."""
        return self.clamp(max=max)

    def maximum(self, other):
        """Elementwise max with broadcasting (ties share the gradient)."""
        return _ops.Maximum.apply(self, self._operand(other))

    def minimum(self, other):
        """Elementwise min with broadcasting (ties share the gradient)."""
        return _ops.Minimum.apply(self, self._operand(other))

    def _floated(self):
        return self if self.dtype.kind == "f" else self.float()

    # ------------------------------------------------------------------ reductions
    def sum(self, dim=None, keepdim: bool = False, dtype=None):
        """Sum over ``dim`` (an int, a tuple, or None for all)."""
        t = self if dtype is None else self.to(dtype)
        return _ops.Sum.apply(t, axes=_norm_dims(dim, t.ndim), keepdim=keepdim)

    def mean(self, dim=None, keepdim: bool = False, dtype=None):
        """Mean over ``dim`` (floating tensors only)."""
        t = self if dtype is None else self.to(dtype)
        if t.dtype.kind != "f":
            raise TypeError(f"mean(): input dtype must be floating, got {t.dtype} (use .float() first)")
        return _ops.Mean.apply(t, axes=_norm_dims(dim, t.ndim), keepdim=keepdim)

    def var(self, dim=None, unbiased: bool = True, keepdim: bool = False, correction=None):
        """Variance; ``correction`` (default 1, or 0 when ``unbiased=False``) as in torch."""
        self._check_float("var")
        c = (1 if unbiased else 0) if correction is None else correction
        axes = _norm_dims(dim, self.ndim)
        n = self.numel() if axes is None else int(np.prod([self.shape[a] for a in axes]))
        centered = self - self.mean(dim=dim, keepdim=True)
        return (centered * centered).sum(dim=dim, keepdim=keepdim) / max(n - c, 0)

    def std(self, dim=None, unbiased: bool = True, keepdim: bool = False, correction=None):
        """Standard deviation (see :meth:`var`)."""
        return self.var(dim=dim, unbiased=unbiased, keepdim=keepdim, correction=correction).sqrt()

    def _minmax(self, dim, keepdim, largest: bool):
        if dim is None:
            return _ops.MaxAll.apply(self, largest=largest)
        d = _norm_dim(dim, self.ndim)
        arg = np.argmax if largest else np.argmin
        idx = np.expand_dims(arg(self.data, axis=d), d)  # [..., 1, ...]
        values = self.gather(d, Tensor._make(idx))
        if not keepdim:
            values = values.squeeze(d)
            idx = np.squeeze(idx, d)
        return ValuesIndices(values, Tensor._make(idx))

    def max(self, dim=None, keepdim: bool = False):
        """``t.max()`` -> scalar tensor; ``t.max(dim)`` -> (values, indices); ``t.max(other)`` -> elementwise."""
        if isinstance(dim, (Tensor, np.ndarray)):
            return self.maximum(dim)
        return self._minmax(dim, keepdim, largest=True)

    def min(self, dim=None, keepdim: bool = False):
        """``t.min()`` -> scalar tensor; ``t.min(dim)`` -> (values, indices); ``t.min(other)`` -> elementwise."""
        if isinstance(dim, (Tensor, np.ndarray)):
            return self.minimum(dim)
        return self._minmax(dim, keepdim, largest=False)

    def amax(self, dim=None, keepdim: bool = False):
        """Max over ``dim`` (ties share the gradient evenly)."""
        return _ops.AMax.apply(self, axes=_norm_dims(dim, self.ndim), keepdim=keepdim, largest=True)

    def amin(self, dim=None, keepdim: bool = False):
        """Min over ``dim`` (ties share the gradient evenly)."""
        return _ops.AMax.apply(self, axes=_norm_dims(dim, self.ndim), keepdim=keepdim, largest=False)

    def argmax(self, dim=None, keepdim: bool = False):
        """Index of the max (over all elements, or along ``dim``), int64."""
        if dim is None:
            return Tensor._make(np.asarray(np.argmax(self.data)))
        d = _norm_dim(dim, self.ndim)
        out = np.argmax(self.data, axis=d)
        return Tensor._make(np.expand_dims(out, d) if keepdim else out)

    def argmin(self, dim=None, keepdim: bool = False):
        """Index of the min (over all elements, or along ``dim``), int64."""
        if dim is None:
            return Tensor._make(np.asarray(np.argmin(self.data)))
        d = _norm_dim(dim, self.ndim)
        out = np.argmin(self.data, axis=d)
        return Tensor._make(np.expand_dims(out, d) if keepdim else out)

    def logsumexp(self, dim, keepdim: bool = False):
        """Stable log(sum(exp(x))) over ``dim``."""
        self._check_float("logsumexp")
        return _ops.LogSumExp.apply(self, axes=_norm_dims(dim, self.ndim), keepdim=keepdim)

    def cumsum(self, dim):
        """Cumulative sum along ``dim``."""
        return _ops.CumSum.apply(self, axis=_norm_dim(dim, self.ndim))

    def prod(self, dim=None, keepdim: bool = False):
        """Product over ``dim`` (gradient correct with zeros)."""
        return _ops.Prod.apply(self, axes=_norm_dims(dim, self.ndim), keepdim=keepdim)

    def norm(self, p=2, dim=None, keepdim: bool = False):
        """The p-norm (p=2 or 1) over ``dim`` (all elements by default)."""
        if p == 2:
            return (self * self).sum(dim=dim, keepdim=keepdim).sqrt()
        if p == 1:
            return self.abs().sum(dim=dim, keepdim=keepdim)
        raise ValueError(f"norm(): p={p} not supported (use 1 or 2)")

    def softmax(self, dim: int = -1):
        """Stable softmax along ``dim``."""
        self._check_float("softmax")
        return _ops.Softmax.apply(self, axis=_norm_dim(dim, self.ndim))

    def log_softmax(self, dim: int = -1):
        """Stable log-softmax along ``dim``."""
        self._check_float("log_softmax")
        return _ops.LogSoftmax.apply(self, axis=_norm_dim(dim, self.ndim))

    # ------------------------------------------------------------------ shape
    def reshape(self, *shape):
        """The same data in a new shape (one ``-1`` allowed); a view when possible."""
        if len(shape) == 1 and isinstance(shape[0], (list, tuple)):
            shape = tuple(shape[0])
        if shape == self.shape:
            return self
        return _ops.Reshape.apply(self, shape=shape)  # a bad shape: one ValueError naming both

    view = reshape

    def view_as(self, other):
        """Reshape to ``other.shape``."""
        return self.reshape(other.shape)

    def reshape_as(self, other):
        """Reshape to ``other.shape``."""
        return self.reshape(other.shape)

    def flatten(self, start_dim: int = 0, end_dim: int = -1):
        """Merge dims ``start_dim..end_dim`` into one."""
        if self.ndim == 0:
            return self.reshape(1)
        s, e = _norm_dim(start_dim, self.ndim), _norm_dim(end_dim, self.ndim)
        shape = self.shape[:s] + (-1,) + self.shape[e + 1 :]
        return self.reshape(shape) if s <= e else self

    def unflatten(self, dim: int, sizes):
        """Split dim ``dim`` into ``sizes``."""
        d = _norm_dim(dim, self.ndim)
        return self.reshape(self.shape[:d] + tuple(sizes) + self.shape[d + 1 :])

    def squeeze(self, dim=None):
        """Drop size-1 dims (all, or the given ``dim``)."""
        if dim is None:
            shape = tuple(s for s in self.shape if s != 1)
        else:
            dims = _norm_dims(dim, self.ndim)
            shape = tuple(s for i, s in enumerate(self.shape) if not (i in dims and s == 1))
        return self.reshape(shape)

    def unsqueeze(self, dim: int):
        """Insert a size-1 dim at ``dim``."""
        d = _norm_dim(dim, self.ndim + 1)
        return self.reshape(self.shape[:d] + (1,) + self.shape[d:])

    def permute(self, *dims):
        """Reorder the dims: ``t.permute(0, 2, 1)``."""
        if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
            dims = tuple(dims[0])
        n = self.ndim
        if len(dims) != n:
            raise ValueError(f"permute(): {len(dims)} dims given for a tensor of shape {tuple(self.shape)}")
        dims = tuple(d + n if -n <= d < 0 else d for d in dims)
        if sorted(dims) != list(range(n)):
            raise ValueError(f"permute(): {dims} is not a permutation of the dims of shape {tuple(self.shape)}")
        if dims == tuple(range(n)):
            return self
        return _ops.Permute.apply(self, dims=dims)

    def transpose(self, dim0: int, dim1: int):
        """Swap two dims."""
        d0, d1 = _norm_dim(dim0, self.ndim), _norm_dim(dim1, self.ndim)
        dims = list(range(self.ndim))
        dims[d0], dims[d1] = dims[d1], dims[d0]
        return self.permute(*dims)

    swapaxes = transpose

    def t(self):
        """Transpose a tensor of at most 2 dims."""
        if self.ndim > 2:
            raise ValueError(f"t() expects a tensor with <= 2 dims, got shape {tuple(self.shape)}")
        return self.T

    def expand(self, *sizes):
        """Broadcast size-1 dims to ``sizes`` without copying (``-1`` keeps a dim)."""
        sizes = _shape_arg(sizes)
        extra = len(sizes) - self.ndim
        if extra < 0:
            raise ValueError(f"expand(): target {sizes} has fewer dims than the tensor's shape {tuple(self.shape)}")
        shape = tuple(s if s != -1 else self.shape[i - extra] for i, s in enumerate(sizes))
        if shape == self.shape:
            return self
        return _ops.Expand.apply(self, shape=shape)

    def expand_as(self, other):
        """``expand`` to ``other.shape``."""
        return self.expand(other.shape)

    def repeat(self, *sizes):
        """Tile the tensor ``sizes`` times along each dim (torch's ``repeat``)."""
        sizes = _shape_arg(sizes)
        return _ops.Repeat.apply(self, reps=sizes)

    def repeat_interleave(self, repeats: int, dim=None):
        """Repeat each element ``repeats`` times along ``dim`` (flattened when dim is None)."""
        if dim is None:
            return self.flatten().repeat_interleave(repeats, 0)
        return _ops.RepeatInterleave.apply(self, repeats=int(repeats), axis=_norm_dim(dim, self.ndim))

    def split(self, split_size_or_sections, dim: int = 0):
        """Pieces of ``split_size`` along ``dim`` (the last may be smaller), or given sizes."""
        d = _norm_dim(dim, self.ndim)
        n = self.shape[d]
        if isinstance(split_size_or_sections, int):
            size = split_size_or_sections
            sizes = [min(size, n - s) for s in range(0, n, size)]
        else:
            sizes = list(split_size_or_sections)
            if sum(sizes) != n:
                raise ValueError(f"split(): sizes {sizes} do not sum to dim {d} of shape {tuple(self.shape)}")
        out, start = [], 0
        for s in sizes:
            out.append(self.narrow(d, start, s))
            start += s
        return tuple(out)

    def chunk(self, chunks: int, dim: int = 0):
        """Split into ``chunks`` nearly equal pieces along ``dim``."""
        n = self.shape[_norm_dim(dim, self.ndim)]
        return self.split(-(-n // chunks), dim)

    def narrow(self, dim: int, start: int, length: int):
        """The slice ``start:start+length`` of dim ``dim``."""
        d = _norm_dim(dim, self.ndim)
        return self[(slice(None),) * d + (slice(start, start + length),)]

    def unbind(self, dim: int = 0):
        """The slices along ``dim``, as a tuple."""
        d = _norm_dim(dim, self.ndim)
        return tuple(self[(slice(None),) * d + (i,)] for i in range(self.shape[d]))

    def tril(self, diagonal: int = 0):
        """Lower triangle of the last two dims (above ``diagonal`` zeroed)."""
        return _ops.Tril.apply(self, k=diagonal, upper=False)

    def triu(self, diagonal: int = 0):
        """Upper triangle of the last two dims (below ``diagonal`` zeroed)."""
        return _ops.Tril.apply(self, k=diagonal, upper=True)

    def flip(self, dims):
        """Reverse the order along ``dims``."""
        return _ops.Flip.apply(self, axes=_norm_dims(dims, self.ndim))

    def roll(self, shifts, dims):
        """Rotate elements by ``shifts`` along ``dims`` (NumPy's ``roll``)."""
        return _ops.Roll.apply(self, shifts=shifts, axes=dims)

    # ------------------------------------------------------------------ indexing
    def __getitem__(self, key):
        key, basic = _convert_index(key)
        return _ops.Index.apply(self, key=key, basic=basic)

    def __setitem__(self, key, value):
        if self._requires_grad and _autograd._GradMode.enabled:
            raise RuntimeError(
                "in-place assignment to a tensor that requires grad would corrupt the graph; "
                "do it inside `with axon.no_grad():` or on a detached tensor"
            )
        key, _ = _convert_index(key)
        self.data[key] = value.data if isinstance(value, Tensor) else value

    def gather(self, dim: int, index):
        """``out[..., i, ...] = self[..., index[..., i, ...], ...]`` along ``dim`` (torch's gather)."""
        idx = index.data if isinstance(index, Tensor) else np.asarray(index)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"gather(): index must be an integer tensor, got {idx.dtype}")
        return _ops.Gather.apply(self, idx, axis=_norm_dim(dim, self.ndim))

    def index_select(self, dim: int, index):
        """The entries at integer ``index`` along ``dim``."""
        idx = index.data if isinstance(index, Tensor) else np.asarray(index)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"index_select(): index must be an integer tensor, got {idx.dtype}")
        return _ops.IndexSelect.apply(self, idx, axis=_norm_dim(dim, self.ndim))

    def scatter_add(self, dim: int, index, src):
        """A copy of self with ``src`` added at ``index`` along ``dim``."""
        idx = index.data if isinstance(index, Tensor) else np.asarray(index)
        return _ops.ScatterAdd.apply(self, idx, self._operand(src), axis=_norm_dim(dim, self.ndim))

    def masked_fill(self, mask, value):
        """``value`` where ``mask`` (bool, broadcastable to self) is True; gradient 0 there."""
        m = mask.data if isinstance(mask, Tensor) else np.asarray(mask)
        if m.dtype != np.bool_:
            raise TypeError(f"masked_fill(): mask must be bool, got {m.dtype}")
        if isinstance(value, Tensor):
            value = value.item()
        return _ops.MaskedFill.apply(self, m, value=value)

    def where(self, condition, other):
        """``self`` where ``condition`` else ``other``."""
        return where(condition, self, other)

    def topk(self, k: int, dim: int = -1, largest: bool = True, sorted: bool = True):
        """The k largest (or smallest) entries along ``dim`` -> (values, indices)."""
        d = _norm_dim(dim, self.ndim)
        n = self.shape[d]
        if not 0 <= k <= n:
            raise ValueError(f"topk(): k={k} out of range for dim {d} of shape {tuple(self.shape)}")
        key = -self.data if largest else self.data
        if sorted:
            idx = np.argsort(key, axis=d, kind="stable")
            idx = np.take(idx, np.arange(k), axis=d)
        else:
            idx = np.argpartition(key, k - 1, axis=d) if k > 0 else np.zeros_like(key, dtype=np.int64)
            idx = np.take(idx, np.arange(k), axis=d)
        idx = idx.astype(np.int64)
        return ValuesIndices(self.gather(d, idx), Tensor._make(idx))

    def sort(self, dim: int = -1, descending: bool = False):
        """Sorted values and their indices along ``dim`` (stable)."""
        d = _norm_dim(dim, self.ndim)
        key = -self.data if descending else self.data
        idx = np.argsort(key, axis=d, kind="stable").astype(np.int64)
        return ValuesIndices(self.gather(d, idx), Tensor._make(idx))

    def argsort(self, dim: int = -1, descending: bool = False):
        """Indices that sort along ``dim``."""
        return self.sort(dim, descending).indices

    # ------------------------------------------------------------------ in-place (no graph)
    def _inplace_ok(self, name: str) -> None:
        if self._requires_grad and _autograd._GradMode.enabled:
            raise RuntimeError(f"{name}(): in-place op on a tensor that requires grad; wrap it in axon.no_grad()")

    def zero_(self):
        """Fill with zeros in place (outside the graph)."""
        self._inplace_ok("zero_")
        self.data[...] = 0
        return self

    def fill_(self, value):
        """Fill with ``value`` in place (outside the graph)."""
        self._inplace_ok("fill_")
        self.data[...] = value
        return self

    def copy_(self, src):
        """Copy ``src`` into self in place (outside the graph)."""
        self._inplace_ok("copy_")
        self.data[...] = src.data if isinstance(src, Tensor) else src
        return self

    def add_(self, other, alpha=1):
        """``self += alpha * other`` in place (outside the graph)."""
        self._inplace_ok("add_")
        o = other.data if isinstance(other, Tensor) else other
        self.data[...] += o * alpha if alpha != 1 else o
        return self

    def mul_(self, other):
        """``self *= other`` in place (outside the graph)."""
        self._inplace_ok("mul_")
        self.data[...] *= other.data if isinstance(other, Tensor) else other
        return self

    def normal_(self, mean=0.0, std=1.0):
        """Fill with N(mean, std^2) samples in place (outside the graph)."""
        self._inplace_ok("normal_")
        self.data[...] = _random.get_rng().normal(mean, std, size=self.shape)
        return self

    def uniform_(self, a=0.0, b=1.0):
        """Fill with U(a, b) samples in place (outside the graph)."""
        self._inplace_ok("uniform_")
        self.data[...] = _random.get_rng().uniform(a, b, size=self.shape)
        return self


def _raw(x):
    return x.data if isinstance(x, Tensor) else x


# ---------------------------------------------------------------------- free functions
def tensor(data, dtype=None, requires_grad: bool = False) -> Tensor:
    """A new tensor holding a copy of ``data`` (see the module docstring for dtype rules)."""
    arr = _to_array(data, dtype)
    if isinstance(data, (Tensor, np.ndarray)) and arr is _raw(data):
        arr = arr.copy()
    return Tensor(arr, requires_grad=requires_grad)


def as_tensor(data, dtype=None) -> Tensor:
    """Like :func:`tensor` but shares memory with an ndarray / Tensor when possible."""
    if isinstance(data, Tensor) and (dtype is None or np.dtype(dtype) == data.dtype):
        return data
    return Tensor(_to_array(data, dtype))


def matmul(a, b) -> Tensor:
    """``a @ b`` with NumPy's batch broadcasting; 1-d operands are promoted like torch/NumPy."""
    a = a if isinstance(a, Tensor) else Tensor(a)
    b = b if isinstance(b, Tensor) else Tensor(b)
    sa, sb = a.shape, b.shape
    if len(sa) >= 2 and len(sb) >= 2:
        if sa[-1] != sb[-2]:
            raise ValueError(f"matmul: shapes {tuple(sa)} and {tuple(sb)} are not aligned ({sa[-1]} != {sb[-2]})")
        return _ops.MatMul.apply(a, b)
    if not sa or not sb:
        raise ValueError(f"matmul: both arguments need at least 1 dim, got shapes {tuple(sa)} and {tuple(sb)}")
    if len(sa) == 1 and len(sb) == 1:
        return (a.unsqueeze(0) @ b.unsqueeze(1)).reshape(())
    if len(sa) == 1:
        return (a.unsqueeze(0) @ b).squeeze(-2)
    return (a @ b.unsqueeze(1)).squeeze(-1)


def where(condition, input, other) -> Tensor:
    """``input`` where ``condition`` else ``other`` (broadcasting; grads flow to both branches)."""
    cond = condition.data if isinstance(condition, Tensor) else np.asarray(condition)
    if cond.dtype != np.bool_:
        cond = cond.astype(bool)
    if not isinstance(input, Tensor) and not isinstance(other, Tensor):
        input = Tensor(input)
    if isinstance(input, Tensor):
        other = input._operand(other)
    else:
        input = other._operand(input)
    return _ops.Where.apply(cond, input, other)
