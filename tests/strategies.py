"""Hypothesis strategies shared by the test suite.

The point of these (after minitorch's ``tensor_strategies.py``): an op must give the same
answer whatever the memory layout of its input, so the arrays come out contiguous,
transposed, strided (sliced with a step) or broadcast (a stride-0 view), at random.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

LAYOUTS = ("contiguous", "transposed", "sliced", "broadcast")


def shapes(min_dims: int = 1, max_dims: int = 3, min_side: int = 1, max_side: int = 4):
    """Small shapes (tests must be fast)."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def _elements(lo: float, hi: float):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def laid_out(draw, shape, dtype=np.float64, lo: float = -3.0, hi: float = 3.0, layouts=LAYOUTS):
    """An array of ``shape`` whose memory layout is drawn from ``layouts``.

    * contiguous: a fresh C-ordered array;
    * transposed: built with its axes in a random order, then permuted back (a strided view);
    * sliced: every other element of a twice-as-long array along each axis (strided view);
    * broadcast: a size-1 axis stretched with ``np.broadcast_to`` (stride 0, read-only) —
      only when the shape has an axis to stretch; otherwise contiguous.
    """
    shape = tuple(shape)
    layout = draw(st.sampled_from(layouts))
    els = _elements(lo, hi)
    if layout == "transposed" and len(shape) >= 2:
        perm = draw(st.permutations(range(len(shape))))  # axes of the stored array, in memory order
        stored = tuple(shape[p] for p in perm)
        base = draw(hnp.arrays(np.float64, stored, elements=els))
        return base.astype(dtype).transpose(np.argsort(perm))  # a permuted view with the wanted shape
    if layout == "sliced" and len(shape) >= 1:
        big = tuple(2 * s for s in shape)
        base = draw(hnp.arrays(np.float64, big, elements=els))
        return base.astype(dtype)[tuple(slice(None, None, 2) for _ in shape)]
    if layout == "broadcast" and any(s > 1 for s in shape):
        axis = draw(st.sampled_from([i for i, s in enumerate(shape) if s > 1]))
        small = shape[:axis] + (1,) + shape[axis + 1 :]
        base = draw(hnp.arrays(np.float64, small, elements=els))
        return np.broadcast_to(base.astype(dtype), shape)
    return draw(hnp.arrays(np.float64, shape, elements=els)).astype(dtype)


@st.composite
def array(draw, dtype=np.float64, lo: float = -3.0, hi: float = 3.0, min_dims: int = 1, max_dims: int = 3,
          max_side: int = 4):
    """An array of a random small shape and a random layout."""
    shape = draw(shapes(min_dims=min_dims, max_dims=max_dims, max_side=max_side))
    return draw(laid_out(shape, dtype=dtype, lo=lo, hi=hi))


@st.composite
def broadcastable_pair(draw, dtype=np.float64, lo: float = -3.0, hi: float = 3.0, max_dims: int = 3):
    """Two arrays whose shapes broadcast against each other (one may have fewer dims or size-1 axes)."""
    shape = draw(shapes(min_dims=1, max_dims=max_dims))
    other = list(shape)
    for i in range(len(other)):
        if draw(st.booleans()):
            other[i] = 1
    drop = draw(st.integers(0, len(other) - 1))
    other = tuple(other[drop:])
    a = draw(laid_out(shape, dtype=dtype, lo=lo, hi=hi))
    b = draw(laid_out(other, dtype=dtype, lo=lo, hi=hi))
    return (a, b) if draw(st.booleans()) else (b, a)


@st.composite
def array_and_dim(draw, dtype=np.float64, lo: float = -3.0, hi: float = 3.0, max_dims: int = 3):
    """An array and a valid dim of it (possibly negative)."""
    a = draw(array(dtype=dtype, lo=lo, hi=hi, max_dims=max_dims))
    dim = draw(st.integers(-a.ndim, a.ndim - 1))
    return a, dim


@st.composite
def matmul_pair(draw, dtype=np.float64):
    """Operands for a batched matmul: [*batch_a, M, K] @ [*batch_b, K, N] with broadcastable batches."""
    m, k, n = (draw(st.integers(1, 4)) for _ in range(3))
    batch = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3))
    batch_b = tuple(s if draw(st.booleans()) else 1 for s in batch)[draw(st.integers(0, len(batch))):]
    a = draw(laid_out(batch + (m, k), dtype=dtype))
    b = draw(laid_out(batch_b + (k, n), dtype=dtype))
    return a, b
