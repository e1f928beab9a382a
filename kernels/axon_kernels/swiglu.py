"""SwiGLU, ``silu(gate) * up``, for training: the forward and the backward, one pass each.

With s = sigmoid(gate):

    y = gate s up
    d/dgate = g up s (1 + gate (1 - s)),   d/dup = g gate s

`swiglu_forward(gate, up)` returns y; `swiglu_backward(g, gate, up)` returns (d gate, d up),
recomputing s (so nothing but the two inputs is kept between the passes). The `_ref` versions
are the NumPy definitions (s as ``0.5 (1 + tanh(gate / 2))``, several [N, F] temporaries); the
Numba versions compute s = 1 / (1 + exp(-gate)) with `fast_exp` (< 1 ulp in float32) in the
same loop, serially over a flat view (a [1024, 688] pair takes a fraction of a millisecond).
NaN and Inf give what the reference gives (gate = -Inf: NaN, gate * 0).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._jit import CONTRACT, fast_exp, jit_disabled

__all__ = ["swiglu_forward", "swiglu_forward_ref", "swiglu_forward_nb",
           "swiglu_backward", "swiglu_backward_ref", "swiglu_backward_nb"]


def _sigmoid_ref(a):
    out = np.tanh(a * a.dtype.type(0.5))
    out += 1
    out *= 0.5
    return out


def swiglu_forward_ref(gate, up):
    """silu(gate) * up, elementwise (same shapes)."""
    y = gate * _sigmoid_ref(gate)
    y *= up
    return y


@njit(cache=True, nogil=True, fastmath=CONTRACT, error_model="numpy")
def swiglu_forward_nb(gate, up):
    """The Numba version of `swiglu_forward_ref` (1-d C-contiguous views of the same length)."""
    y = np.empty_like(gate)
    one = np.ones(1, gate.dtype)[0]
    for i in range(gate.size):
        a = gate[i]
        s = one / (one + fast_exp(-a))
        y[i] = a * s * up[i]
    return y


def _flat_ok(*arrays) -> bool:
    first = arrays[0]
    return (not jit_disabled() and first.size > 0
            and all(a.flags.c_contiguous and a.shape == first.shape and a.dtype == first.dtype for a in arrays)
            and first.dtype in (np.float32, np.float64))


def swiglu_forward(gate, up):
    """silu(gate) * up (module doc); any shape, gate and up alike."""
    if not _flat_ok(gate, up):
        return swiglu_forward_ref(gate, up)
    return swiglu_forward_nb(gate.reshape(-1), up.reshape(-1)).reshape(gate.shape)


def swiglu_backward_ref(g, gate, up):
    """(d gate, d up) of silu(gate) * up given the upstream gradient g."""
    s = _sigmoid_ref(gate)
    gu = gate * s
    gu *= g
    gg = 1 - s
    gg *= gate
    gg += 1
    gg *= s
    gg *= up
    gg *= g
    return gg, gu


@njit(cache=True, nogil=True, fastmath=CONTRACT, error_model="numpy")
def swiglu_backward_nb(g, gate, up):
    """The Numba version of `swiglu_backward_ref` (1-d C-contiguous views of the same length)."""
    gg = np.empty_like(gate)
    gu = np.empty_like(gate)
    one = np.ones(1, gate.dtype)[0]
    for i in range(gate.size):
        a = gate[i]
        s = one / (one + fast_exp(-a))
        gi = g[i]
        gu[i] = gi * a * s
        gg[i] = gi * up[i] * s * (one + a * (one - s))
    return gg, gu


def swiglu_backward(g, gate, up):
    """(d gate, d up) of silu(gate) * up (module doc); g, gate and up alike."""
    if not _flat_ok(g, gate, up):
        return swiglu_backward_ref(g, gate, up)
    gg, gu = swiglu_backward_nb(g.reshape(-1), gate.reshape(-1), up.reshape(-1))
    return gg.reshape(gate.shape), gu.reshape(gate.shape)
