"""Kernels of the single-token decode step (batch 1): RMSNorm into a buffer (and of each head,
for QK-norm), RoPE + cache write + attention over the cache in one call, SiLU- and GELU-gates,
and a matvec into a buffer kept per weight.

Glossary: ``H`` query heads, ``Hkv`` key/value heads (GQA group ``G = H / Hkv``), ``D`` head dim,
``L`` cache slots, ``R`` rotary channels (``<= D``, even), ``s`` the slot of the new token.

:func:`rope_attend` is the heart of it: the new query and key are rotated in place, the new key
and value are written into slot ``s`` of the layer's ``[Hkv, L, D]`` buffers (float32 or
float16), and each query head attends slots ``lo..s`` (``lo > 0`` for a sliding window). K and V
are each read once per step: the ``G`` query heads of a group share every key row they read.
Over a long cache the slots of each kv head are cut into blocks attended in parallel, each
keeping its own max, sum and weighted V, merged at the end as flash attention merges tiles
(``_rope_attend``); dot products and sums are vectorised by letting LLVM reassociate them
(:data:`REASSOC`). Float16 caches are read through ``_f32_at``: the CPU's own conversion where it
has one (:data:`HALF_IN_HARDWARE`), else an exact branch-free decoding of the bits.

Every kernel has a NumPy reference ``name_ref`` with the same signature; the public ``name``
dispatches to it under ``NUMBA_DISABLE_JIT=1``.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from axon_kernels._jit import REASSOC, _int32_bits_as_float32, cached_on_disk, fast_exp, jit_disabled, own_cache_entry
from axon_kernels import quant

__all__ = ["rms_norm_into", "rms_norm_into_ref", "rms_norm_rows", "rms_norm_rows_ref", "rope_attend", "rope_attend_ref",
           "silu_mul", "silu_mul_ref", "gelu_tanh_mul", "gelu_tanh_mul_ref", "matvec_into", "ATTEND_PARALLEL_MIN",
           "ATTEND_BLOCK", "compiled_on_disk", "warm_up"]

_SQRT_2_OVER_PI = 0.7978845608028654                  # sqrt(2 / pi), as axon's GeluTanh

#: below this many key reads x head dims per step (slots x H x D), one thread attends all heads
ATTEND_PARALLEL_MIN = 1 << 16
#: above it, each kv head's slots are cut into blocks of at most this many (and at least two
#: blocks per thread in all), attended in parallel and merged
ATTEND_BLOCK = 256


# ------------------------------------------------------------------------------------------------
# References (NumPy)
# ------------------------------------------------------------------------------------------------

def rms_norm_into_ref(x: np.ndarray, w: np.ndarray, eps: float, out: np.ndarray) -> None:
    """``out[:] = x / sqrt(mean(x^2) + eps) * w`` for one vector ``x [d]`` (float32)."""
    ms = np.mean(x * x)
    out[:] = x * (np.float32(1.0) / np.sqrt(ms + np.float32(eps))) * w


def _rotate_ref(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> None:
    """``x[:, :R] = x cos + rotate_half(x) sin`` in place, ``x [heads, D]``."""
    r = cos.shape[0]
    half = r // 2
    xr = x[:, :r].copy()
    rot = np.concatenate([-xr[:, half:], xr[:, :half]], axis=1)               # rotate_half
    x[:, :r] = xr * cos + rot * sin


def rope_attend_ref(q, k, v, kc, vc, slot: int, lo: int, cos, sin, scale: float, out) -> None:
    """Rotate ``q [H, D]`` and ``k [Hkv, D]`` in place, write ``k, v`` into slot ``slot`` of
    ``kc, vc [Hkv, L, D]``, and ``out [H, D] = softmax(scale q K^T) V`` over slots ``lo..slot``."""
    _rotate_ref(q, cos, sin)
    _rotate_ref(k, cos, sin)
    kc[:, slot] = k
    vc[:, slot] = v
    h, hkv = q.shape[0], k.shape[0]
    keys = kc[:, lo:slot + 1].astype(np.float32)                               # [Hkv, n, D]
    vals = vc[:, lo:slot + 1].astype(np.float32)
    qg = q.reshape(hkv, h // hkv, q.shape[1])                                  # [Hkv, G, D]
    s = np.matmul(qg, keys.transpose(0, 2, 1)) * np.float32(scale)             # [Hkv, G, n]
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    s /= s.sum(axis=-1, keepdims=True)
    out[:] = np.matmul(s, vals).reshape(h, q.shape[1])                         # [Hkv, G, D] -> [H, D]


def rms_norm_rows_ref(x: np.ndarray, w: np.ndarray, eps: float) -> None:
    """Each row of ``x [n, d]`` RMS-normalised and scaled by ``w [d]`` in place (Gemma 3's QK-norm
    over each head)."""
    for r in range(x.shape[0]):
        rms_norm_into_ref(x[r], w, eps, x[r])


def gelu_tanh_mul_ref(gate: np.ndarray, up: np.ndarray) -> None:
    """``gate[:] = gelu_tanh(gate) * up`` in place, as ``F.gelu_tanh``:
    ``0.5 a (1 + tanh(sqrt(2/pi) (a + 0.044715 a^3)))``."""
    t = np.tanh(np.float32(_SQRT_2_OVER_PI) * (gate + np.float32(0.044715) * gate * gate * gate))
    gate *= np.float32(0.5)
    gate *= np.float32(1.0) + t
    gate *= up


def silu_mul_ref(gate: np.ndarray, up: np.ndarray) -> None:
    """``gate[:] = silu(gate) * up`` in place (silu as ``a * 0.5 (1 + tanh(a / 2))``, as ``F.silu``)."""
    gate *= np.float32(0.5) * (np.float32(1.0) + np.tanh(gate * np.float32(0.5)))
    gate *= up


# ------------------------------------------------------------------------------------------------
# Numba kernels
# ------------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _rms_norm_into_nb(x, w, eps, out):
    ss = 0.0                                                                   # float64 sum of squares
    for i in range(x.shape[0]):
        ss += np.float64(x[i]) * np.float64(x[i])
    rstd = np.float32(1.0 / np.sqrt(np.float32(ss / x.shape[0]) + np.float32(eps)))
    for i in range(x.shape[0]):
        out[i] = x[i] * rstd * w[i]


@njit(cache=True, nogil=True)
def _rms_norm_rows_nb(x, w, eps):
    for r in range(x.shape[0]):
        _rms_norm_into_nb(x[r], w, eps, x[r])


@njit(cache=True, nogil=True)
def _rotate_nb(x, cos, sin):
    half = cos.shape[0] // 2
    for h in range(x.shape[0]):
        for i in range(half):
            a = x[h, i]
            b = x[h, i + half]
            x[h, i] = a * cos[i] - b * sin[i]
            x[h, i + half] = b * cos[i + half] + a * sin[i + half]


# The loops that sum over D or over slots (dot products, softmax sums) may be reassociated
# (`axon_kernels._jit.REASSOC`: LLVM vectorises them with several partial sums, 8x faster than
# one serial chain per dot product; NaN and Inf still propagate).

_F16_TO_F32 = np.float32(2.0 ** 112)          # float16 exponent bias 15 -> float32 bias 127


def _has_half_conversion() -> bool:
    """True when the CPU converts float16 to float32 in hardware (x86 F16C, every AArch64): LLVM
    then lowers ``fpext half`` to one vector instruction (``vcvtph2ps``) instead of a library call."""
    import platform

    if platform.machine().lower() in ("aarch64", "arm64"):
        return True
    try:
        import llvmlite.binding as llvm

        return bool(llvm.get_host_cpu_features().get("f16c", False))
    except Exception:                                       # no feature query: the portable decoding
        return False


HALF_IN_HARDWARE = _has_half_conversion()


@intrinsic
def _half_bits_to_f32(typingctx, bits):
    """float16 bits (uint16) -> float32 by LLVM's ``fpext half`` (exact; vectorises)."""
    sig = types.float32(types.uint16)

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return sig, codegen


def _f32_at(row, i):
    """``row[i]`` as float32 (``row`` float32, or float16 bits as ``uint16``)."""
    return np.float32(row.view(np.float16)[i]) if row.dtype == np.uint16 else np.float32(row[i])


@overload(_f32_at)
def _f32_at_overload(row, i):
    if row.dtype != types.uint16:
        return lambda row, i: row[i]
    if HALF_IN_HARDWARE:
        return lambda row, i: _half_bits_to_f32(row[i])
    return lambda row, i: _half_bits_portable(row[i])


@njit(cache=True, nogil=True)
def _half_bits_portable(h16):
    """float16 bits -> float32 exactly and branch-free (vectorises), for CPUs without a float16
    conversion: sign, exponent and mantissa moved to float32's fields, then x 2^112 rebiases the
    exponent (and scales float16 subnormals, which land on float32 subnormals, to their exact
    value); exponent 31 (Inf/NaN) becomes 255."""
    h = np.int32(h16)
    top = ((h & np.int32(0x7c00)) + np.int32(0x400)) >> np.int32(15)              # 1 iff exponent 31
    bits = ((h & np.int32(0x7fff)) << np.int32(13)) | ((h & np.int32(0x8000)) << np.int32(16)) \
        | (top * np.int32(0x7f800000))
    return _int32_bits_as_float32(bits) * _F16_TO_F32


@njit(cache=True, nogil=True, fastmath=REASSOC, inline="always")
def _attend_block(q, kc, vc, g, grp, j0, j1, scale, mx, tot, acc):
    """Query heads ``g*grp .. (g+1)*grp`` over slots ``j0..j1-1`` of kv head ``g``, unnormalised:
    ``mx[a]`` the largest score, ``tot[a] = sum exp(s - mx)``, ``acc[a] = sum exp(s - mx) v``."""
    n = j1 - j0
    d = q.shape[1]
    s = np.empty((grp, n), np.float32)
    for j in range(n):
        kr = kc[g, j0 + j]
        for a in range(grp):
            qa = q[g * grp + a]
            dot = np.float32(0.0)
            for i in range(d):
                dot += qa[i] * _f32_at(kr, i)
            s[a, j] = dot * scale
    for a in range(grp):
        m = s[a, 0]
        for j in range(1, n):
            m = max(m, s[a, j])
        t = np.float32(0.0)
        for j in range(n):
            e = fast_exp(s[a, j] - m)
            s[a, j] = e
            t += e
        mx[a] = m
        tot[a] = t
        for i in range(d):
            acc[a, i] = 0.0
    for j in range(n):
        vr = vc[g, j0 + j]
        for a in range(grp):
            p = s[a, j]
            for i in range(d):
                acc[a, i] += p * _f32_at(vr, i)


@njit(cache=True, nogil=True, inline="always")
def _rotate_store(q, k, v, kc, vc, slot, cos, sin):
    """Rotate ``q`` and ``k`` in place and write ``k, v`` into slot ``slot`` of ``kc, vc``."""
    _rotate_nb(q, cos, sin)
    _rotate_nb(k, cos, sin)
    for g in range(k.shape[0]):
        for i in range(k.shape[1]):
            kc[g, slot, i] = k[g, i]
            vc[g, slot, i] = v[g, i]


def _rope_attend(q, k, v, kc, vc, slot, lo, cos, sin, scale, out, blocks, write):
    """``write``: rotate q/k and store k/v in slot ``slot`` here (float32 caches); otherwise
    the caller did both (float16 caches, stored by NumPy with IEEE rounding). Slots ``lo..slot``
    are cut into ``blocks`` per kv head; the ``Hkv * blocks`` pieces run in parallel (prange) and
    are merged as in flash attention (each block's sums rescaled by ``exp(its max - the max)``)."""
    hkv, d = k.shape
    if write:
        _rotate_store(q, k, v, kc, vc, slot, cos, sin)
    grp = q.shape[0] // hkv
    sc = np.float32(scale)
    n = slot + 1 - lo
    size = -(-n // blocks)
    nb = -(-n // size)                                                     # blocks, none empty
    mx = np.empty((hkv, nb, grp), np.float32)
    tot = np.empty((hkv, nb, grp), np.float32)
    acc = np.empty((hkv, nb, grp, d), np.float32)
    for u in prange(hkv * nb):
        g, b = u // nb, u % nb
        j0 = lo + b * size
        _attend_block(q, kc, vc, g, grp, j0, min(j0 + size, slot + 1), sc, mx[g, b], tot[g, b], acc[g, b])
    for g in range(hkv):
        for a in range(grp):
            m = mx[g, 0, a]
            for b in range(1, nb):
                m = max(m, mx[g, b, a])
            o = out[g * grp + a]
            for i in range(d):
                o[i] = 0.0
            t = np.float32(0.0)
            for b in range(nb):
                w = fast_exp(mx[g, b, a] - m)                             # 1 for the block holding m
                t += w * tot[g, b, a]
                for i in range(d):
                    o[i] += w * acc[g, b, a, i]
            inv = np.float32(1.0) / t
            for i in range(d):
                o[i] *= inv


_rope_attend_nb = njit(cache=True, nogil=True, parallel=True, fastmath=REASSOC)(own_cache_entry(_rope_attend, "parallel"))


@njit(cache=True, nogil=True, fastmath=REASSOC)
def _rope_attend_serial_nb(q, k, v, kc, vc, slot, lo, cos, sin, scale, out, blocks, write):
    """``_rope_attend`` on one thread with one block per kv head (``blocks`` is ignored), bit for
    bit: the block's sums normalised directly, no merge (with one block the merge multiplies by
    ``exp(0) = 1``). The short caches of a first answer call only this, so the first run compiles
    this small kernel and not the blocked one (~0.5 s less of compiling)."""
    hkv, d = k.shape
    if write:
        _rotate_store(q, k, v, kc, vc, slot, cos, sin)
    grp = q.shape[0] // hkv
    mx = np.empty(grp, np.float32)
    tot = np.empty(grp, np.float32)
    for g in range(hkv):
        _attend_block(q, kc, vc, g, grp, lo, slot + 1, np.float32(scale), mx, tot, out[g * grp:(g + 1) * grp])
        for a in range(grp):
            inv = np.float32(1.0) / tot[a]
            o = out[g * grp + a]
            for i in range(d):
                o[i] *= inv


@njit(cache=True, nogil=True)
def _silu_mul_nb(gate, up):
    for i in range(gate.shape[0]):
        a = gate[i]
        gate[i] = a * (np.float32(0.5) * (np.float32(1.0) + np.tanh(a * np.float32(0.5)))) * up[i]


@njit(cache=True, nogil=True)
def _gelu_tanh_mul_nb(gate, up):
    c = np.float32(_SQRT_2_OVER_PI)
    for i in range(gate.shape[0]):
        a = gate[i]
        t = np.tanh(c * (a + np.float32(0.044715) * a * a * a))
        gate[i] = np.float32(0.5) * a * (np.float32(1.0) + t) * up[i]


# ------------------------------------------------------------------------------------------------
# Public entry points
# ------------------------------------------------------------------------------------------------

def rms_norm_into(x: np.ndarray, w: np.ndarray, eps: float, out: np.ndarray) -> None:
    """``out[:] = x / sqrt(mean(x^2) + eps) * w`` for float32 vectors ``x, w, out [d]``."""
    if jit_disabled():
        return rms_norm_into_ref(x, w, eps, out)
    _rms_norm_into_nb(x, w, eps, out)


def rope_attend(q, k, v, kc, vc, slot: int, lo: int, cos, sin, scale: float, out) -> None:
    """One query's RoPE, cache write and attention (see the module doc and :func:`rope_attend_ref`).

    ``q, out [H, D]``, ``k, v [Hkv, D]`` float32; ``kc, vc [Hkv, L, D]`` float32 or float16;
    ``cos, sin [R]`` float32 for this position; ``0 <= lo <= slot < L``.
    """
    if jit_disabled():
        return rope_attend_ref(q, k, v, kc, vc, slot, lo, cos, sin, scale, out)
    n = slot + 1 - lo
    threads = numba.get_num_threads()
    if n * q.shape[0] * q.shape[1] >= ATTEND_PARALLEL_MIN and threads > 1:
        kern, blocks = _rope_attend_nb, max(-(-n // ATTEND_BLOCK), -(-2 * threads // k.shape[0]))
    else:
        kern, blocks = _rope_attend_serial_nb, 1
    if kc.dtype == np.float16:
        _rotate_nb(q, cos, sin)
        _rotate_nb(k, cos, sin)
        kc[:, slot] = k                                                      # IEEE round to nearest
        vc[:, slot] = v
        kern(q, k, v, kc.view(np.uint16), vc.view(np.uint16), slot, lo, cos, sin, scale, out, blocks, False)
    else:
        kern(q, k, v, kc, vc, slot, lo, cos, sin, scale, out, blocks, True)


def rms_norm_rows(x: np.ndarray, w: np.ndarray, eps: float) -> None:
    """RMSNorm of each row of ``x [n, d]`` (float32) with weight ``w [d]``, in place."""
    if jit_disabled():
        return rms_norm_rows_ref(x, w, eps)
    _rms_norm_rows_nb(x, w, eps)


def gelu_tanh_mul(gate: np.ndarray, up: np.ndarray) -> None:
    """``gate[:] = gelu_tanh(gate) * up`` in place (float32 vectors; Gemma's GeGLU)."""
    if jit_disabled():
        return gelu_tanh_mul_ref(gate, up)
    _gelu_tanh_mul_nb(gate, up)


def silu_mul(gate: np.ndarray, up: np.ndarray) -> None:
    """``gate[:] = silu(gate) * up`` in place (float32 vectors)."""
    if jit_disabled():
        return silu_mul_ref(gate, up)
    _silu_mul_nb(gate, up)


def matvec_into(weight):
    """``(f, out)`` for a weight: ``f(x)`` writes ``W x`` into ``out``, a float32 buffer of
    ``out_features`` rows allocated once here (the decode step reuses it every token).

    ``weight`` is a float32 ``[out, in]`` array (BLAS) or a :class:`axon_kernels.quant.QuantMatrix`
    (:func:`axon_kernels.quant.quant_matvec_into`, the fused matvec into a buffer kept here).
    """
    if isinstance(weight, np.ndarray):
        out = np.empty(weight.shape[0], np.float32)
        return (lambda x: np.dot(weight, x, out=out)), out
    w = weight
    buf = np.empty(w.qs.shape[0] * quant.TILE_ROWS, np.float32)             # whole tiles
    return (lambda x: quant.quant_matvec_into(w, x, buf)), buf[:w.out_features]


# ------------------------------------------------------------------------------------------------
# First run: is the on-disk cache cold, and compiling before timing
# ------------------------------------------------------------------------------------------------

def compiled_on_disk() -> bool:
    """True when Numba's on-disk cache holds the decode kernels (False: the first run compiles
    them, which takes seconds). Under ``NUMBA_DISABLE_JIT=1`` nothing is compiled: True."""
    return cached_on_disk(_rms_norm_into_nb, _rope_attend_serial_nb, _silu_mul_nb)


def warm_up() -> None:
    """Compile (or load from the disk cache) the serial decode kernels for float32 vectors and a
    float32 cache: what the first decode steps of a short prompt call."""
    if jit_disabled():
        return
    q, k, v = np.zeros((2, 4), np.float32), np.zeros((1, 4), np.float32), np.zeros((1, 4), np.float32)
    kc, vc = np.zeros((1, 2, 4), np.float32), np.zeros((1, 2, 4), np.float32)
    cs = np.ones(4, np.float32)
    _rope_attend_serial_nb(q, k, v, kc, vc, 0, 0, cs, cs, 1.0, np.empty_like(q), 1, True)
    x = np.ones(4, np.float32)
    _rms_norm_into_nb(x, x, 1e-6, np.empty_like(x))
    _silu_mul_nb(x.copy(), x)
