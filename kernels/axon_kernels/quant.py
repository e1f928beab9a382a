"""GGUF block-quantised weights: the load-time repacked layout and fused Numba dequantise-and-multiply kernels.

Glossary
    out, in   a weight matrix W [out, in] (PyTorch Linear layout: y = W @ x)
    block     GGML's unit of quantisation along `in`: 32 weights, or a 256-weight super-block
              split into sub-blocks of 16 or 32 (the K-quants)
    group     in this file, the weights that share one float scale (and possibly one offset)
    R         rows per tile of the packed layout (TILE_ROWS)

The block formats themselves, and `dequantize_ref` (the definition, checked against gguf-py's
``gguf.quants.dequantize``), live in `axon_kernels.quant_formats`: every type decodes to
``w = scale * q (+ offset)`` per group, which is what the packed layout below stores.

Why a repacked layout. Decoding is memory-bound: the fast path must stream the packed bytes
once with wide SIMD. A block-by-block loop over one row vectorises poorly (a 32-weight block
is too short and each needs its own scale). At load time `pack` therefore rewrites every
matrix into tiles of R output rows whose innermost axis is the row::

    q4 kind (Q4_0, Q4_1, Q4_K):  qs [tiles, G, 16, R] uint8   scale, offset [tiles, G, R] float32
        group g has 32 weights: w[r, 32g + j]      = scale * (qs[.., g, j, r] & 15) + offset
                                 w[r, 32g + j + 16] = scale * (qs[.., g, j, r] >> 4) + offset
    q8 kind (all other types):   qs [tiles, G, B, R] int8    scale [, offset] [tiles, G, R] float32
        group g has B weights (B = 32, or 16 for Q2_K / Q3_K / Q6_K):
                                 w[r, Bg + j] = scale * qs[.., g, j, r] (+ offset for Q5_1, Q5_K, Q2_K)

so the inner loop runs across R rows with one broadcast x value (SIMD lanes = rows). The
nibbles are split in float32 -- ``hi = floor(byte / 16)``, ``lo = byte - 16 hi``, both exact --
because Numba types integer ``&`` / ``>>`` as int64, whose conversion to float LLVM leaves
scalar: the float form vectorises and reads Q4_1 ~1.6x faster on one core. Every stored value
is exactly the float32 the definition computes (`quant_formats.decode_blocks`), so
`unpack(pack(raw))` equals `dequantize_ref(raw)` exactly (Q4_0 is stored as ``d q' - 8 d`` with
``q' = q + 8`` to share the nibble layout: equal values, though a zero may lose its sign). Types of 5, 3 or 2 bits, and
IQ4_NL's table values, take one int8 per weight: simple and exact, at the cost of memory
(Q5_K grows from 5.5 to 9 bits per weight, Q2_K from 2.6 to 12).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange
from numba.extending import overload

from axon_kernels import avx512, workers
from axon_kernels._jit import CONTRACT, cached_on_disk, jit_disabled, own_cache_entry
from axon_kernels.avx512 import fma, fma_bcast, load_f32x16, load_i8_f32x16, load_u8_i32x16, nibble_high_f32, nibble_low_f32
from axon_kernels.vnni import f32x16_zero, store
from axon_kernels.quant_formats import BLOCK, FORMATS, NIBBLE_TYPES, QUANT_TYPES, check_raw, decode_blocks, dequantize_ref

TILE_ROWS = 64                      # R: rows per tile (4 AVX-512 / 8 AVX2 float lanes per step)
PARALLEL_MIN_BYTES = 1 << 20       # below ~1 MB of weights per call, one thread is faster
MATVEC_LOOP_MAX_TOKENS = 1          # up to this many tokens, matmul runs the matvec kernel per token
FUSED_MATMUL_MAX_TOKENS = 16        # above this, matmul dequantises row chunks and calls BLAS
# (benchmarks/bench_quant.py --few-tokens, SmolLM2's shapes, 2 threads: from 2 tokens the fused
# kernel beats the matvec per token, 1.1-1.4x at 2 and 1.8-2.4x at 8 tokens; it also beat
# dequantise + sgemm up to 32 tokens (1.3-3x), but the path above 16 tokens is prefill's and
# is tuned with it)
_CHUNK_FLOATS = 1 << 18             # 1 MB of float32 per dequantised chunk (bounds peak memory; as fast as 8 MB)
DENSE_CHUNK_COLS = 256              # output rows per prefill chunk (sgemm [T, in] @ [in, 256]: near full speed)
_DENSE_CHUNK_FLOATS = 1 << 19       # 2 MB of float32 at most per thread's dequantised chunk
_DENSE_WHOLE_FLOATS = 1 << 22       # 16 MB: W.T dequantised whole up to this (prefill by token blocks)


# ------------------------------------------------------------------------------------------------
# Load-time repacking
# ------------------------------------------------------------------------------------------------

@dataclass
class QuantMatrix:
    """A quantised weight matrix [out, in] in the tiled, row-innermost layout (see module doc).

    ``kind`` is ``"q4"`` or ``"q8"``; ``qtype`` the GGUF type it came from; ``group`` the
    number of weights sharing one scale; ``offset`` is None for types without one (Q8_0, Q6_K, ...).
    """

    qtype: str
    kind: str
    shape: tuple[int, int]
    group: int
    qs: np.ndarray
    scale: np.ndarray
    offset: np.ndarray | None

    @property
    def out_features(self) -> int:
        """Rows of W (outputs)."""
        return self.shape[0]

    @property
    def in_features(self) -> int:
        """Columns of W (inputs)."""
        return self.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes held in memory by the packed arrays."""
        return self.qs.nbytes + self.scale.nbytes + (self.offset.nbytes if self.offset is not None else 0)


def _tile(a: np.ndarray, rows: int) -> np.ndarray:
    """[out, G, ...] -> [tiles, G, ..., R] with zero rows padding the last tile."""
    tiles = -(-rows // TILE_ROWS)
    pad = tiles * TILE_ROWS - rows
    if pad:
        a = np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)], axis=0)
    a = a.reshape((tiles, TILE_ROWS) + a.shape[1:])     # [tiles, R, G, ...]
    return np.ascontiguousarray(np.moveaxis(a, 1, -1))  # [tiles, G, ..., R]


def pack(qtype: str, raw: np.ndarray, shape) -> QuantMatrix:
    """Repack GGUF blocks of a 2-D weight ``shape = (out, in)`` into the tiled layout (plain NumPy).

    Q4_0 / Q4_1 / Q4_K (values 0..15) become the ``q4`` kind (two values per byte, scale and
    offset per group of 32); every other type the ``q8`` kind (one int8 value per weight, scale
    and, for Q5_1 / Q5_K / Q2_K, an offset per group of 16 or 32).
    """
    blocks, shape = check_raw(qtype, raw, shape)
    if len(shape) != 2:
        raise ValueError(f"pack expects a 2-D weight (out, in), got shape {shape}")
    rows, cols = shape
    q, sc, off = decode_blocks(qtype, blocks)                              # [rows*nb, G, B], [rows*nb, G]
    size = q.shape[2]
    g = cols // size
    q = q.reshape(rows, g, size)
    scale = _tile(sc.reshape(rows, g), rows)
    offset = None if off is None else _tile(off.reshape(rows, g), rows)
    if qtype in NIBBLE_TYPES:                                              # [rows, G, 32] -> [rows, G, 16] bytes
        if qtype == "Q4_0":          # d (q - 8) as d q' - 8 d with q' = q + 8 in 0..15: the same value for
            q = (q + 8).astype(np.uint8)                 # finite d (only the sign of a zero can differ)
            offset = _tile(np.float32(-8.0) * sc.reshape(rows, g), rows)
        qs = (q[:, :, :16] | (q[:, :, 16:] << 4)).astype(np.uint8)
        return QuantMatrix(qtype, "q4", shape, 32, _tile(qs, rows), scale, offset)
    return QuantMatrix(qtype, "q8", shape, size, _tile(q.astype(np.int8), rows), scale, offset)


# ------------------------------------------------------------------------------------------------
# References on the packed layout: dequantise, then multiply
# ------------------------------------------------------------------------------------------------

def dense_tiles_ref(w: QuantMatrix, t0: int = 0, t1: int | None = None) -> np.ndarray:
    """Tiles ``[t0, t1)`` dequantised in the packed order: float32 ``[tiles, in, R]``
    (element ``[t, k, r]`` is ``W[t*R + r, k]``; padding rows are zero)."""
    t1 = w.qs.shape[0] if t1 is None else t1
    qs, sc = w.qs[t0:t1], w.scale[t0:t1]
    if w.kind == "q4":
        v = np.concatenate([qs & 0x0F, qs >> 4], axis=2).astype(np.float32)   # [t, G, 32, R]
        full = sc[:, :, None, :] * v + w.offset[t0:t1][:, :, None, :]
    else:
        full = sc[:, :, None, :] * qs.astype(np.float32)                     # [t, G, B, R]
        if w.offset is not None:
            full = full + w.offset[t0:t1][:, :, None, :]
    return full.reshape(full.shape[0], -1, full.shape[-1])                   # -> [t, in, R]


def unpack_ref(w: QuantMatrix, row_start: int = 0, row_stop: int | None = None) -> np.ndarray:
    """Rows ``[row_start, row_stop)`` of the packed matrix as float32 ``[rows, in]`` (NumPy)."""
    rows, cols = w.shape
    row_stop = rows if row_stop is None else row_stop
    t0, t1 = row_start // TILE_ROWS, -(-row_stop // TILE_ROWS)
    full = dense_tiles_ref(w, t0, t1).transpose(0, 2, 1).reshape(-1, cols)   # [t, in, R] -> [t*R, in]
    lo = row_start - t0 * TILE_ROWS
    return np.ascontiguousarray(full[lo:lo + row_stop - row_start])


def _tile_chunks(w: QuantMatrix):
    """Ranges of tiles holding about _CHUNK_FLOATS float32 each, at least one tile (bounds memory)."""
    step = max(1, _CHUNK_FLOATS // max(w.in_features * TILE_ROWS, 1))
    for t0 in range(0, w.qs.shape[0], step):
        yield t0, min(t0 + step, w.qs.shape[0])


def _row_chunks(w: QuantMatrix):
    step = max(TILE_ROWS, (_CHUNK_FLOATS // max(w.in_features, 1)) // TILE_ROWS * TILE_ROWS)
    for r0 in range(0, w.out_features, step):
        yield r0, min(r0 + step, w.out_features)


def _as_x(w: QuantMatrix, x, ndim: int, name: str) -> np.ndarray:
    if (type(x) is np.ndarray and x.dtype == np.float32 and x.ndim == ndim and x.shape[-1] == w.in_features
            and x.flags.c_contiguous):
        return x                         # what the layers pass (the checks below cost ~5 us per call)
    x = np.asarray(x)
    if x.ndim != ndim or x.shape[-1] != w.in_features:
        want = "[in]" if ndim == 1 else "[T, in]"
        raise ValueError(f"{name}: x must be {want} with in={w.in_features}, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name}: x must be floating point, got {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


def quant_matvec_ref(w: QuantMatrix, x: np.ndarray) -> np.ndarray:
    """y = dequantize(W) @ x: W [out, in] packed, x [in] -> float32 [out] (NumPy, tile chunks)."""
    x = _as_x(w, x, 1, "quant_matvec")
    y = np.empty(w.qs.shape[0] * TILE_ROWS, np.float32)
    for t0, t1 in _tile_chunks(w):
        y[t0 * TILE_ROWS:t1 * TILE_ROWS] = np.matmul(x, dense_tiles_ref(w, t0, t1)).reshape(-1)  # [in] @ [t, in, R]
    return y[:w.out_features]


def quant_matmul_ref(w: QuantMatrix, x: np.ndarray) -> np.ndarray:
    """y = x @ dequantize(W).T: x [T, in] -> float32 [T, out] (NumPy, tile chunks)."""
    x = _as_x(w, x, 2, "quant_matmul")
    y = np.empty((x.shape[0], w.qs.shape[0] * TILE_ROWS), np.float32)
    for t0, t1 in _tile_chunks(w):
        dense = dense_tiles_ref(w, t0, t1).transpose(1, 0, 2).reshape(w.in_features, -1)  # [t, in, R] -> [in, t*R]
        y[:, t0 * TILE_ROWS:t1 * TILE_ROWS] = x @ dense                                     # [T, in] @ [in, t*R]
    return np.ascontiguousarray(y[:, :w.out_features])


def _as_ids(w: QuantMatrix, ids) -> np.ndarray:
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"quant_rows: ids must be integers, got {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= w.out_features):
        raise ValueError(f"quant_rows: ids must lie in [0, {w.out_features}), got min {ids.min()} max {ids.max()}")
    return ids.astype(np.int64)


def quant_rows_ref(w: QuantMatrix, ids: np.ndarray) -> np.ndarray:
    """Rows ``ids`` (any int shape S) of the dequantised matrix -> float32 [*S, in] (an embedding lookup)."""
    ids = _as_ids(w, ids)
    flat = ids.reshape(-1)
    out = np.empty((flat.size, w.in_features), np.float32)
    for k, r in enumerate(flat):
        out[k] = unpack_ref(w, int(r), int(r) + 1)[0]
    return out.reshape(ids.shape + (w.in_features,))


# ------------------------------------------------------------------------------------------------
# Numba kernels
# ------------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _group_sums(x, groups, bsz):
    """Sum of x over each group of bsz inputs (the offset's coefficient)."""
    xsum = np.zeros(groups, np.float32)
    for g in range(groups):
        s = np.float32(0.0)
        for j in range(bsz):
            s += x[g * bsz + j]
        xsum[g] = s
    return xsum


def _matvec_q4(qs, scale, offset, x, y):
    """y[tiles*R] = W x for the q4 layout (group 32). x float32 [G*32]."""
    tiles, groups, _, rr = qs.shape
    xsum = _group_sums(x, groups, 32)
    for t in prange(tiles):
        acc = np.zeros(rr, np.float32)
        tmp = np.empty(rr, np.float32)
        for g in range(groups):
            for r in range(rr):
                tmp[r] = 0.0
            for j in range(16):
                xl = x[g * 32 + j]
                xh = x[g * 32 + 16 + j]
                for r in range(rr):                          # SIMD across rows
                    v = np.float32(qs[t, g, j, r])                   # byte 0..255, exact
                    hi = np.floor(v * np.float32(0.0625))            # high nibble, exact
                    tmp[r] += (v - np.float32(16.0) * hi) * xl + hi * xh
            xs = xsum[g]
            for r in range(rr):
                acc[r] += scale[t, g, r] * tmp[r] + offset[t, g, r] * xs
        for r in range(rr):
            y[t * rr + r] = acc[r]


def _matvec_q8(qs, scale, offset, x, y):
    """y[tiles*R] = W x for the q8 layout (group B = qs.shape[2]); ``offset`` has 0 tiles when the type has none."""
    tiles, groups, bsz, rr = qs.shape
    has_offset = offset.shape[0] > 0
    xsum = _group_sums(x, groups, bsz)
    for t in prange(tiles):
        acc = np.zeros(rr, np.float32)
        tmp = np.empty(rr, np.float32)
        for g in range(groups):
            for r in range(rr):
                tmp[r] = 0.0
            for j in range(0, bsz, 4):                       # 4 weights per update of tmp: ~1.3x faster
                x0 = x[g * bsz + j]
                x1 = x[g * bsz + j + 1]
                x2 = x[g * bsz + j + 2]
                x3 = x[g * bsz + j + 3]
                for r in range(rr):                          # SIMD across rows
                    tmp[r] += ((np.float32(qs[t, g, j, r]) * x0 + np.float32(qs[t, g, j + 1, r]) * x1)
                               + (np.float32(qs[t, g, j + 2, r]) * x2 + np.float32(qs[t, g, j + 3, r]) * x3))
            for r in range(rr):
                acc[r] += scale[t, g, r] * tmp[r]
            if has_offset:
                xs = xsum[g]
                for r in range(rr):
                    acc[r] += offset[t, g, r] * xs
        for r in range(rr):
            y[t * rr + r] = acc[r]


@njit(cache=True, nogil=True)
def _token_group_sums(x, groups, bsz):
    """xsum[T, G]: the sum of each token's inputs over each group of bsz (the offset's coefficient)."""
    xsum = np.empty((x.shape[0], groups), np.float32)
    for i in range(x.shape[0]):
        xsum[i] = _group_sums(x[i], groups, bsz)
    return xsum


@njit(cache=True, nogil=True, fastmath=CONTRACT, inline="always")
def _scale_into(tmp, k, i0, s, m, has_offset, xsum, g, acc):
    """``acc[i0 + kk, r] += s[r] * tmp[kk, r] (+ m[r] * xsum[i0 + kk, g])`` for kk < k: one group's
    scale (and offset times the group's input sum) applied to its partial sums."""
    for kk in range(k):
        if has_offset:
            xs = xsum[i0 + kk, g]
            for r in range(TILE_ROWS):
                acc[i0 + kk, r] += s[r] * tmp[kk, r] + m[r] * xs
        else:
            for r in range(TILE_ROWS):
                acc[i0 + kk, r] += s[r] * tmp[kk, r]


@njit(cache=True, nogil=True, fastmath=CONTRACT, inline="always")
def _few_tokens_group(wq, bsz, x, col, s, m, has_offset, xsum, g, tmp, acc):
    """Add one group of one tile to every token's outputs ``acc [T, R]``:
    ``acc[i, r] += s[r] * sum_j wq[j, r] x[i, col + j]  (+ m[r] * xsum[i, g])``.

    ``wq [bsz, R]`` holds the group's decoded values (before scale), read from L1 once per
    chunk of 4 tokens: the 4 tokens' partial sums ``tmp [4, R]`` take 16 multiply-adds per 4
    loads of ``wq`` and one load/store of ``tmp`` per 4 inputs (tokens 0..3 of a chunk share
    every loaded weight vector, the 4 inputs share every ``tmp`` update). Then a chunk of 2 and
    one token finish T % 4. The row loop has the constant trip count R, so LLVM unrolls it
    into whole SIMD registers. ``bsz`` is a multiple of 4; ``m`` is ignored without offset.
    Inlined into the kernels, which are compiled with FMA contraction (``CONTRACT``, not
    fastmath: NaN/Inf propagate as in the reference): ~1.3x faster on the multiply-adds and on
    the nibble split.
    """
    ntok = x.shape[0]
    for i0 in range(0, ntok - 3, 4):
        for r in range(TILE_ROWS):
            tmp[0, r] = 0.0
            tmp[1, r] = 0.0
            tmp[2, r] = 0.0
            tmp[3, r] = 0.0
        for j in range(0, bsz, 4):
            a0, a1, a2, a3 = x[i0, col + j], x[i0, col + j + 1], x[i0, col + j + 2], x[i0, col + j + 3]
            b0, b1, b2, b3 = x[i0 + 1, col + j], x[i0 + 1, col + j + 1], x[i0 + 1, col + j + 2], x[i0 + 1, col + j + 3]
            c0, c1, c2, c3 = x[i0 + 2, col + j], x[i0 + 2, col + j + 1], x[i0 + 2, col + j + 2], x[i0 + 2, col + j + 3]
            d0, d1, d2, d3 = x[i0 + 3, col + j], x[i0 + 3, col + j + 1], x[i0 + 3, col + j + 2], x[i0 + 3, col + j + 3]
            for r in range(TILE_ROWS):                       # SIMD across rows
                w0, w1, w2, w3 = wq[j, r], wq[j + 1, r], wq[j + 2, r], wq[j + 3, r]
                tmp[0, r] += w0 * a0 + w1 * a1 + w2 * a2 + w3 * a3
                tmp[1, r] += w0 * b0 + w1 * b1 + w2 * b2 + w3 * b3
                tmp[2, r] += w0 * c0 + w1 * c1 + w2 * c2 + w3 * c3
                tmp[3, r] += w0 * d0 + w1 * d1 + w2 * d2 + w3 * d3
        _scale_into(tmp, 4, i0, s, m, has_offset, xsum, g, acc)
    i0 = ntok - ntok % 4
    if ntok - i0 >= 2:
        for r in range(TILE_ROWS):
            tmp[0, r] = 0.0
            tmp[1, r] = 0.0
        for j in range(0, bsz, 4):
            a0, a1, a2, a3 = x[i0, col + j], x[i0, col + j + 1], x[i0, col + j + 2], x[i0, col + j + 3]
            b0, b1, b2, b3 = x[i0 + 1, col + j], x[i0 + 1, col + j + 1], x[i0 + 1, col + j + 2], x[i0 + 1, col + j + 3]
            for r in range(TILE_ROWS):
                w0, w1, w2, w3 = wq[j, r], wq[j + 1, r], wq[j + 2, r], wq[j + 3, r]
                tmp[0, r] += w0 * a0 + w1 * a1 + w2 * a2 + w3 * a3
                tmp[1, r] += w0 * b0 + w1 * b1 + w2 * b2 + w3 * b3
        _scale_into(tmp, 2, i0, s, m, has_offset, xsum, g, acc)
        i0 += 2
    if i0 < ntok:
        for r in range(TILE_ROWS):
            tmp[0, r] = 0.0
        for j in range(0, bsz, 4):
            a0, a1, a2, a3 = x[i0, col + j], x[i0, col + j + 1], x[i0, col + j + 2], x[i0, col + j + 3]
            for r in range(TILE_ROWS):
                tmp[0, r] += wq[j, r] * a0 + wq[j + 1, r] * a1 + wq[j + 2, r] * a2 + wq[j + 3, r] * a3
        _scale_into(tmp, 1, i0, s, m, has_offset, xsum, g, acc)


def _matmul_q4(qs, scale, offset, x, y):
    """y[T, tiles*R] = x @ W.T for the q4 layout and a few tokens: each group's nibbles are
    decoded once into a scratch ``wq [32, R]`` (L1-resident) and applied to all T tokens by
    :func:`_few_tokens_group`. ``qs.shape[3]`` must be TILE_ROWS (what `pack` writes)."""
    tiles, groups = qs.shape[0], qs.shape[1]
    xsum = _token_group_sums(x, groups, 32)                  # [T, G]
    for t in prange(tiles):
        wq = np.empty((32, TILE_ROWS), np.float32)
        tmp = np.empty((4, TILE_ROWS), np.float32)
        acc = np.zeros((x.shape[0], TILE_ROWS), np.float32)
        for g in range(groups):
            for j in range(16):
                for r in range(TILE_ROWS):                   # SIMD across rows
                    v = np.float32(qs[t, g, j, r])                   # byte 0..255, exact
                    hi = np.floor(v * np.float32(0.0625))            # high nibble, exact
                    wq[j, r] = v - np.float32(16.0) * hi
                    wq[j + 16, r] = hi
            _few_tokens_group(wq, 32, x, g * 32, scale[t, g], offset[t, g], True, xsum, g, tmp, acc)
        for i in range(x.shape[0]):
            for r in range(TILE_ROWS):
                y[i, t * TILE_ROWS + r] = acc[i, r]


def _matmul_q8(qs, scale, offset, x, y):
    """y[T, tiles*R] = x @ W.T for the q8 layout and a few tokens (see _matmul_q4): each
    group's int8 values are converted once into ``wq [B, R]``."""
    tiles, groups, bsz, _ = qs.shape
    has_offset = offset.shape[0] > 0
    xsum = _token_group_sums(x, groups, bsz)                 # [T, G]
    for t in prange(tiles):
        wq = np.empty((bsz, TILE_ROWS), np.float32)
        tmp = np.empty((4, TILE_ROWS), np.float32)
        acc = np.zeros((x.shape[0], TILE_ROWS), np.float32)
        for g in range(groups):
            for j in range(bsz):
                for r in range(TILE_ROWS):
                    wq[j, r] = np.float32(qs[t, g, j, r])
            m = offset[t, g] if has_offset else scale[t, g]          # (unused without offset)
            _few_tokens_group(wq, bsz, x, g * bsz, scale[t, g], m, has_offset, xsum, g, tmp, acc)
        for i in range(x.shape[0]):
            for r in range(TILE_ROWS):
                y[i, t * TILE_ROWS + r] = acc[i, r]


# The few-token kernels on explicit AVX-512 vectors (`axon_kernels.avx512`), used when the host
# has AVX-512F. The kernels above keep 4 tokens' partial sums in an L1 scratch (one load and one
# store of them per 4 inputs) and LLVM does not keep more in registers when written as loops over
# arrays. Here a block of 8 tokens' sums for 32 rows is a tuple of 16 f32x16 values (16 zmm
# registers) over the whole row of groups (blocks of 4 and 2 tokens: 8 and 4 values): each weight vector is
# decoded and scaled once (``w = scale * q + offset``, the dequantised weight) and multiply-added
# with each token's broadcast input. The block size is the length of the tuple of the tokens'
# input offsets, so one row function per kind compiles for every size.

def _block_offsets8(i0, ntok, cols):
    """The input offsets ``k * cols`` of tokens i0..i0+7, a token past the last repeating the last
    (computed, never stored)."""
    last = ntok - 1
    return (min(i0, last) * cols, min(i0 + 1, last) * cols, min(i0 + 2, last) * cols, min(i0 + 3, last) * cols,
            min(i0 + 4, last) * cols, min(i0 + 5, last) * cols, min(i0 + 6, last) * cols, min(i0 + 7, last) * cols)


def _block_offsets4(i0, ntok, cols):
    """The input offsets of tokens i0..i0+3 (see :func:`_block_offsets8`)."""
    last = ntok - 1
    return min(i0, last) * cols, min(i0 + 1, last) * cols, min(i0 + 2, last) * cols, min(i0 + 3, last) * cols


def _block_offsets2(i0, ntok, cols):
    """The input offsets of tokens i0, i0+1 (see :func:`_block_offsets8`)."""
    return i0 * cols, min(i0 + 1, ntok - 1) * cols


def _block_zeros(o):
    """Zero accumulators for the tokens of offsets ``o``: two f32x16 (32 rows) per token.
    (The definition; Numba compiles the written-out form of the @overload below.)"""
    return (f32x16_zero(),) * (2 * len(o))


def _block_madd(acc, w0, w1, xf, o, c):
    """``acc`` of the tokens of offsets ``o`` plus the weight vectors of 32 rows ``(w0, w1)`` times
    each token's input ``xf[o[k] + c]``. (The definition; Numba compiles the written-out form of
    the @overload below.)"""
    return tuple(fma_bcast(acc[2 * k + h], (w0, w1)[h], xf, o[k] + c) for k in range(len(o)) for h in range(2))


@overload(_block_zeros, jit_options={"cache": True, "nogil": True})
def _block_zeros_impl(o):
    """:func:`_block_zeros` for blocks of 8, 4 and 2 tokens."""
    if len(o) == 8:
        def zeros8(o):
            z = f32x16_zero()
            return z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z
        return zeros8

    if len(o) == 4:
        def zeros4(o):
            z = f32x16_zero()
            return z, z, z, z, z, z, z, z
        return zeros4

    def zeros2(o):
        z = f32x16_zero()
        return z, z, z, z
    return zeros2


@overload(_block_madd, jit_options={"cache": True, "nogil": True})
def _block_madd_impl(acc, w0, w1, xf, o, c):
    """:func:`_block_madd` for blocks of 8, 4 and 2 tokens (written out: the tuples stay in registers)."""
    if len(o) == 8:
        def madd8(acc, w0, w1, xf, o, c):
            return (fma_bcast(acc[0], w0, xf, o[0] + c), fma_bcast(acc[1], w1, xf, o[0] + c),
                    fma_bcast(acc[2], w0, xf, o[1] + c), fma_bcast(acc[3], w1, xf, o[1] + c),
                    fma_bcast(acc[4], w0, xf, o[2] + c), fma_bcast(acc[5], w1, xf, o[2] + c),
                    fma_bcast(acc[6], w0, xf, o[3] + c), fma_bcast(acc[7], w1, xf, o[3] + c),
                    fma_bcast(acc[8], w0, xf, o[4] + c), fma_bcast(acc[9], w1, xf, o[4] + c),
                    fma_bcast(acc[10], w0, xf, o[5] + c), fma_bcast(acc[11], w1, xf, o[5] + c),
                    fma_bcast(acc[12], w0, xf, o[6] + c), fma_bcast(acc[13], w1, xf, o[6] + c),
                    fma_bcast(acc[14], w0, xf, o[7] + c), fma_bcast(acc[15], w1, xf, o[7] + c))
        return madd8

    if len(o) == 4:
        def madd4(acc, w0, w1, xf, o, c):
            return (fma_bcast(acc[0], w0, xf, o[0] + c), fma_bcast(acc[1], w1, xf, o[0] + c),
                    fma_bcast(acc[2], w0, xf, o[1] + c), fma_bcast(acc[3], w1, xf, o[1] + c),
                    fma_bcast(acc[4], w0, xf, o[2] + c), fma_bcast(acc[5], w1, xf, o[2] + c),
                    fma_bcast(acc[6], w0, xf, o[3] + c), fma_bcast(acc[7], w1, xf, o[3] + c))
        return madd4

    def madd2(acc, w0, w1, xf, o, c):
        return (fma_bcast(acc[0], w0, xf, o[0] + c), fma_bcast(acc[1], w1, xf, o[0] + c),
                fma_bcast(acc[2], w0, xf, o[1] + c), fma_bcast(acc[3], w1, xf, o[1] + c))
    return madd2


def _store_block(yf, at, ystride, n, acc):
    """Rows r..r+31 (at ``yf[at:]``) of the first ``n`` tokens of a block."""
    for k in range(min(n, len(acc) // 2)):
        store(yf, at + k * ystride, acc[2 * k])
        store(yf, at + k * ystride + 16, acc[2 * k + 1])


def _rows_q4_avx512(qf, sf, of, xf, groups, t, r0, o):
    """Rows r0..r0+31 of tile t times the tokens of offsets ``o`` (q4 layout): per group and
    input pair j, j + 16, the 16 bytes of each 16-row run widen to int32 lanes, the nibbles
    convert to float and become weights ``scale * q + offset`` (4 vectors), multiply-added into
    every token's 2 accumulators."""
    acc = _block_zeros(o)
    for g in range(groups):
        si = (t * groups + g) * TILE_ROWS + r0
        s0, s1 = load_f32x16(sf, si), load_f32x16(sf, si + 16)
        m0, m1 = load_f32x16(of, si), load_f32x16(of, si + 16)
        for j in range(16):
            qi = ((t * groups + g) * 16 + j) * TILE_ROWS + r0
            v0, v1 = load_u8_i32x16(qf, qi), load_u8_i32x16(qf, qi + 16)
            acc = _block_madd(acc, fma(nibble_low_f32(v0), s0, m0), fma(nibble_low_f32(v1), s1, m1), xf, o, g * 32 + j)
            acc = _block_madd(acc, fma(nibble_high_f32(v0), s0, m0), fma(nibble_high_f32(v1), s1, m1), xf, o,
                              g * 32 + j + 16)
    return acc


def _rows_q8_avx512(qf, sf, of, xf, groups, bsz, has_offset, t, r0, o):
    """Rows r0..r0+31 of tile t times the tokens of offsets ``o`` (q8 layout, see
    :func:`_rows_q4_avx512`): per group and input j, two int8 vectors become weights
    ``scale * q (+ offset)``."""
    acc = _block_zeros(o)
    for g in range(groups):
        si = (t * groups + g) * TILE_ROWS + r0
        s0, s1 = load_f32x16(sf, si), load_f32x16(sf, si + 16)
        m0 = m1 = f32x16_zero()
        if has_offset:
            m0, m1 = load_f32x16(of, si), load_f32x16(of, si + 16)
        for j in range(bsz):
            qi = ((t * groups + g) * bsz + j) * TILE_ROWS + r0
            acc = _block_madd(acc, fma(load_i8_f32x16(qf, qi), s0, m0), fma(load_i8_f32x16(qf, qi + 16), s1, m1),
                              xf, o, g * bsz + j)
    return acc


def _rows_avx512(qf, sf, of, xf, groups, bsz, has_offset, t, r0, o):
    """Rows r0..r0+31 of tile t times the tokens of offsets ``o``: :func:`_rows_q4_avx512` for the
    q4 layout (uint8 ``qf``), :func:`_rows_q8_avx512` for the q8 layout (int8)."""
    if qf.dtype == np.uint8:
        return _rows_q4_avx512(qf, sf, of, xf, groups, t, r0, o)
    return _rows_q8_avx512(qf, sf, of, xf, groups, bsz, has_offset, t, r0, o)


@overload(_rows_avx512, jit_options={"cache": True, "nogil": True})
def _rows_avx512_impl(qf, sf, of, xf, groups, bsz, has_offset, t, r0, o):
    """:func:`_rows_avx512` with the layout chosen at compile time (by the dtype of ``qf``)."""
    if qf.dtype == numba.types.uint8:
        return lambda qf, sf, of, xf, groups, bsz, has_offset, t, r0, o: _rows_q4_avx512(qf, sf, of, xf, groups, t, r0, o)
    return lambda qf, sf, of, xf, groups, bsz, has_offset, t, r0, o: _rows_q8_avx512(
        qf, sf, of, xf, groups, bsz, has_offset, t, r0, o)


def _matmul_avx512(qs, scale, offset, x, y):
    """y[T, tiles*R] = x @ W.T for either layout and a few tokens (AVX-512F; the contract of
    :func:`_matmul_q4` / :func:`_matmul_q8`, reference :func:`quant_matmul_ref`; ``offset`` has 0
    tiles when the type has none). Work items are 32-row halves of tiles; each takes the tokens
    by blocks of 8 while 6 or more are left, then a block of 4 if 3-5 are left, then one of 2 for
    the last 1-2 (a block's tokens past the last repeat it: computed, not stored; blocks of 4
    and 2 pay more for decoding per multiply-add)."""
    tiles, groups, bsz, _ = qs.shape
    has_offset = offset.shape[0] > 0
    ntok, cols = x.shape
    ystride = y.shape[1]
    qf, sf, of, xf, yf = qs.reshape(-1), scale.reshape(-1), offset.reshape(-1), x.reshape(-1), y.reshape(-1)
    for item in prange(2 * tiles):
        t, r0 = item // 2, (item % 2) * 32
        i0 = 0
        while ntok - i0 >= 6:
            acc = _rows_avx512(qf, sf, of, xf, groups, bsz, has_offset, t, r0, _block_offsets8(i0, ntok, cols))
            _store_block(yf, i0 * ystride + t * TILE_ROWS + r0, ystride, ntok - i0, acc)
            i0 += 8
        if ntok - i0 >= 3:
            acc = _rows_avx512(qf, sf, of, xf, groups, bsz, has_offset, t, r0, _block_offsets4(i0, ntok, cols))
            _store_block(yf, i0 * ystride + t * TILE_ROWS + r0, ystride, ntok - i0, acc)
            i0 += 4
        if i0 < ntok:
            acc = _rows_avx512(qf, sf, of, xf, groups, bsz, has_offset, t, r0, _block_offsets2(i0, ntok, cols))
            _store_block(yf, i0 * ystride + t * TILE_ROWS + r0, ystride, ntok - i0, acc)


for _name in ("_block_offsets8", "_block_offsets4", "_block_offsets2", "_store_block", "_rows_q4_avx512", "_rows_q8_avx512"):
    globals()[_name] = njit(cache=True, nogil=True)(globals()[_name])

def _unpack_q4(qs, scale, offset, t0, t1, out):
    """Tiles [t0, t1) of the q4 layout -> out float32 [(t1-t0)*R, in]."""
    _, groups, _, rr = qs.shape
    for t in prange(t0, t1):
        for r in range(rr):
            row = (t - t0) * rr + r
            for g in range(groups):
                s = scale[t, g, r]
                m = offset[t, g, r]
                for j in range(16):
                    v = np.float32(qs[t, g, j, r])
                    hi = np.floor(v * np.float32(0.0625))
                    out[row, g * 32 + j] = s * (v - np.float32(16.0) * hi) + m
                    out[row, g * 32 + 16 + j] = s * hi + m


def _unpack_q8(qs, scale, offset, t0, t1, out):
    """Tiles [t0, t1) of the q8 layout -> out float32 [(t1-t0)*R, in]."""
    _, groups, bsz, rr = qs.shape
    has_offset = offset.shape[0] > 0
    for t in prange(t0, t1):
        for r in range(rr):
            row = (t - t0) * rr + r
            for g in range(groups):
                s = scale[t, g, r]
                m = offset[t, g, r] if has_offset else np.float32(0.0)
                for j in range(bsz):
                    v = s * np.float32(qs[t, g, j, r])
                    out[row, g * bsz + j] = v + m if has_offset else v


def _dense_q4(qs, scale, offset, t0, t1, out):
    """Tiles [t0, t1) of the q4 layout -> out float32 [in, (t1-t0)*R], i.e. W[rows].T, written in
    runs of R contiguous floats (reads and writes both run along rows, so the loop vectorises)."""
    _, groups, _, rr = qs.shape
    for t in range(t0, t1):
        c = (t - t0) * rr
        for g in range(groups):
            for j in range(16):
                lo = out[g * 32 + j, c:c + rr]
                hi = out[g * 32 + 16 + j, c:c + rr]
                for r in range(rr):
                    v = np.float32(qs[t, g, j, r])
                    h = np.floor(v * np.float32(0.0625))
                    lo[r] = scale[t, g, r] * (v - np.float32(16.0) * h) + offset[t, g, r]
                    hi[r] = scale[t, g, r] * h + offset[t, g, r]


def _dense_q8(qs, scale, offset, t0, t1, out):
    """Tiles [t0, t1) of the q8 layout -> out float32 [in, (t1-t0)*R] (see _dense_q4)."""
    _, groups, bsz, rr = qs.shape
    has_offset = offset.shape[0] > 0
    for t in range(t0, t1):
        c = (t - t0) * rr
        for g in range(groups):
            for j in range(bsz):
                o = out[g * bsz + j, c:c + rr]
                for r in range(rr):
                    o[r] = scale[t, g, r] * np.float32(qs[t, g, j, r])
                if has_offset:
                    for r in range(rr):
                        o[r] += offset[t, g, r]


# Each kernel is compiled twice: multi-threaded for big matrices, single-threaded for small ones,
# where waking the thread pool costs more than it saves (and stalls badly on a busy machine).
# The matvec and dense (prefill) kernels only serially: above PARALLEL_MIN_BYTES their tile chunks
# are spread over threads by `workers.run_chunks` (`_chunked_matvec`, `_dense_matmul`), which
# also spares the first run the compilation of a parallel variant (~3x a serial one's time).
_matvec_q4_serial_nb = njit(cache=True, nogil=True)(_matvec_q4)
_matvec_q8_serial_nb = njit(cache=True, nogil=True)(_matvec_q8)
_matmul_q4_nb = njit(cache=True, parallel=True, nogil=True, fastmath=CONTRACT)(own_cache_entry(_matmul_q4, "parallel"))
_matmul_q4_serial_nb = njit(cache=True, nogil=True, fastmath=CONTRACT)(_matmul_q4)
_matmul_q8_nb = njit(cache=True, parallel=True, nogil=True, fastmath=CONTRACT)(own_cache_entry(_matmul_q8, "parallel"))
_matmul_q8_serial_nb = njit(cache=True, nogil=True, fastmath=CONTRACT)(_matmul_q8)
_matmul_q4_avx512_nb = _matmul_q8_avx512_nb = njit(cache=True, parallel=True, nogil=True)(
    own_cache_entry(_matmul_avx512, "parallel"))                     # one body, compiled per layout (qs dtype)
_matmul_q4_avx512_serial_nb = _matmul_q8_avx512_serial_nb = njit(cache=True, nogil=True)(_matmul_avx512)
_unpack_q4_nb = njit(cache=True, parallel=True, nogil=True)(own_cache_entry(_unpack_q4, "parallel"))
_unpack_q4_serial_nb = njit(cache=True, nogil=True)(_unpack_q4)
_unpack_q8_nb = njit(cache=True, parallel=True, nogil=True)(own_cache_entry(_unpack_q8, "parallel"))
_unpack_q8_serial_nb = njit(cache=True, nogil=True)(_unpack_q8)
_dense_q4_serial_nb = njit(cache=True, nogil=True)(_dense_q4)
_dense_q8_serial_nb = njit(cache=True, nogil=True)(_dense_q8)


@njit(cache=True, nogil=True)
def _rows_q4_nb(qs, scale, offset, ids, out):
    """out[k] = row ids[k] of the q4 layout."""
    _, groups, _, rr = qs.shape
    for k in range(ids.shape[0]):
        t = ids[k] // rr
        r = ids[k] % rr
        for g in range(groups):
            s = scale[t, g, r]
            m = offset[t, g, r]
            for j in range(16):
                v = np.float32(qs[t, g, j, r])
                hi = np.floor(v * np.float32(0.0625))
                out[k, g * 32 + j] = s * (v - np.float32(16.0) * hi) + m
                out[k, g * 32 + 16 + j] = s * hi + m


@njit(cache=True, nogil=True)
def _rows_q8_nb(qs, scale, offset, ids, out):
    """out[k] = row ids[k] of the q8 layout."""
    _, groups, bsz, rr = qs.shape
    has_offset = offset.shape[0] > 0
    for k in range(ids.shape[0]):
        t = ids[k] // rr
        r = ids[k] % rr
        for g in range(groups):
            s = scale[t, g, r]
            m = offset[t, g, r] if has_offset else np.float32(0.0)
            for j in range(bsz):
                v = s * np.float32(qs[t, g, j, r])
                out[k, g * bsz + j] = v + m if has_offset else v


# ------------------------------------------------------------------------------------------------
# Public entry points (dispatch to the references when the JIT is disabled)
# ------------------------------------------------------------------------------------------------

def _jit_enabled() -> bool:
    return not jit_disabled()


_NO_OFFSET = np.zeros((0, 1, 1), np.float32)   # what the q8 kernels get for a type without offsets


def _arrays(w: QuantMatrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The packed arrays every kernel takes: ``(qs, scale, offset)`` (offset with 0 tiles if absent)."""
    return w.qs, w.scale, _NO_OFFSET if w.offset is None else w.offset


def _chunked_matvec(kind: str):
    """The matvec of a large matrix: tile chunks of the serial kernel (a quarter of the tiles per
    thread at most, so threads even out) spread over the threads by `workers.run_chunks`.
    Same signature as the kernels: ``(qs, scale, offset, x, y)``; each row's sum is the serial
    kernel's, whichever thread computes it."""
    serial = globals()[f"_matvec_{kind}_serial_nb"]

    def matvec(qs, scale, offset, x, y):
        tiles = qs.shape[0]
        step = max(1, -(-tiles // (4 * workers.threads())))
        has_offset = offset.shape[0] > 0

        def chunk(i: int) -> None:
            t0, t1 = i * step, min((i + 1) * step, tiles)
            serial(qs[t0:t1], scale[t0:t1], offset[t0:t1] if has_offset else offset, x,
                   y[t0 * TILE_ROWS:t1 * TILE_ROWS])

        workers.run_chunks(chunk, -(-tiles // step))

    return matvec


_CHUNKED_MATVEC = {kind: _chunked_matvec(kind) for kind in ("q4", "q8")}


_HOST_AVX512 = avx512.available()   # the few-token matmul runs its AVX-512 kernels (`_matmul_avx512`)


def _kernel(name: str, work_bytes: int):
    """The threaded variant of kernel ``name`` when the work is large enough, else the serial one
    (for the matvec, the threaded variant is the serial kernel over tile chunks, `_chunked_matvec`;
    the few-token matmul takes its AVX-512 variant on a host that has AVX-512F)."""
    if name.startswith("matmul_") and _HOST_AVX512:
        name += "_avx512"
    serial = work_bytes < PARALLEL_MIN_BYTES or numba.get_num_threads() == 1
    if serial:
        return globals()[f"_{name}_serial_nb"]
    if name.startswith("matvec_"):
        return _CHUNKED_MATVEC[name[len("matvec_"):]]
    return globals()[f"_{name}_nb"]


def unpack(w: QuantMatrix, row_start: int = 0, row_stop: int | None = None) -> np.ndarray:
    """Rows ``[row_start, row_stop)`` as float32 ``[rows, in]`` (Numba; equals :func:`unpack_ref`)."""
    rows, cols = w.shape
    row_stop = rows if row_stop is None else row_stop
    if not 0 <= row_start <= row_stop <= rows:
        raise ValueError(f"unpack: row range [{row_start}, {row_stop}) outside [0, {rows})")
    if not _jit_enabled():
        return unpack_ref(w, row_start, row_stop)
    t0, t1 = row_start // TILE_ROWS, -(-row_stop // TILE_ROWS)
    out = np.empty(((t1 - t0) * TILE_ROWS, cols), np.float32)
    work = out.nbytes
    _kernel(f"unpack_{w.kind}", work)(*_arrays(w), t0, t1, out)
    lo = row_start - t0 * TILE_ROWS
    return out[lo:lo + row_stop - row_start]


def dequantize(w: QuantMatrix) -> np.ndarray:
    """The whole matrix as float32 ``[out, in]`` (e.g. to fine-tune a quantised model)."""
    return np.ascontiguousarray(unpack(w))


def quant_matvec(w: QuantMatrix, x: np.ndarray) -> np.ndarray:
    """y = dequantize(W) @ x, fused: W [out, in] packed, x [in] float -> float32 [out]."""
    if not _jit_enabled():
        return quant_matvec_ref(w, x)
    x = _as_x(w, x, 1, "quant_matvec")
    y = np.empty(w.qs.shape[0] * TILE_ROWS, np.float32)
    _kernel(f"matvec_{w.kind}", w.nbytes)(*_arrays(w), x, y)
    return y[:w.out_features]


_scratch = threading.local()


def _scratch_floats(n: int, whole: bool = False) -> np.ndarray:
    """A float32 buffer of ``n`` elements reused across calls (one per thread, and for ``whole``
    another per thread): dequantised weights land here, so a prefill does not allocate (and
    page-fault) megabytes per matmul."""
    name = "whole" if whole else "buf"
    buf = getattr(_scratch, name, None)
    if buf is None or buf.size < n:
        buf = np.empty(n, np.float32)
        setattr(_scratch, name, buf)
    return buf[:n]


def _dense_chunks(w: QuantMatrix) -> list[tuple[int, int]]:
    """Tile ranges for :func:`_dense_matmul`'s column chunks: about DENSE_CHUNK_COLS output rows
    each, at least two per thread so the threads can even out (dynamic scheduling), at most
    _DENSE_CHUNK_FLOATS dequantised floats (bounds each thread's buffer)."""
    tiles = w.qs.shape[0]
    step = max(1, min(DENSE_CHUNK_COLS // TILE_ROWS, -(-tiles // (2 * workers.threads())),
                      _DENSE_CHUNK_FLOATS // max(w.in_features * TILE_ROWS, 1)))
    return [(t0, min(t0 + step, tiles)) for t0 in range(0, tiles, step)]


def _even_splits(n: int, parts: int) -> list[tuple[int, int]]:
    """``[0, n)`` cut into ``parts`` ranges whose lengths differ by at most one."""
    edges = [n * i // parts for i in range(parts + 1)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _dense_matmul(w: QuantMatrix, x: np.ndarray) -> np.ndarray:
    """x @ W.T for many tokens, on the threads of `axon_kernels.workers.run_chunks` (serial
    kernels and single-threaded sgemm only: no parallel region, no BLAS thread pool; see its
    module doc for why). Every output is one sgemm dot product of x's row with the same
    dequantised floats as :func:`quant_matmul_ref`.

    A matrix whose W.T fits in _DENSE_WHOLE_FLOATS (every layer of a small model) is dequantised
    whole into the calling thread's reused buffer; then blocks of tokens are multiplied by all of it (``[Tb, in] @ [in, out]``, sgemm at full width;
    token blocks split evenly, where 64-row tiles of a 576-row matrix cannot). A larger one (an LM
    head over every position) goes by column chunks: each thread dequantises W[rows].T into its
    own ~1 MB buffer and multiplies all tokens by it."""
    ntok, cols = x.shape
    y = np.empty((ntok, w.out_features), np.float32)
    tiles = w.qs.shape[0]
    dense_kernel = globals()[f"_dense_{w.kind}_serial_nb"]
    arrays = _arrays(w)
    n = workers.threads()
    if cols * tiles * TILE_ROWS <= _DENSE_WHOLE_FLOATS:
        dense = _scratch_floats(cols * tiles * TILE_ROWS, whole=True).reshape(cols, tiles * TILE_ROWS)  # [in, out+pad]
        dense_kernel(*arrays, 0, tiles, dense)             # on this thread: ~3% of the sgemm's time at T = 500
        wt = dense[:, :w.out_features]                                         # [in, out]
        token_parts = _even_splits(ntok, 2 * n)

        def tokens(i: int) -> None:
            t0, t1 = token_parts[i]
            np.matmul(x[t0:t1], wt, out=y[t0:t1])                              # [Tb, in] @ [in, out]

        workers.run_chunks(tokens, len(token_parts))
        return y
    chunks = _dense_chunks(w)

    def chunk(i: int) -> None:
        t0, t1 = chunks[i]
        r0, r1 = t0 * TILE_ROWS, min(t1 * TILE_ROWS, w.out_features)
        part = _scratch_floats(cols * (t1 - t0) * TILE_ROWS).reshape(cols, -1)  # [in, chunk rows]
        dense_kernel(*arrays, t0, t1, part)
        np.matmul(x, part[:, :r1 - r0], out=y[:, r0:r1])                       # [T, in] @ [in, rows]

    workers.run_chunks(chunk, len(chunks))
    return y


def quant_matmul(w: QuantMatrix, x: np.ndarray) -> np.ndarray:
    """y = x @ dequantize(W).T: x [T, in] float -> float32 [T, out].

    One token runs the matvec kernel (MATVEC_LOOP_MAX_TOKENS); up to FUSED_MATMUL_MAX_TOKENS
    (a batched decode step, a short prompt) a fused kernel decodes each group of weights once
    and applies it to all tokens (:func:`_matmul_avx512` on an
    AVX-512F host, else :func:`_matmul_q4`, :func:`_matmul_q8`); longer inputs (prefill)
    dequantise W.T into a reused buffer and call single-threaded BLAS sgemm on blocks of tokens
    spread over the threads, which is compute-bound there and faster than any loop written here
    (:func:`_dense_matmul`).
    """
    if not _jit_enabled():
        return quant_matmul_ref(w, x)
    x = _as_x(w, x, 2, "quant_matmul")
    ntok = x.shape[0]
    if ntok <= MATVEC_LOOP_MAX_TOKENS:   # one token: the matvec kernel is fastest
        return np.stack([quant_matvec(w, row) for row in x])                   # [T, out]
    if ntok > FUSED_MATMUL_MAX_TOKENS:
        return _dense_matmul(w, x)
    y = np.empty((ntok, w.qs.shape[0] * TILE_ROWS), np.float32)
    work = w.nbytes * ntok
    _kernel(f"matmul_{w.kind}", work)(*_arrays(w), x, y)
    return np.ascontiguousarray(y[:, :w.out_features])


def quant_rows(w: QuantMatrix, ids: np.ndarray) -> np.ndarray:
    """Rows ``ids`` (int array, any shape S) -> float32 [*S, in] (an embedding lookup)."""
    if not _jit_enabled():
        return quant_rows_ref(w, ids)
    ids = _as_ids(w, ids)
    flat = np.ascontiguousarray(ids.reshape(-1))
    out = np.empty((flat.size, w.in_features), np.float32)
    (_rows_q4_nb if w.kind == "q4" else _rows_q8_nb)(*_arrays(w), flat, out)
    return out.reshape(ids.shape + (w.in_features,))


def quant_matvec_into_ref(w: QuantMatrix, x: np.ndarray, out: np.ndarray) -> None:
    """``out[:out_features] = dequantize(W) @ x`` (:func:`quant_matvec_ref` into a buffer)."""
    out[:w.out_features] = quant_matvec_ref(w, x)


def quant_matvec_into(w: QuantMatrix, x: np.ndarray, out: np.ndarray) -> None:
    """``out[:out_features] = dequantize(W) @ x`` into a caller's buffer, without allocating (the
    decode step calls it once per weight per token on buffers it keeps).

    ``x`` float32 ``[in]`` C-contiguous; ``out`` float32 with room for whole tiles,
    ``w.qs.shape[0] * TILE_ROWS >= out_features`` elements (the rows past ``out_features`` are
    scratch). Under ``NUMBA_DISABLE_JIT=1`` it runs :func:`quant_matvec_into_ref`.
    """
    if out.dtype != np.float32 or out.ndim != 1 or out.shape[0] < w.qs.shape[0] * TILE_ROWS:
        raise ValueError(f"quant_matvec_into: out must be float32 [{w.qs.shape[0] * TILE_ROWS}] "
                         f"(whole tiles), got {out.dtype} {out.shape}")
    if not _jit_enabled():
        return quant_matvec_into_ref(w, x, out)
    _kernel(f"matvec_{w.kind}", w.nbytes)(*_arrays(w), x, out)


#: every kernel inference calls, by name: ``matvec_<kind>`` (one token), ``dense_<kind>`` (prefill
#: above FUSED_MATMUL_MAX_TOKENS tokens), ``rows_<kind>`` (embedding lookup)
INFERENCE_KERNELS = tuple(f"{name}_{kind}" for kind in ("q4", "q8") for name in ("matvec", "dense", "rows"))


def _serial_kernel(name: str):
    return globals()[f"_{name}_nb" if name.startswith("rows_") else f"_{name}_serial_nb"]


def compiled_on_disk(names=INFERENCE_KERNELS) -> bool:
    """True when Numba's on-disk cache holds the kernels ``names`` (see :func:`warm_up`)."""
    return cached_on_disk(*(_serial_kernel(n) for n in names))


def warm_up(names=INFERENCE_KERNELS) -> None:
    """Compile (or load from the disk cache) the serial kernels ``names`` (of INFERENCE_KERNELS)
    on tiny matrices, with the argument types inference passes: on a cold cache, ``axon-llm
    generate`` runs this in background processes (`axon_kernels.first_run.warm_up`, one part per
    kernel name) while it answers on the NumPy references."""
    unknown = set(names) - set(INFERENCE_KERNELS)
    if unknown:
        raise ValueError(f"warm_up: unknown kernels {sorted(unknown)}; known: {', '.join(INFERENCE_KERNELS)}")
    if not _jit_enabled():
        return
    x = np.zeros(32, np.float32)
    for qtype in ("Q4_1", "Q8_0"):                   # every q4 / every q8 type shares these signatures
        w = pack(qtype, np.zeros(TILE_ROWS * FORMATS[qtype][1], np.uint8), (TILE_ROWS, 32))   # one block per row
        arrays = _arrays(w)
        if f"matvec_{w.kind}" in names:
            _serial_kernel(f"matvec_{w.kind}")(*arrays, x, np.empty(TILE_ROWS, np.float32))
        if f"dense_{w.kind}" in names:
            _serial_kernel(f"dense_{w.kind}")(*arrays, 0, 1, np.empty((32, TILE_ROWS), np.float32))
        if f"rows_{w.kind}" in names:
            _serial_kernel(f"rows_{w.kind}")(*arrays, np.zeros(1, np.int64), np.empty((1, 32), np.float32))


__all__ = [
    "QUANT_TYPES", "BLOCK", "TILE_ROWS", "QuantMatrix", "dequantize_ref", "pack", "unpack", "unpack_ref", "dense_tiles_ref",
    "dequantize",
    "quant_matvec", "quant_matvec_ref", "quant_matvec_into", "quant_matvec_into_ref", "quant_matmul", "quant_matmul_ref", "quant_rows", "quant_rows_ref",
    "INFERENCE_KERNELS", "compiled_on_disk", "warm_up",
]
