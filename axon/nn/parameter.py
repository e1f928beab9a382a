"""``Parameter``: a leaf tensor that a Module owns — and that may not exist yet.

A lazy parameter knows its shape, dtype and initialiser but holds no array until it is
first used (``p.data``), loaded (``module.load_state_dict``) or ``module.materialize()`` is
called. ``p.shape``, ``p.dtype`` and ``p.numel()`` never allocate, so building an 8B-parameter
model costs kilobytes.
"""

from __future__ import annotations

import numpy as np

from ..random import get_rng
from ..tensor import Tensor, _to_array

__all__ = ["Parameter", "Buffer"]


def _zeros_init(arr: np.ndarray, rng) -> None:
    arr[...] = 0


class Parameter(Tensor):
    """A trainable leaf tensor (``requires_grad=True`` by default).

    ``Parameter(array_or_tensor)`` wraps data now; ``Parameter.lazy(shape, init, dtype)``
    defers allocation: ``init(arr, rng)`` fills a freshly allocated array in place.
    """

    __slots__ = ("_shape", "_dtype", "_init")

    def __init__(self, data=None, requires_grad: bool = True):
        if data is None:
            data = np.zeros((0,), dtype=np.float32)
        arr = _to_array(data)
        if isinstance(data, (list, tuple, float, int)):
            arr = arr.astype(np.float32) if arr.dtype.kind != "f" else arr
        self._data = arr
        self._shape = arr.shape
        self._dtype = arr.dtype
        self._init = None
        self._requires_grad = False
        self.grad = None
        self._ctx = None
        self.requires_grad = requires_grad

    @classmethod
    def lazy(cls, shape, init=_zeros_init, dtype=np.float32, requires_grad: bool = True) -> "Parameter":
        """A parameter of ``shape`` whose array is created by ``init(arr, rng)`` on first use."""
        p = object.__new__(cls)
        p._data = None
        p._shape = tuple(int(s) for s in shape)
        p._dtype = np.dtype(dtype)
        p._init = init
        p.grad = None
        p._ctx = None
        p._requires_grad = False
        p.requires_grad = requires_grad
        return p

    # -------------------------------------------------------------- laziness
    @property
    def is_materialized(self) -> bool:
        """True once the array exists."""
        return self._data is not None

    def materialize(self) -> "Parameter":
        """Allocate and initialise the array now (a no-op when it exists)."""
        if self._data is None:
            arr = np.empty(self._shape, dtype=self._dtype)
            self._init(arr, get_rng())
            self._data = arr
        return self

    def set_init(self, init) -> "Parameter":
        """Replace the initialiser; an existing array is re-initialised in place."""
        self._init = init
        if self._data is not None:
            init(self._data, get_rng())
        return self

    @property
    def data(self) -> np.ndarray:
        """The array, allocated and initialised on first access."""
        if self._data is None:
            self.materialize()
        return self._data

    @data.setter
    def data(self, value) -> None:
        """Replace the array (the parameter's shape and dtype follow it)."""
        arr = _to_array(value)
        self._data = arr
        self._shape = arr.shape
        self._dtype = arr.dtype

    @property
    def shape(self) -> tuple:
        """The shape (never allocates)."""
        return self._shape if self._data is None else self._data.shape

    @property
    def dtype(self) -> np.dtype:
        """The dtype (never allocates)."""
        return self._dtype if self._data is None else self._data.dtype

    def cast_(self, dtype) -> "Parameter":
        """Change the dtype in place (lazily if not yet materialised); the grad is dropped."""
        dtype = np.dtype(dtype)
        if self._data is None:
            self._dtype = dtype
        elif self._data.dtype != dtype:
            self._data = self._data.astype(dtype)
        self._dtype = dtype
        if dtype.kind != "f":
            self._requires_grad = False
        self.grad = None
        return self

    def __repr__(self) -> str:
        if self._data is None:
            return f"Parameter(shape={self._shape}, dtype={self._dtype}, lazy)"
        return "Parameter containing:\n" + Tensor.__repr__(self)

    def __reduce_ex__(self, protocol):
        return (Parameter, (self.data, self._requires_grad))

    def __deepcopy__(self, memo):
        if self._data is None:  # stays lazy: same spec, same initialiser
            return Parameter.lazy(self._shape, self._init, self._dtype, self._requires_grad)
        p = Parameter(self._data.copy(), self._requires_grad)
        if self.grad is not None:
            p.grad = Tensor._make(self.grad.data.copy())
        return p


class Buffer(Tensor):
    """Marker type: ``module.x = Buffer(arr)`` registers a (persistent) buffer, as torch 2.5+."""

    __slots__ = ("persistent",)

    def __init__(self, data, persistent: bool = True):
        super().__init__(data)
        self.persistent = persistent
