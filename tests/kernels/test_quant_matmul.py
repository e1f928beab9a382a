"""kernels.quant: the few-token fused matmul (2..FUSED_MATMUL_MAX_TOKENS rows, a batched decode
step) against its reference `quant_matmul_ref`, for every GGUF type (both packed kinds, with and
without offsets), every token count 1..16 (chunks of 4, 2 and 1 tokens) and odd shapes.

The raw Numba functions are called directly as well, so under ``NUMBA_DISABLE_JIT=1`` (where
`quant_matmul` itself runs the reference) their loops still run, as plain Python."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from axon_kernels import avx512, quant
from axon_kernels._jit import jit_disabled
from axon_kernels.quant import QUANT_TYPES, TILE_ROWS, pack, quant_matmul, quant_matmul_ref, unpack_ref
from tests.kernels.test_quant import _cols, _tol, random_raw

# every kind of packed layout: q4 (offset always), q8 with an offset, q8 without
KINDS = {"Q4_1": ("q4", True), "Q4_K": ("q4", True), "Q5_1": ("q8", True), "Q2_K": ("q8", True),
         "Q8_0": ("q8", False), "Q6_K": ("q8", False)}


def _bound(w, x):
    """Per-output float32 rounding bound of x @ W.T (the reference's own accumulation may differ)."""
    dense = np.abs(unpack_ref(w)).astype(np.float64)
    return np.stack([_tol(dense, np.abs(xi).astype(np.float64)) for xi in x])      # [T, out]


def test_the_kinds_cover_both_layouts_with_and_without_offsets():
    for qtype, (kind, has_offset) in KINDS.items():
        w = pack(qtype, random_raw(qtype, 3, _cols(qtype, 1)), (3, _cols(qtype, 1)))
        assert (w.kind, w.offset is not None) == (kind, has_offset), qtype


@pytest.mark.parametrize("qtype", QUANT_TYPES)
@settings(max_examples=6, deadline=None)
@given(rows=st.integers(1, 2 * TILE_ROWS + 3), nblocks=st.integers(1, 3), ntok=st.integers(1, 16),
       seed=st.integers(0, 2**16))
def test_quant_matmul_equals_reference_for_1_to_16_tokens(qtype, rows, nblocks, ntok, seed):
    cols = _cols(qtype, nblocks)
    w = pack(qtype, random_raw(qtype, rows, cols, seed), (rows, cols))
    x = np.random.default_rng(seed).standard_normal((ntok, cols)).astype(np.float32)
    y, ref = quant_matmul(w, x), quant_matmul_ref(w, x)
    assert y.shape == (ntok, rows) and y.dtype == np.float32 and y.flags.c_contiguous
    assert np.all(np.abs(y - ref) <= _bound(w, x))


@pytest.mark.parametrize("variant", ["_nb", "_serial_nb", "_avx512_nb", "_avx512_serial_nb"])
@pytest.mark.parametrize("qtype", list(KINDS))
@settings(max_examples=3 if jit_disabled() else 10, deadline=None)
@given(rows=st.integers(1, TILE_ROWS + 9), ntok=st.integers(1, 16), seed=st.integers(0, 2**16))
def test_raw_fused_matmul_kernels_equal_reference(qtype, variant, rows, ntok, seed):
    """The @njit kernels themselves (threaded and serial), on a padded last tile and every
    token count: each group is decoded once and applied to chunks of 4, 2 and 1 tokens (the
    AVX-512 kernels: blocks of 8, 4 and 2 tokens, filled up by repeating the last)."""
    if "avx512" in variant:
        if jit_disabled():
            pytest.skip("the AVX-512 kernels are explicit vector intrinsics: no Python form to run uncompiled")
        if not avx512.available():
            pytest.skip("this CPU has no AVX-512F")
    cols = _cols(qtype, 1)
    w = pack(qtype, random_raw(qtype, rows, cols, seed), (rows, cols))
    x = np.random.default_rng(seed).standard_normal((ntok, cols)).astype(np.float32)
    y = np.full((ntok, w.qs.shape[0] * TILE_ROWS), np.nan, np.float32)
    getattr(quant, f"_matmul_{w.kind}{variant}")(*quant._arrays(w), x, y)
    assert not np.isnan(y).any()                                        # every output written, padding too
    assert np.all(np.abs(y[:, :rows] - quant_matmul_ref(w, x)) <= _bound(w, x))


@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0", "Q5_K"])
def test_a_nan_input_poisons_only_its_own_token(qtype):
    """Contraction (FMA) only, never fastmath: a NaN in one token's input propagates to every
    output of that token and of no other, as in the reference."""
    rows, cols = TILE_ROWS + 3, _cols(qtype, 2)
    w = pack(qtype, random_raw(qtype, rows, cols, 2), (rows, cols))
    x = np.random.default_rng(2).standard_normal((7, cols)).astype(np.float32)
    x[5, cols - 3] = np.nan
    for y in (quant_matmul(w, x), quant_matmul_ref(w, x)):
        assert np.isnan(y[5]).all()
        assert np.isfinite(np.delete(y, 5, axis=0)).all()


@pytest.mark.parametrize("ntok", [3, 8, 13, 15])
def test_avx512_kernels_propagate_a_nan_only_to_its_own_token(ntok):
    """The AVX-512 kernels repeat the last token to fill a block: a NaN in the last token's input
    reaches its outputs only (and a NaN or an Inf weight would reach every token, as in the reference)."""
    if jit_disabled() or not avx512.available():
        pytest.skip("needs the compiled AVX-512 kernels (JIT on, an AVX-512F CPU)")
    for qtype in ("Q4_1", "Q8_0"):
        rows, cols = TILE_ROWS + 3, _cols(qtype, 2)
        w = pack(qtype, random_raw(qtype, rows, cols, 4), (rows, cols))
        x = np.random.default_rng(4).standard_normal((ntok, cols)).astype(np.float32)
        x[ntok - 1, 5] = np.nan
        y = np.empty((ntok, w.qs.shape[0] * TILE_ROWS), np.float32)
        getattr(quant, f"_matmul_{w.kind}_avx512_serial_nb")(*quant._arrays(w), x, y)
        assert np.isnan(y[ntok - 1]).all() and np.isfinite(y[:ntok - 1]).all()


def test_the_few_token_matmul_takes_the_avx512_kernels_on_an_avx512_host():
    """On an AVX-512F CPU the batched decode step's products run the explicit-vector kernels."""
    for kind in ("q4", "q8"):
        for work in (1, 1 << 30):                                   # the serial and the threaded variant
            kernel = quant._kernel(f"matmul_{kind}", work)
            assert ("avx512" in getattr(kernel, "py_func", kernel).__qualname__) == avx512.available()


def test_a_batched_decode_step_is_one_fused_call_not_one_matvec_per_row(monkeypatch):
    """2..FUSED_MATMUL_MAX_TOKENS rows go to the fused kernel: the per-row matvec is not called."""
    if jit_disabled():
        pytest.skip("under NUMBA_DISABLE_JIT=1 quant_matmul runs its reference (no kernel dispatch)")
    rows, cols = 2 * TILE_ROWS, 64
    w = pack("Q4_1", random_raw("Q4_1", rows, cols, 1), (rows, cols))
    x = np.random.default_rng(1).standard_normal((quant.FUSED_MATMUL_MAX_TOKENS, cols)).astype(np.float32)

    def no_matvec(*args):
        raise AssertionError("quant_matmul fell back to one matvec per row")

    monkeypatch.setattr(quant, "quant_matvec", no_matvec)
    for ntok in range(quant.MATVEC_LOOP_MAX_TOKENS + 1, quant.FUSED_MATMUL_MAX_TOKENS + 1):
        assert np.all(np.abs(quant_matmul(w, x[:ntok]) - quant_matmul_ref(w, x[:ntok])) <= _bound(w, x[:ntok]))


@pytest.mark.parametrize("name", ["matmul_q4", "matmul_q8", "matmul_q4_avx512", "matmul_q8_avx512", "unpack_q4", "unpack_q8"])
def test_parallel_and_serial_variants_have_their_own_disk_cache_entries(name):
    """Numba keys its on-disk cache by the function's qualified name and argument types, not by
    ``parallel=True``: compiled from one Python function, both variants would load whichever
    was saved last (the 8-row decode step then ran its "parallel" kernel on one thread)."""
    if "avx512" in name and (jit_disabled() or not avx512.available()):
        pytest.skip("the AVX-512 kernels run compiled, on an AVX-512F CPU only")
    parallel, serial = getattr(quant, f"_{name}_nb"), getattr(quant, f"_{name}_serial_nb")
    names = {getattr(fn, "py_func", fn).__qualname__ for fn in (parallel, serial)}
    assert len(names) == 2, names
    x = np.random.default_rng(3).standard_normal((3, 64)).astype(np.float32)
    w = pack("Q4_1" if name.endswith("q4") else "Q8_0", random_raw("Q4_1" if name.endswith("q4") else "Q8_0", TILE_ROWS, 64, 1),
             (TILE_ROWS, 64))
    if name.startswith("matmul"):
        outs = [np.empty((3, TILE_ROWS), np.float32) for _ in range(2)]
        for fn, y in zip((parallel, serial), outs):
            fn(*quant._arrays(w), x, y)
    else:
        outs = [np.empty((TILE_ROWS, 64), np.float32) for _ in range(2)]
        for fn, y in zip((parallel, serial), outs):
            fn(*quant._arrays(w), 0, 1, y)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_no_two_jit_variants_of_one_function_share_a_disk_cache_entry():
    """Every ``*_serial_nb`` beside a ``*_nb`` in the kernels is compiled from a differently named
    function (`axon_kernels._jit.own_cache_entry`), in quant and in decode."""
    import importlib
    import pkgutil

    import axon_kernels

    pairs = 0
    for info in pkgutil.iter_modules(axon_kernels.__path__):
        mod = importlib.import_module(f"axon_kernels.{info.name}")
        for name in dir(mod):
            if name.endswith("_serial_nb") and hasattr(mod, name[:-len("_serial_nb")] + "_nb"):
                serial, parallel = getattr(mod, name), getattr(mod, name[:-len("_serial_nb")] + "_nb")
                qualnames = {getattr(fn, "py_func", fn).__qualname__ for fn in (serial, parallel)}
                assert len(qualnames) == 2, f"axon_kernels.{info.name}.{name}: {qualnames}"
                pairs += 1
    assert pairs >= 5
