"""Rotary position embeddings (RoPE), HuggingFace's rotate_half convention, and rope_scaling.

Glossary: ``D`` rotary dimension (even; ``head_dim * partial_rotary_factor``), ``theta`` the
base, ``p`` a position id. Channel pair ``(i, i + D/2)`` of a head is rotated by the angle
``p * inv_freq[i]`` with ``inv_freq[i] = theta ** (-2i / D)``::

    rotate_half(x) = cat(-x[..., D/2:], x[..., :D/2])
    rope(x, p)     = x * cos(p * f) + rotate_half(x) * sin(p * f),   f = cat(inv_freq, inv_freq)

This is the layout of HF checkpoints (``modeling_llama.py``), so Q/K weights need no permutation.

``rope_scaling`` types (transformers ``modeling_rope_utils.py``):

* ``default`` — the formula above;
* ``linear`` — ``inv_freq / factor`` (positions interpolated);
* ``dynamic`` — NTK-aware: when the longest position id seen in a call, ``L = max(p) + 1``,
  exceeds ``max_position_embeddings`` (``M``), the base becomes
  ``theta * (factor * L / M - (factor - 1)) ** (D / (D - 2))``; so the tables depend on
  ``L`` and are recomputed per call (as transformers does for every forward);
* ``llama3`` — Llama 3.1: long wavelengths divided by ``factor``, short ones kept, a smooth
  ramp in between (``low_freq_factor``, ``high_freq_factor``, ``original_max_position_embeddings``).

All tables are float32 and computed the way transformers computes them (float32 ``inv_freq``,
float32 ``p * inv_freq``), so cos/sin agree with the reference bit for bit up to the last ulp of
``cos``. Tables for the non-dynamic types are built lazily on first use and grown on demand.
"""

from __future__ import annotations

import math

import numpy as np

from axon.autograd import Function
from axon_kernels.rope import rope_rotate
from axon_llm.errors import ConfigError

__all__ = ["RotaryEmbedding", "compute_inv_freq", "rotate_half", "apply_rotary_pos_emb"]


def _default_inv_freq(dim: int, base: float) -> np.ndarray:
    """``1 / base ** (arange(0, dim, 2) / dim)`` in float32, as transformers computes it."""
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)   # [D/2]
    return (np.float32(1.0) / np.power(np.float32(base), exponents)).astype(np.float32)


def compute_inv_freq(dim: int, base: float, scaling: dict | None = None, *,
                     max_position_embeddings: int | None = None, seq_len: int | None = None) -> np.ndarray:
    """Inverse frequencies ``[dim // 2]`` (float32) for a rope_scaling dict (``None`` = default).

    ``seq_len`` only matters for ``dynamic``: the longest sequence of the current call.
    """
    rope_type = "default" if scaling is None else scaling.get("rope_type", "default")
    if rope_type == "default":
        return _default_inv_freq(dim, base)
    factor = float(scaling["factor"])
    if rope_type == "linear":
        return (_default_inv_freq(dim, base) / np.float32(factor)).astype(np.float32)
    if rope_type == "dynamic":
        if max_position_embeddings is None:
            raise ConfigError("dynamic RoPE needs max_position_embeddings")
        m = max_position_embeddings
        length = seq_len if seq_len is not None and seq_len > m else m
        scaled_base = base * ((factor * length / m) - (factor - 1)) ** (dim / (dim - 2))
        return _default_inv_freq(dim, scaled_base)
    if rope_type == "llama3":
        inv_freq = _default_inv_freq(dim, base)
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
        wavelen = np.float32(2 * math.pi) / inv_freq
        scaled = np.where(wavelen > low_freq_wavelen, inv_freq / np.float32(factor), inv_freq).astype(np.float32)
        smooth = ((old_len / wavelen - low) / (high - low)).astype(np.float32)
        smoothed = ((1 - smooth) * scaled / np.float32(factor) + smooth * scaled).astype(np.float32)
        medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise ConfigError(f"unknown rope type {rope_type!r}")


class RotaryEmbedding:
    """cos/sin tables for one rotary dimension; shared by every layer of a model.

    ``cos_sin(position_ids)`` takes int positions ``[B, T]`` and returns float32 ``cos, sin``
    of shape ``[B, 1, T, dim]`` (the ``1`` broadcasts over heads).
    """

    def __init__(self, dim: int, max_position_embeddings: int, base: float = 10000.0,
                 scaling: dict | None = None):
        if dim < 2 or dim % 2:
            raise ConfigError(f"rotary dimension must be even and >= 2, got {dim}")
        self.dim = dim
        self.max_position_embeddings = max_position_embeddings
        self.base = float(base)
        self.scaling = scaling
        self.rope_type = "default" if scaling is None else scaling.get("rope_type", "default")
        self._cos: np.ndarray | None = None    # [N, dim] for positions 0..N-1, built lazily
        self._sin: np.ndarray | None = None

    @classmethod
    def from_config(cls, config) -> "RotaryEmbedding":
        """Built from a config with ``rotary_dim``, ``max_position_embeddings``, ``rope_theta``, ``rope_scaling``."""
        return cls(config.rotary_dim, config.max_position_embeddings, config.rope_theta, config.rope_scaling)

    def inv_freq(self, seq_len: int | None = None) -> np.ndarray:
        """Inverse frequencies ``[dim // 2]``; ``seq_len`` matters for ``dynamic`` only."""
        return compute_inv_freq(self.dim, self.base, self.scaling,
                                max_position_embeddings=self.max_position_embeddings, seq_len=seq_len)

    @staticmethod
    def _tables(inv_freq: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        freqs = positions.astype(np.float32)[..., None] * inv_freq            # [..., T] -> [..., T, dim/2]
        emb = np.concatenate([freqs, freqs], axis=-1)                          # [..., T, dim]
        return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)

    def cos_sin(self, position_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 ``cos, sin`` ``[B, 1, T, dim]`` for int positions ``[B, T]``."""
        position_ids = np.asarray(position_ids, dtype=np.int64)
        if self.rope_type == "dynamic":
            # transformers recomputes inv_freq from the longest position of the call
            seq_len = int(position_ids.max()) + 1 if position_ids.size else 0
            cos, sin = self._tables(self.inv_freq(seq_len), position_ids)     # [B, T, dim]
            return cos[:, None], sin[:, None]                                  # [B, 1, T, dim]
        needed = int(position_ids.max()) + 1 if position_ids.size else 0
        if self._cos is None or self._cos.shape[0] < needed:
            # grown by doubling from what is needed, not max_position_embeddings up front (8192
            # positions x 2 tables are 4 MB for SmolLM2); every entry depends on its position only
            n = max(needed, 256, 2 * (0 if self._cos is None else self._cos.shape[0]))
            self._cos, self._sin = self._tables(self.inv_freq(), np.arange(n))  # [N, dim]
        return self._cos[position_ids][:, None], self._sin[position_ids][:, None]  # [B, 1, T, dim]


def rotate_half(x):
    """``cat(-x2, x1)`` over the last dim, where ``x1, x2`` are its two halves (axon Tensor)."""
    import axon

    half = x.shape[-1] // 2
    return axon.cat([-x[..., half:], x[..., :half]], dim=-1)


class RotaryFn(Function):
    """One autograd node: ``y = R(theta) x`` per channel pair; ``dx = R(-theta) dy`` (a rotation's
    transpose is the rotation back), so the backward is the forward with ``-sin``.
    ``rotate_half`` is the composite reference (tests/axon_llm/test_rope.py compares them)."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        """``x [B, H, T, Dh]`` rotated by ``cos, sin [B, 1, T, D]`` arrays (C-contiguous result)."""
        ctx.save_for_backward(cos, sin)
        return rope_rotate(x, cos, sin)                                     # [B, H, T, Dh]

    @staticmethod
    def backward(ctx, grad):
        """The inverse rotation of ``grad``; no gradient for the tables. The result is laid out
        [B, T, H, Dh] in memory (a [B, H, T, Dh] view), so it flows back through the head split
        (`axon_llm.attention.split_heads`) to the projection without a copy."""
        cos, sin = ctx.saved_tensors
        return rope_rotate(grad, cos, sin, inverse=True, tokens_major=True), None, None


def apply_rotary_pos_emb(x, cos, sin):
    """Rotate the first ``cos.shape[-1]`` channels of ``x [B, H, T, Dh]``; the rest pass through.

    ``cos, sin``: ``[B, 1, T, D]`` arrays or tensors with ``D <= Dh`` (partial rotary for Phi).
    One autograd node (``axon_kernels.rope.rope_rotate``: ``x cos + rotate_half(x) sin`` in one
    pass, backward by the inverse rotation), so decoding pays for one op per call instead of eight.
    """
    cos = np.asarray(cos.data if hasattr(cos, "data") else cos, dtype=x.dtype)
    sin = np.asarray(sin.data if hasattr(sin, "data") else sin, dtype=x.dtype)
    return RotaryFn.apply(x, cos, sin)                                        # [B, H, T, Dh]
