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

The *packed* pair takes gate and up side by side in one array, ``h [N, 2F] = [gate | up]``, as
one product of the stacked weights ``x [Wg; Wu]^T`` gives them (``axon.nn._fused.GatedLinear``,
LLaMA's MLP): `swiglu_packed_forward(h)` -> ``[N, F]`` (optionally written over ``h[:, :F]``),
`swiglu_packed_backward(g, h)` -> ``[d gate | d up]`` ``[N, 2F]``, the gradient of that one
product. Same formulas, one row at a time.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._jit import CONTRACT, fast_exp, jit_disabled

__all__ = ["swiglu_forward", "swiglu_forward_ref", "swiglu_forward_nb",
           "swiglu_backward", "swiglu_backward_ref", "swiglu_backward_nb",
           "swiglu_packed_forward", "swiglu_packed_forward_ref", "swiglu_packed_forward_nb",
           "swiglu_packed_backward", "swiglu_packed_backward_ref", "swiglu_packed_backward_nb"]


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


# ------------------------------------------------------------------------------ packed [gate | up]


def _halves(h):
    f = h.shape[-1] // 2
    return h[..., :f], h[..., f:]


def swiglu_packed_forward_ref(h, out=None):
    """silu(gate) * up for ``h [..., 2F] = [gate | up]`` -> ``[..., F]`` (into ``out`` when given,
    which may be ``h[..., :F]`` itself)."""
    y = swiglu_forward_ref(*_halves(h))
    if out is None:
        return y
    out[...] = y
    return out


@njit(cache=True, nogil=True, fastmath=CONTRACT, error_model="numpy")
def swiglu_packed_forward_nb(h, out):
    """The Numba version of `swiglu_packed_forward_ref`: h [N, 2F] C-contiguous, out [N, F] (a new
    array or the view h[:, :F]: each element is read before it is written)."""
    n, f = out.shape
    one = np.ones(1, h.dtype)[0]
    for r in range(n):
        gate, up, y = h[r, :f], h[r, f:], out[r]
        for j in range(f):
            a = gate[j]
            s = one / (one + fast_exp(-a))
            y[j] = a * s * up[j]
    return out


def _packed_ok(h, *others) -> bool:
    return (not jit_disabled() and h.ndim >= 1 and h.shape[-1] % 2 == 0 and h.size > 0 and h.flags.c_contiguous
            and h.dtype in (np.float32, np.float64)
            and all(o.flags.c_contiguous and o.dtype == h.dtype for o in others))


def swiglu_packed_forward(h, out=None):
    """silu(gate) * up of ``h [..., 2F] = [gate | up]`` -> ``[..., F]`` (module doc); ``out``
    (optional, ``[..., F]``) may be the view ``h[..., :F]`` (the result then overwrites the gate)."""
    if h.shape[-1] % 2:
        raise ValueError(f"swiglu_packed_forward: the last dim holds [gate | up], so it must be even, got {h.shape}")
    f = h.shape[-1] // 2
    if out is None:
        out = np.empty(h.shape[:-1] + (f,), h.dtype)
    if not _packed_ok(h) or out.dtype != h.dtype:
        return swiglu_packed_forward_ref(h, out)
    swiglu_packed_forward_nb(h.reshape(-1, 2 * f), out.reshape(-1, f))  # a reshape of the view h[..., :F] stays a view
    return out


def swiglu_packed_backward_ref(g, h):
    """``[d gate | d up]`` ``[..., 2F]`` of silu(gate) * up given the upstream gradient g ``[..., F]``."""
    return np.concatenate(swiglu_backward_ref(g, *_halves(h)), axis=-1)


@njit(cache=True, nogil=True, fastmath=CONTRACT, error_model="numpy")
def swiglu_packed_backward_nb(g, h):
    """The Numba version of `swiglu_packed_backward_ref` (g [N, F], h [N, 2F], C-contiguous)."""
    n, f = g.shape
    dh = np.empty_like(h)
    one = np.ones(1, h.dtype)[0]
    for r in range(n):
        gr, gate, up, dgate, dup = g[r], h[r, :f], h[r, f:], dh[r, :f], dh[r, f:]
        for j in range(f):
            a = gate[j]
            s = one / (one + fast_exp(-a))
            gi = gr[j]
            dup[j] = gi * a * s
            dgate[j] = gi * up[j] * s * (one + a * (one - s))
    return dh


def swiglu_packed_backward(g, h):
    """``[d gate | d up]`` of silu(gate) * up for ``h = [gate | up]`` (module doc): g ``[..., F]``,
    h ``[..., 2F]`` -> ``[..., 2F]``."""
    f = h.shape[-1] // 2
    if h.shape[-1] % 2 or g.shape != h.shape[:-1] + (f,):
        raise ValueError(f"swiglu_packed_backward: g {g.shape} must be h {h.shape} with half its last dim")
    if not _packed_ok(h, g):
        return swiglu_packed_backward_ref(g, h)
    return swiglu_packed_backward_nb(g.reshape(-1, f), h.reshape(-1, 2 * f)).reshape(h.shape)
