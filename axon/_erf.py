"""``erf`` as a NumPy ufunc (NumPy has none; scipy is not a dependency).

A Numba-compiled ufunc around ``math.erf``: correctly rounded in float64, float32 in gives
float32 out. With ``NUMBA_DISABLE_JIT=1`` it is the same function run by the interpreter.
"""

from __future__ import annotations

import math

from numba import vectorize


@vectorize(["float32(float32)", "float64(float64)"], cache=True)
def erf(x):  # pragma: no cover - compiled
    """The error function, elementwise."""
    return math.erf(x)
