"""Rotary position embedding: rotate every head of a [B, H, T, Dh] array in one pass (the module
forward of every RoPE model and its backward; the decode step rotates inside its fused attention,
`axon_kernels.decode`).

Channel pair ``(i, i + D/2)`` of each head (HuggingFace's ``rotate_half`` layout) is rotated by
the angle whose cosine and sine are ``cos[b, 0, t, i]`` and ``sin[b, 0, t, i]``::

    out[..., :D] = x[..., :D] cos + rotate_half(x[..., :D]) sin,   rotate_half(v) = cat(-v2, v1)
    out[..., D:] = x[..., D:]                                       (partial rotary, D < Dh)

``inverse=True`` rotates by the opposite angle (``-sin``): a rotation's transpose is its inverse,
so that is the backward of the forward. `rope_rotate_ref` is the NumPy definition; `rope_rotate_nb`
computes the same values (the same products and one sum per element, so equal up to the fused
multiply-add of `_jit.CONTRACT`) in one serial pass on the calling thread.

Layouts: the model's ``x`` is usually a head-split *view* of a projection's output, ``[B, T, H,
Dh]`` memory seen as ``[B, H, T, Dh]``, and the kernel reads that memory in place (no copy). The
result is C-contiguous ``[B, H, T, Dh]`` (what attention reads), or with ``tokens_major=True``
``[B, T, H, Dh]`` memory returned as its ``[B, H, T, Dh]`` view: what a backward wants, since the
gradient then flows back through the head split to the projection with no copy.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._jit import CONTRACT, jit_disabled

__all__ = ["rope_rotate", "rope_rotate_ref", "rope_rotate_nb"]


def _check(x, cos, sin):
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.dtype.kind != "f":
        raise ValueError(f"rope: x must be a float array [B, H, T, Dh], got {getattr(x, 'shape', type(x))}")
    b, _, t, dh = x.shape
    if cos.shape != sin.shape or cos.ndim != 4 or cos.shape[0] not in (1, b) or cos.shape[1] != 1 \
            or cos.shape[2] != t or cos.shape[3] % 2 or not 0 < cos.shape[3] <= dh:
        raise ValueError(f"rope: cos and sin must be [B, 1, T, D] with even D <= Dh for x {x.shape}, "
                         f"got {cos.shape} and {sin.shape}")


def rope_rotate_ref(x, cos, sin, inverse=False, tokens_major=False):
    """Rotate ``x [B, H, T, Dh]`` by ``cos, sin [B, 1, T, D]`` (module doc): the NumPy definition."""
    _check(x, cos, sin)
    d = cos.shape[-1]
    half = d // 2
    xr = x[..., :d]
    rotated = np.concatenate([-xr[..., half:], xr[..., :half]], axis=-1)  # rotate_half
    rotated *= -sin if inverse else sin
    rot = xr * cos
    rot += rotated                                                         # [B, H, T, D]
    out = np.empty((x.shape[0], x.shape[2], x.shape[1], x.shape[3]), x.dtype).transpose(0, 2, 1, 3) \
        if tokens_major else np.empty(x.shape, x.dtype)                    # [B, H, T, Dh]
    out[..., :d] = rot
    out[..., d:] = x[..., d:]
    return out


@njit(cache=True, nogil=True, fastmath=CONTRACT, error_model="numpy")
def _rope_rows(src, src_tokens_major, cs, sn, sign, dst, dst_tokens_major, n_b, n_h, n_t, dh, d, cos_batched):
    # src, dst: 1-d C-contiguous buffers of [B, H, T, Dh] ("heads major") or [B, T, H, Dh]
    # ("tokens major") arrays; cs, sn: 1-d [Bc, T, D] tables (Bc = B when cos_batched, else 1);
    # sign = -1 rotates back. Every (batch, head) row, T tokens each.
    half = np.uint64(d // 2)                        # unsigned offsets: no negative-index checks, so the loops vectorise
    for r in range(n_b * n_h):
        b = r // n_h
        h = r % n_h
        cb = b if cos_batched else 0
        for t in range(n_t):
            so = np.uint64(((b * n_t + t) * n_h + h) * dh if src_tokens_major else (r * n_t + t) * dh)
            do = np.uint64(((b * n_t + t) * n_h + h) * dh if dst_tokens_major else (r * n_t + t) * dh)
            co = np.uint64((cb * n_t + t) * d)
            for i in range(half):
                x1 = src[so + i]
                x2 = src[so + half + i]
                dst[do + i] = x1 * cs[co + i] - x2 * (sign * sn[co + i])
                dst[do + half + i] = x2 * cs[co + half + i] + x1 * (sign * sn[co + half + i])
            for i in range(np.uint64(d), np.uint64(dh)):  # partial rotary: the rest passes through
                dst[do + i] = src[so + i]


def _rotate_with_kernel(x, cos, sin, inverse, tokens_major):
    b, h, t, dh = x.shape
    if x.transpose(0, 2, 1, 3).flags.c_contiguous and not x.flags.c_contiguous:
        src, src_tm = x.transpose(0, 2, 1, 3), True           # [B, T, H, Dh] memory, read in place
    else:
        src, src_tm = np.ascontiguousarray(x), False          # [B, H, T, Dh]
    cs = np.ascontiguousarray(cos, dtype=x.dtype).reshape(-1)  # [Bc * T * D]
    sn = np.ascontiguousarray(sin, dtype=x.dtype).reshape(-1)
    dst = np.empty((b, t, h, dh) if tokens_major else (b, h, t, dh), x.dtype)
    if x.size:
        _rope_rows(src.reshape(-1), src_tm, cs, sn, x.dtype.type(-1 if inverse else 1), dst.reshape(-1), tokens_major,
                   b, h, t, dh, cos.shape[-1], cos.shape[0] == b and b > 1)
    return dst.transpose(0, 2, 1, 3) if tokens_major else dst  # [B, H, T, Dh]


def rope_rotate_nb(x, cos, sin, inverse=False, tokens_major=False):
    """The Numba version of `rope_rotate_ref` (same arguments, same result up to rounding)."""
    _check(x, cos, sin)
    return _rotate_with_kernel(x, cos, sin, inverse, tokens_major)


def rope_rotate(x, cos, sin, inverse=False, tokens_major=False):
    """Rotate ``x [B, H, T, Dh]`` by ``cos, sin [B, 1, T, D]`` (module doc): the kernel for float32
    and float64 (the reference for other dtypes, and when the JIT is off)."""
    if jit_disabled() or getattr(x, "dtype", None) not in (np.float32, np.float64):
        return rope_rotate_ref(x, cos, sin, inverse, tokens_major)
    return rope_rotate_nb(x, cos, sin, inverse, tokens_major)
