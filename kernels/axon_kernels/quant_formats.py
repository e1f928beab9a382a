"""The GGUF block formats: raw bytes -> (values, scale, offset) per group -> float32 (NumPy).

Every block-quantised GGML type this project reads is, after decoding, the same thing: groups
of B weights, each group with one float32 scale and possibly one float32 offset, and small
integer values ``q``::

    w = scale * q            (no offset)       or       w = scale * q + offset

`decode_blocks` turns raw blocks into exactly that, and `dequantize_ref` multiplies it out.
The formats (GGML's ggml-common.h; little-endian; f16 = IEEE half; "nibbles" of 16 bytes
means byte j holds weight j in its low and weight j + 16 in its high nibble)::

    type    block bytes  layout                                                 groups x B   w
    Q8_0    32   34      [d f16][q int8 x 32]                                    1 x 32      d q
    Q4_0    32   18      [d f16][nibbles 16]                                     1 x 32      d (q - 8)
    Q4_1    32   20      [d f16][m f16][nibbles 16]                              1 x 32      d q + m
    Q5_0    32   22      [d f16][qh u32][nibbles 16]  bit i of qh = bit 4 of q_i 1 x 32      d (q - 16)
    Q5_1    32   24      [d f16][m f16][qh u32][nibbles 16]                      1 x 32      d q + m
    IQ4_NL  32   18      [d f16][nibbles 16]  q indexes the 16-entry table       1 x 32      d table[q]
    Q2_K    256  84      [sc|mn<<4 u8 x16][q 2-bit x 256: 64 bytes][d f16][dmin f16]
                                                                                 16 x 16     d sc q - dmin mn
    Q3_K    256  110     [hmask 32][q low 2 bits: 64][12 bytes: 16 six-bit scales][d f16]
                         q = low2 - 4 + 4 hbit, scale = d (sc - 32)              16 x 16     d (sc-32) q
    Q4_K    256  144     [d f16][dmin f16][12 bytes: 8 six-bit scales, 8 mins][128 bytes]
                                                                                 8 x 32      d sc q - dmin mn
    Q5_K    256  176     [d][dmin][12 bytes scales/mins][qh 32][128 bytes]       8 x 32      d sc q - dmin mn
    Q6_K    256  210     [ql 128][qh 64][scales int8 x 16][d f16]  q = 6 bits - 32  16 x 16  d sc q
    Q8_K    256  292     [d f32][q int8 x 256][bsums i16 x 16 (unused here)]     8 x 32      d q

Bit positions inside the 256-weight super-blocks:
  * 2-bit fields (Q2_K values, Q3_K low bits): weight ``128 h + 32 k + l`` is bits ``2k, 2k+1``
    of byte ``32 h + l`` (h < 2, k < 4, l < 32).
  * Q3_K's high bit of weight ``32 k + l`` (k < 8) is bit k of ``hmask[l]``; Q5_K's fifth bit of
    weight ``32 s + l`` is bit s of ``qh[l]``.
  * Q4_K/Q5_K's 4-bit values: bytes ``32c .. 32c+31`` hold sub-block 2c (low nibbles) and 2c + 1
    (high nibbles). Their 12 scale bytes: sc/mn of sub-block i < 4 are the low 6 bits of bytes i
    and i + 4; for i >= 4, low 4 bits from byte i + 4 (sc low nibble, mn high nibble) and the top
    2 bits from the top 2 bits of bytes i - 4 (sc) and i (mn).
  * Q3_K's 16 scales: low 4 bits from the low (i < 8) or high (i >= 8) nibble of byte i % 8,
    top 2 bits from bits ``2 (i // 4)`` of byte ``8 + i % 4``.
  * Q6_K: weight ``128 h + 32 k + l`` takes 4 low bits from ``ql[64 h + l + 32 (k % 2)]``
    (low nibble for k < 2, high for k >= 2) and 2 high bits from bits 2k of ``qh[32 h + l]``.

The decomposition is exact: every scale and offset is the float32 the format's own formula
computes, and ``scale * q + offset`` equals gguf-py's ``gguf.quants.dequantize`` bit for bit,
signs of zeros included (tested on random blocks and random finite scale bits).
"""

from __future__ import annotations

import numpy as np

# type -> (weights per block, bytes per block, groups per block, weights per group)
FORMATS: dict[str, tuple[int, int, int, int]] = {
    "Q8_0": (32, 34, 1, 32), "Q4_0": (32, 18, 1, 32), "Q4_1": (32, 20, 1, 32),
    "Q5_0": (32, 22, 1, 32), "Q5_1": (32, 24, 1, 32), "IQ4_NL": (32, 18, 1, 32),
    "Q2_K": (256, 84, 16, 16), "Q3_K": (256, 110, 16, 16), "Q4_K": (256, 144, 8, 32),
    "Q5_K": (256, 176, 8, 32), "Q6_K": (256, 210, 16, 16), "Q8_K": (256, 292, 8, 32),
}
QUANT_TYPES = tuple(FORMATS)
BLOCK = {t: f[:2] for t, f in FORMATS.items()}          # type -> (weights, bytes) per block
NIBBLE_TYPES = ("Q4_0", "Q4_1", "Q4_K")                 # values 0..15 with an offset: the packed "q4" kind
IQ4_NL_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)


def check_raw(qtype: str, raw: np.ndarray, shape) -> tuple[np.ndarray, tuple[int, ...]]:
    """Validate ``raw`` against ``qtype`` and ``shape``; return it as blocks ``[n, block bytes]``."""
    if qtype not in FORMATS:
        raise ValueError(f"unsupported quantisation type {qtype!r}; known: {', '.join(QUANT_TYPES)}")
    shape = tuple(int(s) for s in shape)
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"shape must have positive dimensions, got {shape}")
    n = int(np.prod(shape))
    elems, nbytes = BLOCK[qtype]
    if shape[-1] % elems:
        raise ValueError(f"{qtype}: the last dimension {shape[-1]} is not a multiple of the block size {elems}")
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:
        raise ValueError(f"raw quantised data must be uint8, got {raw.dtype}")
    if raw.size != n // elems * nbytes:
        raise ValueError(f"{qtype} shape {shape} needs {n // elems * nbytes} bytes, got {raw.size}")
    return np.ascontiguousarray(raw).reshape(-1, nbytes), shape


def f16(b: np.ndarray) -> np.ndarray:
    """Two little-endian bytes per row ``[n, 2]`` -> float32 ``[n]``."""
    return np.ascontiguousarray(b).view("<f2")[:, 0].astype(np.float32)


def nibbles(qs: np.ndarray) -> np.ndarray:
    """``[n, 16]`` bytes -> ``[n, 32]`` values 0..15 (low nibbles first, then high nibbles)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _bits(b: np.ndarray) -> np.ndarray:
    """``[n, k]`` bytes -> ``[n, 8, k]``: bit j of byte i at ``[:, j, i]``."""
    return (b[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1


def _two_bit(qs: np.ndarray) -> np.ndarray:
    """K-quant 2-bit fields: ``[n, 64]`` bytes -> ``[n, 256]`` values 0..3 in weight order."""
    q = qs.reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)   # [n, h, k, l]
    return (q & 3).reshape(-1, 256)


def k_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 packed bytes ``[n, 12]`` -> six-bit scales and mins, each ``[n, 8]`` uint8."""
    s = s.astype(np.uint8)
    sc = np.empty((s.shape[0], 8), np.uint8)
    mn = np.empty((s.shape[0], 8), np.uint8)
    sc[:, :4] = s[:, 0:4] & 63
    mn[:, :4] = s[:, 4:8] & 63
    sc[:, 4:] = (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)
    mn[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc, mn


def _k_nibbles(qs: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K's 128 bytes ``[n, 128]`` -> ``[n, 8, 32]`` values 0..15 in weight order."""
    c = qs.reshape(-1, 4, 32)                           # [n, chunk, 32]
    return np.stack([c & 0x0F, c >> 4], axis=2).reshape(-1, 8, 32)   # sub-block 2c = lo, 2c + 1 = hi


def q3k_scales(s: np.ndarray) -> np.ndarray:
    """Q3_K's 12 packed bytes ``[n, 12]`` -> 16 six-bit scales ``[n, 16]`` uint8 (before the -32)."""
    lo = np.concatenate([s[:, 0:8] & 0x0F, s[:, 0:8] >> 4], axis=1)                       # [n, 16]
    hi = (s[:, None, 8:12] >> np.array([0, 2, 4, 6], np.uint8)[None, :, None]) & 3         # [n, 4, 4]
    return lo | (hi.reshape(-1, 16) << 4)


def _q6k_values(ql: np.ndarray, qh: np.ndarray) -> np.ndarray:
    """Q6_K's ql ``[n, 128]`` and qh ``[n, 64]`` -> ``[n, 256]`` signed values -32..31."""
    n = ql.shape[0]
    ql = ql.reshape(n, 2, 2, 32)                        # [n, half, first/second 32 bytes, l]
    lo, hi = ql & 0x0F, ql >> 4                         # k = 0, 1 and k = 2, 3
    h = (qh.reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 3
    q = np.concatenate([lo, hi], axis=2) | (h << 4)     # [n, half, k, 32]
    return (q.astype(np.int8) - 32).reshape(n, 256)


def decode_blocks(qtype: str, b: np.ndarray):
    """Blocks ``[n, block bytes]`` -> ``(q [n, G, B] int, scale [n, G] float32, offset [n, G] float32 | None)``
    with ``w = scale * q (+ offset)`` (see the module docstring for each type)."""
    n = b.shape[0]
    _, _, groups, size = FORMATS[qtype]
    off = None
    if qtype == "Q8_0":
        q, sc = b[:, 2:34].view(np.int8), f16(b[:, 0:2])
    elif qtype in ("Q4_0", "Q4_1", "IQ4_NL"):
        sc = f16(b[:, 0:2])
        q = nibbles(b[:, 4:20] if qtype == "Q4_1" else b[:, 2:18])
        if qtype == "Q4_0":
            q = q.astype(np.int8) - np.int8(8)
        elif qtype == "Q4_1":
            off = f16(b[:, 2:4])
        else:
            q = IQ4_NL_VALUES[q]
    elif qtype in ("Q5_0", "Q5_1"):
        p = 2 if qtype == "Q5_0" else 4                 # start of qh
        sc = f16(b[:, 0:2])
        q = nibbles(b[:, p + 4:p + 20]) | (_bits(b[:, p:p + 4]).transpose(0, 2, 1).reshape(n, 32) << 4)
        if qtype == "Q5_0":
            q = q.astype(np.int8) - np.int8(16)
        else:
            off = f16(b[:, 2:4])
    elif qtype == "Q2_K":
        s = b[:, 0:16]
        q = _two_bit(b[:, 16:80])
        sc = f16(b[:, 80:82])[:, None] * (s & 0x0F).astype(np.float32)
        off = -(f16(b[:, 82:84])[:, None] * (s >> 4).astype(np.float32))
    elif qtype == "Q3_K":
        high = _bits(b[:, 0:32]).reshape(n, 256)                        # bit k of hmask[l] -> weight 32k + l
        q = _two_bit(b[:, 32:96]).astype(np.int8) - np.int8(4) + (high << 2).astype(np.int8)
        sc = f16(b[:, 108:110])[:, None] * (q3k_scales(b[:, 96:108]).astype(np.int8) - np.int8(32)).astype(np.float32)
    elif qtype in ("Q4_K", "Q5_K"):
        s, mn = k_scales(b[:, 4:16])
        sc = f16(b[:, 0:2])[:, None] * s.astype(np.float32)
        off = -(f16(b[:, 2:4])[:, None] * mn.astype(np.float32))
        if qtype == "Q4_K":
            q = _k_nibbles(b[:, 16:144])
        else:
            q = _k_nibbles(b[:, 48:176]) | (_bits(b[:, 16:48]) << 4)   # fifth bit of sub-block s: bit s of qh
    elif qtype == "Q6_K":
        q = _q6k_values(b[:, 0:128], b[:, 128:192])
        sc = f16(b[:, 208:210])[:, None] * b[:, 192:208].view(np.int8).astype(np.float32)
    else:  # Q8_K
        q, sc = b[:, 4:260].view(np.int8), np.repeat(np.ascontiguousarray(b[:, 0:4]).view("<f4"), groups, axis=1)
    sc = sc.reshape(n, groups).astype(np.float32, copy=False)
    off = None if off is None else off.reshape(n, groups).astype(np.float32, copy=False)
    return q.reshape(n, groups, size), sc, off


def dequantize_ref(qtype: str, raw: np.ndarray, shape) -> np.ndarray:
    """GGUF quantised bytes -> float32 array of ``shape`` (the definition, plain NumPy).

    ``raw``: uint8 of any shape holding ``prod(shape) / block * block_bytes`` bytes, e.g. a GGUF
    tensor's data as ``[rows, row_bytes]``; ``shape``: logical NumPy shape (last dim = ``in``).
    """
    blocks, shape = check_raw(qtype, raw, shape)
    q, sc, off = decode_blocks(qtype, blocks)
    out = sc[:, :, None] * q.astype(np.float32)                        # [n, G, B]
    if off is not None:
        out = out + off[:, :, None]
    return out.astype(np.float32, copy=False).reshape(shape)


__all__ = ["FORMATS", "QUANT_TYPES", "BLOCK", "NIBBLE_TYPES", "IQ4_NL_VALUES", "check_raw", "decode_blocks",
           "dequantize_ref", "f16", "nibbles", "k_scales", "q3k_scales"]
