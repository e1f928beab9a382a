"""Test any kernel (or array op) against its reference: hypothesis strategies and `check_kernel`.

The one home of the project's array strategies (after minitorch's ``tensor_strategies.py``): a
kernel or an op must give its reference's answer whatever the memory layout of its inputs, so
every array strategy here can hand out the same logical array as

* ``contiguous``  a fresh C-ordered array,
* ``transposed``  built with its axes in another order and then permuted back (2-D: an F-ordered view),
* ``sliced``      every other element of an array twice as long on each axis (strided view),
* ``broadcast``   a size-1 axis stretched by ``np.broadcast_to`` (stride 0, read-only).

Array contents come either from a NumPy generator seeded by hypothesis (``values="uniform"``, the
default: fast for the few-thousand-element arrays attention needs; hypothesis still shrinks
shapes and options) or element by element from hypothesis (``values="hypothesis"``: slower, but
shrinks values and reaches 0 and the bounds; what small op tests want). Usage::

    from hypothesis import given, settings
    from axon_kernels.testing import attention_inputs, check_kernel
    import axon_kernels as kernels

    @settings(max_examples=20, deadline=None)
    @given(attention_inputs())
    def test_my_attention(args):
        check_kernel(my_attention, kernels.flash_attention_ref, **args.kwargs, reduction=args.reduction)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

__all__ = [
    "LAYOUTS",
    "VALUES",
    "KernelArgs",
    "float_dtypes",
    "layouts",
    "shapes",
    "arrays",
    "array",
    "array_and_dim",
    "broadcastable_pair",
    "matmul_inputs",
    "attention_inputs",
    "scan_inputs",
    "ternary_inputs",
    "default_tolerance",
    "check_kernel",
]

LAYOUTS = ("contiguous", "transposed", "sliced", "broadcast")


@dataclass
class KernelArgs:
    """Arguments drawn for a kernel call plus the reduction length used to scale tolerances."""

    kwargs: dict = field(default_factory=dict)
    reduction: int = 1

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        parts = [f"{k}={v.dtype}{list(v.shape)}" if isinstance(v, np.ndarray) else f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"KernelArgs({', '.join(parts)}, reduction={self.reduction})"


def float_dtypes():
    """float32 or float64."""
    return st.sampled_from([np.dtype(np.float32), np.dtype(np.float64)])


def layouts():
    """One of LAYOUTS."""
    return st.sampled_from(LAYOUTS)


def shapes(min_dims: int = 1, max_dims: int = 3, min_side: int = 1, max_side: int = 4):
    """Tuples of ints: ndim in [min_dims, max_dims], each side in [min_side, max_side]."""
    return st.lists(st.integers(min_side, max_side), min_size=min_dims, max_size=max_dims).map(tuple)


VALUES = ("uniform", "hypothesis")


@st.composite
def arrays(draw, shape, dtype=np.float32, layout: str | None = None, lo: float = -1.0, hi: float = 1.0,
           layouts: tuple[str, ...] = LAYOUTS, values: str = "uniform"):
    """An array of logical `shape` and `dtype` in a given `layout` (or one drawn from `layouts`),
    with contents in [lo, hi] drawn as `values` says ("uniform" or "hypothesis", see above).

    A ``broadcast`` layout needs an axis longer than 1; without one the array is contiguous.
    """
    shape = tuple(int(s) for s in shape)
    if layout is None:
        layout = draw(st.sampled_from(tuple(layouts)))
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if values not in VALUES:
        raise ValueError(f"values must be one of {VALUES}, got {values!r}")
    if values == "uniform":
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

        def fill(stored):                                  # float64 values, cast to dtype at the end
            return rng.uniform(lo, hi, size=stored)
    else:
        elements = st.floats(lo, hi, allow_nan=False, allow_infinity=False, width=64)

        def fill(stored):
            return draw(hnp.arrays(np.float64, stored, elements=elements))
    if layout == "transposed" and len(shape) >= 2:
        # the stored array's axes in another order (not the identity), permuted back to `shape`
        perm = draw(st.permutations(range(len(shape))).filter(lambda p: list(p) != sorted(p)))
        stored = tuple(shape[p] for p in perm)
        return fill(stored).astype(dtype).transpose(np.argsort(perm))
    if layout == "sliced" and len(shape) >= 1:
        big = fill(tuple(2 * s for s in shape)).astype(dtype)
        return big[tuple(slice(None, None, 2) for _ in shape)]
    if layout == "broadcast" and any(s > 1 for s in shape):
        axis = draw(st.sampled_from([i for i, s in enumerate(shape) if s > 1]))
        small = shape[:axis] + (1,) + shape[axis + 1 :]
        return np.broadcast_to(fill(small).astype(dtype), shape)
    return fill(shape).astype(dtype)


# --------------------------------------------------------------------------------------------
# arrays of random small shapes, for element-wise / reduction / broadcasting ops
# (float64 in [-3, 3], values drawn by hypothesis)
# --------------------------------------------------------------------------------------------


@st.composite
def array(draw, dtype=np.float64, lo: float = -3.0, hi: float = 3.0, min_dims: int = 1, max_dims: int = 3,
          max_side: int = 4):
    """An array of a random small shape and a random layout."""
    shape = draw(shapes(min_dims=min_dims, max_dims=max_dims, max_side=max_side))
    return draw(arrays(shape, dtype, lo=lo, hi=hi, values="hypothesis"))


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
    a = draw(arrays(shape, dtype, lo=lo, hi=hi, values="hypothesis"))
    b = draw(arrays(other, dtype, lo=lo, hi=hi, values="hypothesis"))
    return (a, b) if draw(st.booleans()) else (b, a)


@st.composite
def array_and_dim(draw, dtype=np.float64, lo: float = -3.0, hi: float = 3.0, max_dims: int = 3):
    """An array and a valid dim of it (possibly negative)."""
    a = draw(array(dtype=dtype, lo=lo, hi=hi, max_dims=max_dims))
    dim = draw(st.integers(-a.ndim, a.ndim - 1))
    return a, dim


@st.composite
def matmul_inputs(draw, max_side: int = 12, max_batch_dims: int = 2, dtype=None, lo: float = -1.0, hi: float = 1.0,
                  values: str = "uniform"):
    """`a` [..., M, K] and `b` [..., K, N] with broadcastable batch dims; reduction = K.

    `dtype` None draws float32 or float64."""
    dtype = draw(float_dtypes()) if dtype is None else dtype
    m, k, n = (draw(st.integers(1, max_side)) for _ in range(3))
    batch = draw(shapes(0, max_batch_dims, 1, 3))
    batch_b = tuple(s if draw(st.booleans()) else 1 for s in batch)[draw(st.integers(0, len(batch))):]
    a = draw(arrays(batch + (m, k), dtype, lo=lo, hi=hi, values=values))
    b = draw(arrays(batch_b + (k, n), dtype, lo=lo, hi=hi, values=values))
    return KernelArgs(dict(a=a, b=b), reduction=k)


@st.composite
def attention_inputs(draw, max_len: int = 40, max_dim: int = 16, max_heads: int = 4, max_block: int = 32):
    """Arguments of `flash_attention`: GQA head counts, Tq <= Tk, causal / window / scale / tiles.

    reduction = Tk + D (the longest sums: a softmax row and a dot product).
    """
    dtype = draw(float_dtypes())
    b = draw(st.integers(1, 2))
    hkv = draw(st.integers(1, max_heads))
    group = draw(st.integers(1, max(1, max_heads // hkv)))
    tk = draw(st.integers(1, max_len))
    tq = draw(st.integers(1, tk))
    d = draw(st.integers(1, max_dim))
    q = draw(arrays((b, hkv * group, tq, d), dtype, lo=-2, hi=2))
    k = draw(arrays((b, hkv, tk, d), dtype, lo=-2, hi=2))
    v = draw(arrays((b, hkv, tk, d), dtype))
    kwargs = dict(
        q=q, k=k, v=v,
        causal=draw(st.booleans()),
        window=draw(st.one_of(st.none(), st.integers(1, tk + 2))),
        scale=draw(st.one_of(st.none(), st.floats(0.05, 2.0))),
        block_q=draw(st.integers(1, max_block)),
        block_kv=draw(st.integers(1, max_block)),
    )
    return KernelArgs(kwargs, reduction=tk + d)


@st.composite
def scan_inputs(draw, max_len: int = 12, max_channels: int = 70, max_state: int = 6):
    """Arguments of `selective_scan` (each optional input present or not); reduction = l * n.

    A is negative and delta positive (after the optional softplus/bias) as in Mamba, so the
    state decays instead of overflowing.
    """
    dtype = draw(float_dtypes())
    b = draw(st.integers(1, 2))
    d = draw(st.integers(1, max_channels))
    l = draw(st.integers(1, max_len))
    n = draw(st.integers(1, max_state))
    softplus = draw(st.booleans())
    lo = -2.0 if softplus else 0.0  # raw delta may be negative only when softplus makes it positive
    kwargs = dict(
        u=draw(arrays((b, d, l), dtype)),
        delta=draw(arrays((b, d, l), dtype, lo=lo, hi=1.0)),
        A=-draw(arrays((d, n), dtype, lo=0.1, hi=2.0)),
        B=draw(arrays((b, n, l), dtype)),
        C=draw(arrays((b, n, l), dtype)),
        D=draw(st.one_of(st.none(), arrays((d,), dtype))),
        z=draw(st.one_of(st.none(), arrays((b, d, l), dtype, lo=-3, hi=3))),
        delta_bias=draw(st.one_of(st.none(), arrays((d,), dtype, lo=0.0 if not softplus else -1.0, hi=0.5))),
        delta_softplus=softplus,
    )
    return KernelArgs(kwargs, reduction=l * n)


@st.composite
def ternary_inputs(draw, max_out: int = 24, max_in: int = 40):
    """`W` [out, in] float and `x` [..., in] float (any layout) for the ternary kernels; reduction = in."""
    n_out = draw(st.integers(1, max_out))
    n_in = draw(st.integers(1, max_in))
    lead = draw(shapes(0, 2, 1, 3))
    w = draw(arrays((n_out, n_in), draw(float_dtypes())))
    x = draw(arrays(lead + (n_in,), draw(float_dtypes()), lo=-4, hi=4))
    return KernelArgs(dict(W=w, x=x), reduction=n_in)


# --------------------------------------------------------------------------------------------
# comparing a kernel with its reference
# --------------------------------------------------------------------------------------------


def default_tolerance(dtype, reduction: int = 1, factor: float = 8.0) -> float:
    """`factor * eps(dtype) * reduction`: the rounding a length-`reduction` sum may accumulate."""
    return float(factor * np.finfo(dtype).eps * max(1, int(reduction)))


def _upcast(x, dtype):
    if isinstance(x, np.ndarray) and x.dtype.kind == "f":
        return x.astype(dtype)
    return x


def _flatten(out, path="out"):
    if isinstance(out, (tuple, list)):
        items = []
        for i, o in enumerate(out):
            items.extend(_flatten(o, f"{path}[{i}]"))
        return items
    return [(path, out)]


def check_kernel(fast, ref, *args, reduction: int = 1, rtol: float | None = None, atol: float | None = None,
                 tol_factor: float = 8.0, ref_dtype=np.float64, **kwargs):
    """Assert that `fast(*args, **kwargs)` equals `ref` run on float64 copies of the same inputs.

    * every floating ndarray argument is upcast to `ref_dtype` for the reference, so the
      reference is (nearly) exact and the comparison measures the kernel's own rounding;
    * the tolerance (both rtol and atol unless given) is `default_tolerance(dtype, reduction,
      tol_factor)` with `dtype` the fast output's dtype;
    * outputs may be an array, a scalar, None or a (nested) tuple of those: structure, shapes
      and None-ness must match, NaNs must sit at the same places;
    * `fast` must not modify its inputs.

    Returns the fast outputs. Raises AssertionError naming the mismatching output.
    """
    snapshot = [np.array(a, copy=True) for a in list(args) + list(kwargs.values()) if isinstance(a, np.ndarray)]
    out = fast(*args, **kwargs)
    after = [a for a in list(args) + list(kwargs.values()) if isinstance(a, np.ndarray)]
    for before, now in zip(snapshot, after):
        np.testing.assert_array_equal(now, before, err_msg=f"{getattr(fast, '__name__', fast)} modified an input")
    expected = ref(*(_upcast(a, ref_dtype) for a in args), **{k: _upcast(v, ref_dtype) for k, v in kwargs.items()})
    got_items, want_items = _flatten(out), _flatten(expected)
    if len(got_items) != len(want_items):
        raise AssertionError(f"fast returned {len(got_items)} outputs, reference {len(want_items)}")
    for (path, got), (_, want) in zip(got_items, want_items):
        if got is None or want is None:
            if not (got is None and want is None):
                raise AssertionError(f"{path}: fast gave {type(got).__name__}, reference {type(want).__name__}")
            continue
        got_arr, want_arr = np.asarray(got), np.asarray(want)
        if got_arr.shape != want_arr.shape:
            raise AssertionError(f"{path}: fast shape {got_arr.shape} != reference shape {want_arr.shape}")
        dtype = got_arr.dtype if got_arr.dtype.kind == "f" else np.dtype(np.float64)
        tol = default_tolerance(dtype, reduction, tol_factor)
        np.testing.assert_allclose(
            got_arr, want_arr,
            rtol=tol if rtol is None else rtol, atol=tol if atol is None else atol, equal_nan=True,
            err_msg=f"{path} of {getattr(fast, '__name__', fast)} differs from {getattr(ref, '__name__', ref)}",
        )
    return out
