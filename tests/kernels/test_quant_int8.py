"""The int8 prefill path (`axon_kernels.quant_int8`): activations quantised to 8 bits per block of
32, integer dot products with 4-bit weights (AVX512-VNNI ``vpdpbusd``), scaled in float.

- the activation quantisation equals its NumPy reference bit for bit (NaN / Inf / tiny / zero blocks too);
- the kernel equals its reference to float rounding: integer block sums are exact, and the only
  difference is the kernel's fused multiply-adds, bounded by (2G + 4) ulps of the sum of |terms|;
- the reference is within `error_bound` (rounding x to int8: d/2 per input) of the float path;
- `QuantizedLinear` takes it for q4 weights from MIN_TOKENS tokens per sequence on a VNNI CPU
  unless switched off: tests/axon_llm/test_gguf.py.
Under NUMBA_DISABLE_JIT=1 (or without VNNI) `quant_matmul_int8` is its reference: the same checks hold.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

from axon_kernels import quant_int8
from axon_kernels.quant import pack, quant_matmul_ref, unpack_ref
from axon_kernels.quant_encode import quantize

EPS = float(np.finfo(np.float32).eps)


def _weights(qtype: str, rows: int, cols: int, seed: int):
    w = (0.05 * np.random.default_rng(seed).standard_normal((rows, cols))).astype(np.float32)
    return pack(qtype, quantize(qtype, w), (rows, cols))


def _rounding_tol(w, x: np.ndarray) -> np.ndarray:
    """Float rounding of one int8 product [T, out]: 2G terms ``float(isum) s d`` and ``m sa``, each
    rounded twice and summed: (2G + 4) eps times the sum of their magnitudes, which is at most
    ``|d a| @ (|s q| + |m|) <= |d a| @ (|w| + 2 |m|)`` (``s q = w - m``)."""
    t, cols = x.shape
    groups = cols // 32
    a, d, _ = quant_int8.quantize_activations_ref(x, t)
    xq = np.abs(a.reshape(t, groups, 32) * d[:, :, None].astype(np.float64)).reshape(t, cols)
    off = np.abs(w.offset.transpose(1, 0, 2).reshape(groups, -1)[:, :w.out_features]).astype(np.float64)  # [G, out]
    wabs = np.abs(unpack_ref(w)).astype(np.float64).T + 2 * np.repeat(off, 32, axis=0)                 # [in, out]
    return (2 * groups + 4) * EPS * (xq @ wabs) + 1e-30


def _float_tol(w, x: np.ndarray) -> np.ndarray:
    """Float rounding of the float path: a few ulps of |x| @ |W|^T (as tests/kernels/test_quant.py)."""
    wabs = np.abs(unpack_ref(w)).astype(np.float64)
    return 4 * EPS * (np.abs(x).astype(np.float64) @ wabs.T) * max(1.0, np.sqrt(x.shape[1]) / 4) + 1e-30


def test_quantize_activations_equals_reference_on_every_kind_of_block():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((13, 160)).astype(np.float32) * np.float32(3.0)
    x[0, :32] = 0                                   # all zeros: d = 0
    x[1, 32:64] = np.float32(1e-35)                 # below TINY: zeros, d = 0
    x[2, 64] = np.nan                               # NaN: d = NaN
    x[3, 100] = -np.inf                             # Inf: d = NaN
    x[4, 128:160] = np.float32(2.5) * (np.arange(32) % 3 - 1)   # halves after scaling: rint rounds to even
    x[5, :32] = np.float32(3.0e38)                  # huge but finite
    ref = quant_int8.quantize_activations_ref(x, 16)
    fast = quant_int8.quantize_activations(x, 16)
    for r, f in zip(ref, fast):
        np.testing.assert_array_equal(f, r)
    a, d, sa = ref
    assert a.shape == (16, 160) and a.dtype == np.int8 and d.shape == sa.shape == (16, 5)
    assert not a[13:].any() and not d[13:].any() and not sa[13:].any()      # padding tokens are zero
    assert d[0, 0] == 0 and d[1, 1] == 0 and not a[1, 32:64].any()
    assert np.isnan(d[2, 2]) and np.isnan(d[3, 3]) and not a[2, 64:96].any()
    assert np.abs(a.astype(np.int32)).max() <= 127
    ok = np.isfinite(d[:13]) & (d[:13] > 0)
    err = np.abs(x.reshape(13, 5, 32) - a[:13].reshape(13, 5, 32) * d[:13, :, None])
    assert np.all(err[ok] <= d[:13][ok][:, None] / 2 * (1 + 4 * EPS))      # |x - d a| <= d / 2


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q4_K"])
@pytest.mark.parametrize("rows,cols,ntok", [(64, 256, 20), (135, 256, 19), (200, 512, 33), (16, 256, 4)])
def test_int8_matmul_equals_reference_and_stays_within_the_bound_of_the_float_path(qtype, rows, cols, ntok):
    w = _weights(qtype, rows, cols, seed=rows + ntok)
    x = np.random.default_rng(ntok).standard_normal((ntok, cols)).astype(np.float32)
    y = quant_int8.quant_matmul_int8(w, x)
    y_ref = quant_int8.quant_matmul_int8_ref(w, x)
    assert y.shape == (ntok, rows) and y.dtype == np.float32 and y.flags.c_contiguous
    tol = _rounding_tol(w, x)
    assert np.all(np.abs(y - y_ref) <= tol)
    y_float = quant_matmul_ref(w, x)
    bound = quant_int8.error_bound(unpack_ref(w), x)
    assert np.all(np.abs(y_ref - y_float) <= bound + tol + _float_tol(w, x))
    assert np.abs(y_ref - y_float).max() > 0            # it is a different computation (the bound is not vacuous)


def test_non_finite_activations_give_nan_outputs_as_the_float_path():
    w = _weights("Q4_1", 64, 128, seed=3)
    x = np.random.default_rng(3).standard_normal((20, 128)).astype(np.float32)
    x[5, 40] = np.nan
    x[9, 0] = np.inf
    for y in (quant_int8.quant_matmul_int8(w, x), quant_int8.quant_matmul_int8_ref(w, x)):
        assert np.isnan(y[5]).all() and np.isnan(y[9]).all()
        rest = np.delete(y, [5, 9], axis=0)
        assert np.isfinite(rest).all()


def test_int8_matmul_refuses_other_kinds():
    w = pack("Q8_0", quantize("Q8_0", np.ones((16, 32), np.float32)), (16, 32))
    assert not quant_int8.supported(w)
    with pytest.raises(ValueError, match="q4"):
        quant_int8.quant_matmul_int8(w, np.ones((20, 32), np.float32))


@pytest.mark.skipif(not quant_int8._HOST_VNNI, reason="this CPU has no AVX512-VNNI: the kernel cannot run")
@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="the intrinsics only exist compiled")
def test_kernel_over_row_ranges_fills_exactly_its_rows():
    """The raw kernel on a sub-range of row groups writes those 16-row blocks and nothing else."""
    w = _weights("Q4_1", 128, 64, seed=5)
    x = np.random.default_rng(5).standard_normal((8, 64)).astype(np.float32)
    a, d, sa = quant_int8.quantize_activations(x, 8)
    y = np.full((8, 128), -7.0, np.float32)
    quant_int8._matmul_q4_vnni(w.qs, w.scale, w.offset, a, d, sa, 2, 5, y)
    ref = quant_int8.quant_matmul_int8_ref(w, x)
    assert np.all(np.abs(y[:, 32:80] - ref[:, 32:80]) <= _rounding_tol(w, x)[:, 32:80])
    assert np.all(y[:, :32] == -7.0) and np.all(y[:, 80:] == -7.0)


def test_gather_rows_equals_reference_on_random_bytes():
    """The nibble regrouping (16 rows, 4 consecutive inputs per 32-bit lane), every 16-row group of
    a padded tile, with every byte value."""
    w = _weights("Q4_1", 100, 96, seed=6)
    qs = np.random.default_rng(6).integers(0, 256, w.qs.shape, dtype=np.uint8)
    for rt in range(qs.shape[0] * 4):
        ref = np.zeros(qs.shape[1] * 256, np.uint8)
        quant_int8._gather_rows_ref(qs, rt, ref)
        assert ref[((1 * 4 + 2) * 16 + 5) * 4 + 3] == qs[rt // 4, 1, 4 * 2 + 3, (rt % 4) * 16 + 5]   # [g=1, i=2, r=5, c=3]
        if quant_int8._HOST_VNNI and not numba.config.DISABLE_JIT:
            fast = np.zeros_like(ref)
            quant_int8._gather_rows(qs, rt, fast)
            np.testing.assert_array_equal(fast, ref)
