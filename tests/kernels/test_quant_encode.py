"""kernels.quant_encode: writing GGUF blocks.

* F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1: byte-identical to gguf-py's ``gguf.quants.quantize``.
* Q4_K, Q5_K, Q6_K (llama.cpp's reference quantisers; gguf-py has none): checked by round trip.
  Two bounds, both derived from how the quantiser ends:
  1. *Nearest level.* Its last step re-rounds every weight against the sub-block grid as stored
     (``dq * L - dm``, L in 0..nmax; Q6_K: ``dq * (L - 32)``), so each dequantised weight is the
     grid level nearest to the input: ``|w - x| <= min_level |level - x| + 1 ulp``. Inside the
     grid's range that is ``<= dq / 2``.
  2. *Relative RMS error* on N(0, 1) data. A uniform quantiser with step D has RMS error
     D / sqrt(12). A 32-weight Gaussian sub-block spans about 4 sigma (its expected range is
     ~4.1), so Q4_K (15 steps) has D ~ 0.27 and RMS ~ 0.08; Q5_K (31 steps) ~ 0.038; Q6_K
     (16 weights, symmetric, 63 steps over about +-1.8 sigma) ~ 0.017. The bounds below are these
     values x 1.25 (the 6-bit quantisation of the sub-block scales and their f16 rounding add
     at most a few percent to D, and the search only lowers the error).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from axon_kernels.quant_encode import WRITE_TYPES, quantize, scale_min_search, scale_min_search_ref
from axon_kernels.quant_formats import check_raw, decode_blocks, dequantize_ref

gguf_quants = pytest.importorskip("gguf.quants")
from gguf.constants import GGMLQuantizationType  # noqa: E402

GGUF_PY_WRITABLE = ("F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
K_TYPES = ("Q4_K", "Q5_K", "Q6_K")
RMS_BOUND = {"Q4_K": 0.08 * 1.25, "Q5_K": 0.038 * 1.25, "Q6_K": 0.017 * 1.25}


@st.composite
def weights(draw, block=32, max_blocks=6):
    """Rows of float32 weights with the shapes of trouble: per-block scales over 8 decades,
    all-zero and constant blocks, one outlier, exact ties at the block maximum."""
    rows = draw(st.integers(1, 3))
    nb = draw(st.integers(1, max_blocks))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, nb, block)).astype(np.float32)
    x *= (10.0 ** rng.uniform(-6, 2, (rows, nb, 1))).astype(np.float32)
    kind = draw(st.sampled_from(["plain", "zero", "constant", "outlier", "tie"]))
    if kind == "zero":
        x[:, 0] = 0
    elif kind == "constant":
        x[:, 0] = np.float32(0.37)
    elif kind == "outlier":
        x[0, 0, 3] = 1e3
    elif kind == "tie":
        x[:, 0, 5] = -np.abs(x[:, 0]).max(axis=-1)
        x[:, 0, 9] = -x[:, 0, 5]
    return x.reshape(rows, nb * block)


@pytest.mark.parametrize("qtype", GGUF_PY_WRITABLE)
@settings(max_examples=25, deadline=None)
@given(x=weights())
def test_simple_types_equal_gguf_py_byte_for_byte(qtype, x):
    ours = quantize(qtype, x)
    theirs = np.ascontiguousarray(gguf_quants.quantize(x, GGMLQuantizationType[qtype])).view(np.uint8)
    np.testing.assert_array_equal(ours, theirs.reshape(ours.shape))


def test_bf16_keeps_nan_and_rounds_to_nearest_even():
    x = np.array([[np.nan, np.inf, -np.inf, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -0.0]], np.float32)
    ours = quantize("BF16", x)
    np.testing.assert_array_equal(ours, gguf_quants.quantize(x, GGMLQuantizationType.BF16).view(np.uint8).reshape(1, -1))
    back = (ours.view("<u2").astype(np.uint32) << 16).view(np.float32)
    assert np.isnan(back[0, 0]) and back[0, 1] == np.inf and back[0, 3] == 1.0 and back[0, 4] == 1.0 + 2**-6
    assert np.signbit(back[0, 5])


def _levels(qtype: str, raw: np.ndarray, shape) -> np.ndarray:
    """Every representable level of each weight's group: [rows*in, levels] (from the stored scales)."""
    blocks, _ = check_raw(qtype, raw, shape)
    _, sc, off = decode_blocks(qtype, blocks)                         # [n, G]
    grid = {"Q4_K": np.arange(16), "Q5_K": np.arange(32), "Q6_K": np.arange(-32, 32)}[qtype].astype(np.float32)
    lv = sc[:, :, None] * grid                                         # [n, G, levels]
    if off is not None:
        lv = lv + off[:, :, None]
    size = 256 // sc.shape[1]                                          # weights per group
    return np.repeat(lv.reshape(-1, lv.shape[-1]), size, axis=0)


@pytest.mark.parametrize("qtype", K_TYPES)
@settings(max_examples=15, deadline=None)
@given(x=weights(block=256, max_blocks=2))
def test_k_quants_put_every_weight_on_its_nearest_level(qtype, x):
    raw = quantize(qtype, x)
    w = dequantize_ref(qtype, raw, x.shape)
    assert np.isfinite(w).all()
    levels = _levels(qtype, raw, x.shape)                              # [rows*in, levels]
    nearest = np.abs(levels - x.reshape(-1, 1)).min(axis=1)
    err = np.abs(w.reshape(-1) - x.reshape(-1))
    slack = 2 * np.spacing(np.maximum(np.abs(x.reshape(-1)), np.abs(w.reshape(-1))))
    assert np.all(err <= nearest + slack)


@pytest.mark.parametrize("qtype", K_TYPES)
def test_k_quants_rms_error_on_gaussian_weights_is_within_the_derived_bound(qtype):
    x = np.random.default_rng(0).standard_normal((64, 1024)).astype(np.float32)
    w = dequantize_ref(qtype, quantize(qtype, x), x.shape)
    rel = np.sqrt(np.mean((w - x) ** 2) / np.mean(x ** 2))
    assert rel <= RMS_BOUND[qtype], rel
    # more bits, less error: the types are ordered
    if qtype != "Q4_K":
        lower = {"Q5_K": "Q4_K", "Q6_K": "Q5_K"}[qtype]
        w_low = dequantize_ref(lower, quantize(lower, x), x.shape)
        assert rel < np.sqrt(np.mean((w_low - x) ** 2) / np.mean(x ** 2))


@pytest.mark.parametrize("nmax, rmin, rdelta, nstep, n", [(15, -1.0, 0.1, 20, 32), (31, -0.5, 0.1, 15, 32),
                                                         (3, -0.5, 0.1, 15, 16)])
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_scale_min_search_kernel_equals_its_reference_bit_for_bit(nmax, rmin, rdelta, nstep, n, seed):
    """The Numba search and the NumPy definition do the same float32 operations in the same
    order (sums left to right), so scales, mins and levels agree exactly, ties included."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((300, n)).astype(np.float32) * rng.uniform(1e-4, 10, (300, 1)).astype(np.float32)
    x[0] = 0.0                                             # a flat sub-block
    x[1] = np.abs(x[1])                                    # all positive: min clamps to 0
    x[2, ::2] = x[2, 0]                                    # repeated values
    w = (np.sqrt(np.mean(x * x, axis=1, keepdims=True)) + np.abs(x)).astype(np.float32)
    got = scale_min_search(x, w, nmax, rmin, rdelta, nstep)
    want = scale_min_search_ref(x, w, nmax, rmin, rdelta, nstep)
    for g, r in zip(got, want):
        np.testing.assert_array_equal(g, r)
    assert got[2].min() >= 0 and got[2].max() <= nmax and np.all(got[1] >= 0)


@pytest.mark.parametrize("qtype", K_TYPES)
def test_k_quants_equal_llama_cpps_bytes(qtype, fixtures_dir):
    """Rows of SmolLM2 that llama.cpp's llama_model_quantize wrote as this type (recorded by the
    dev-only tests/fixtures/make_gguf_types.py): axon writes the same bytes from the same F16 rows."""
    path = fixtures_dir / "gguf_types" / "llama_cpp.npz"
    if not path.exists():
        pytest.skip("no llama.cpp recording (run tests/fixtures/make_gguf_types.py with llama-cpp-python)")
    rec = np.load(path)
    src = rec[f"kquant_{qtype}_src"].astype(np.float32)
    np.testing.assert_array_equal(quantize(qtype, src), rec[f"kquant_{qtype}"])


def test_k_quants_of_zeros_and_constants():
    for qtype in K_TYPES:
        z = np.zeros((2, 256), np.float32)
        np.testing.assert_array_equal(dequantize_ref(qtype, quantize(qtype, z), z.shape), z)
        c = np.full((1, 256), 0.25, np.float32)
        np.testing.assert_allclose(dequantize_ref(qtype, quantize(qtype, c), c.shape), c, rtol=0.02)


def test_bad_requests():
    with pytest.raises(ValueError, match="IQ4_NL"):
        quantize("IQ4_NL", np.zeros((1, 32), np.float32))
    with pytest.raises(ValueError, match="block size 256"):
        quantize("Q4_K", np.zeros((1, 64), np.float32))
    with pytest.raises(ValueError, match="non-empty"):
        quantize("Q8_0", np.zeros((0,), np.float32))
    assert set(GGUF_PY_WRITABLE) | set(K_TYPES) | {"F32"} == set(WRITE_TYPES)
