"""``erf`` as a NumPy-style elementwise function (NumPy has none; scipy is not a dependency).

* float64: a Numba-compiled ufunc around ``math.erf`` — correctly rounded, so float64
  results (and gradient checks) match the textbook definition.
* float32 / float16: Abramowitz & Stegun 7.1.26, ``1 - (a1 t + ... + a5 t^5) exp(-x^2)`` with
  ``t = 1 / (1 + p |x|)``, evaluated with vectorised NumPy ufuncs. Its absolute error is below
  1.5e-7 — about one float32 ulp of 1.0, the precision float32 ``erf`` has anyway — and it is
  several times faster than calling libm's ``erf`` per element (benchmarks/bench_autograd.py
  runs exact GELU in every transformer block).

With ``NUMBA_DISABLE_JIT=1`` the float64 ufunc runs in the interpreter (slow but exact).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["erf", "erf_exact", "erf_float32"]

_compiled = {}


def erf_exact(x: np.ndarray) -> np.ndarray:
    """The error function, elementwise, via libm (correctly rounded in float64).

    The Numba ufunc is built on first use, so ``import axon`` does not pay for importing Numba.
    """
    fn = _compiled.get("erf")
    if fn is None:
        from numba import vectorize

        @vectorize(["float32(float32)", "float64(float64)"], cache=True)
        def _erf(v):  # pragma: no cover - compiled
            return math.erf(v)

        fn = _compiled["erf"] = _erf
    return fn(x)


_P = 0.3275911
_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)  # a1 .. a5


def erf_float32(x: np.ndarray) -> np.ndarray:
    """A&S 7.1.26 in float32 (absolute error < 1.5e-7 + float32 rounding)."""
    x = np.asarray(x, dtype=np.float32)
    f = np.float32
    a = np.abs(x)
    t = a * f(_P)
    t += 1
    np.reciprocal(t, out=t)  # t = 1 / (1 + p|x|)
    poly = t * f(_A[4])
    for c in reversed(_A[:4]):  # Horner: ((a5 t + a4) t + a3) t + a2) t + a1) t
        poly += f(c)
        poly *= t
    np.square(a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)  # exp(-x^2)
    poly *= a
    np.subtract(f(1), poly, out=poly)
    np.copysign(poly, x, out=poly)
    return poly


def erf(x: np.ndarray) -> np.ndarray:
    """erf(x) in x's floating dtype (float16 / float32 via :func:`erf_float32`, float64 exact)."""
    if x.dtype == np.float64:
        return erf_exact(x)
    out = erf_float32(x)
    return out if x.dtype == np.float32 else out.astype(x.dtype)
