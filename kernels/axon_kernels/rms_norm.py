"""RMSNorm over the last dim for training: the forward and the backward, each one pass per row.

For a row x (D values), weight w and eps:

    rstd = 1 / sqrt(mean(x^2) + eps),   xhat = x rstd,   y = xhat w
    d/dx = rstd (gxhat - xhat mean(gxhat xhat)),  gxhat = g w;   d/dw = sum over rows of g xhat

`rms_norm_forward(x, w, eps)` returns (y [N, D], rstd [N]); `rms_norm_backward(g, x, rstd, w)`
returns (gx [N, D], gw [D]). Only x and rstd are kept between the two (not xhat). The `_ref`
versions are the NumPy definitions, with their [N, D] temporaries; the Numba versions read each
row twice and write only the results, serially (a [1024, 256] norm takes a fraction of a
millisecond; a parallel region would cost more than it saves on a shared machine). Row sums
accumulate in float64, reassociated (`_jit.REASSOC`) so that they vectorise: forward 0.29 ->
0.04 ms, backward 0.24 -> 0.08 ms at [1024, 256] float32 on one core here. NaN or Inf in a row propagates to that row, as in the reference.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._jit import REASSOC, jit_disabled

__all__ = ["rms_norm_forward", "rms_norm_forward_ref", "rms_norm_forward_nb",
           "rms_norm_backward", "rms_norm_backward_ref", "rms_norm_backward_nb"]


def rms_norm_forward_ref(x, w, eps):
    """(x / sqrt(mean(x^2, -1) + eps) * w [N, D], rstd [N]) for x [N, D], w [D]."""
    rstd = 1.0 / np.sqrt(np.mean(x * x, axis=-1) + x.dtype.type(eps))  # [N]
    return (x * rstd[:, None]) * w, rstd.astype(x.dtype)


@njit(cache=True, nogil=True, fastmath=REASSOC, error_model="numpy")
def rms_norm_forward_nb(x, w, eps):
    """The Numba version of `rms_norm_forward_ref` (C-contiguous x)."""
    n, d = x.shape
    y = np.empty_like(x)
    rstd = np.empty(n, x.dtype)
    for i in range(n):
        row = x[i]
        acc = 0.0
        for j in range(d):
            acc += np.float64(row[j]) * np.float64(row[j])
        rstd[i] = 1.0 / np.sqrt(acc / d + eps)
        r = rstd[i]  # in x's dtype
        out = y[i]
        for j in range(d):
            out[j] = (row[j] * r) * w[j]
    return y, rstd


def rms_norm_forward(x, w, eps):
    """(y [N, D], rstd [N]) of RMSNorm over the rows of x [N, D] with weight w [D] (module doc)."""
    if jit_disabled() or not x.flags.c_contiguous or x.shape[1] == 0 or w.dtype != x.dtype:
        return rms_norm_forward_ref(x, w, eps)
    return rms_norm_forward_nb(x, w, float(eps))


def rms_norm_backward_ref(g, x, rstd, w):
    """(gx [N, D], gw [D]) of RMSNorm given the upstream gradient g [N, D] (module doc)."""
    xhat = x * rstd[:, None]  # [N, D]
    gw = (g * xhat).sum(axis=0)
    gxhat = g * w
    m = np.mean(gxhat * xhat, axis=-1, keepdims=True)  # [N, 1]
    gx = gxhat - xhat * m
    gx *= rstd[:, None]
    return gx, gw.astype(x.dtype)


@njit(cache=True, nogil=True, fastmath=REASSOC, error_model="numpy")
def rms_norm_backward_nb(g, x, rstd, w):
    """The Numba version of `rms_norm_backward_ref` (C-contiguous g and x)."""
    n, d = x.shape
    gx = np.empty_like(x)
    gw = np.zeros(d, np.float64)
    mbuf = np.empty(1, x.dtype)
    for i in range(n):
        xi, gi, r = x[i], g[i], rstd[i]
        acc = 0.0
        for j in range(d):
            xh = xi[j] * r
            gw[j] += np.float64(gi[j] * xh)
            acc += np.float64(gi[j] * w[j] * xh)
        mbuf[0] = acc / d
        m = mbuf[0]  # in x's dtype
        out = gx[i]
        for j in range(d):
            out[j] = (gi[j] * w[j] - (xi[j] * r) * m) * r
    return gx, gw.astype(x.dtype)


def rms_norm_backward(g, x, rstd, w):
    """(gx [N, D], gw [D]) of RMSNorm: g the upstream gradient [N, D], x the forward's input,
    rstd its [N] output, w the weight [D] (module doc)."""
    if (jit_disabled() or not (x.flags.c_contiguous and g.flags.c_contiguous) or x.shape[1] == 0
            or not (g.dtype == x.dtype == w.dtype == rstd.dtype)):
        return rms_norm_backward_ref(g, x, rstd, w)
    return rms_norm_backward_nb(g, x, rstd, w)
