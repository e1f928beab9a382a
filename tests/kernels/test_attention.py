"""flash_attention: the Numba kernel and the public name equal the reference; the reference
equals an independent per-head softmax; the backward equals central differences."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

import axon_kernels as kernels
from axon_kernels._jit import jit_disabled
from axon_kernels.attention import flash_attention_backward_nb, flash_attention_nb
from axon_kernels.testing import attention_inputs, check_kernel

SMALL = dict(max_len=10, max_dim=6, max_heads=2, max_block=8) if jit_disabled() else {}
EXAMPLES = 10 if jit_disabled() else 40


def _naive(q, k, v, causal, window, scale, key_mask=None):
    """Per head, per query: masked softmax over the keys, written out with no vectorisation tricks.

    The visibility rule spelled out independently of `visible_mask`: the query at position
    p = Tk - Tq + i sees key j when j <= p (causal, or any window), j > p - W (window W) and
    key_mask[b, j] (padding). A query that sees no key gives zeros (lse -inf).
    """
    b, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    scale = d ** -0.5 if scale is None else scale
    out = np.zeros(q.shape)
    lse = np.full(q.shape[:3], -np.inf)
    for bi in range(b):
        for hi in range(h):
            kh = hi // (h // hkv)
            for i in range(tq):
                p = tk - tq + i
                seen = [j for j in range(tk) if (not (causal or window) or j <= p) and (window is None or j > p - window)
                        and (key_mask is None or key_mask[bi, j])]
                if not seen:
                    continue
                s = np.array([q[bi, hi, i] @ k[bi, kh, j] * scale for j in seen])
                w = np.exp(s - s.max())
                out[bi, hi, i] = (w[:, None] * v[bi, kh, seen]).sum(0) / w.sum()
                lse[bi, hi, i] = s.max() + np.log(w.sum())
    return out, lse


naive_attention = _naive  # the one reference the visibility tests in tests/axon_llm compare every path to


@settings(max_examples=EXAMPLES, deadline=None)
@given(attention_inputs(**SMALL))
def test_numba_kernel_equals_reference(args):
    check_kernel(flash_attention_nb, kernels.flash_attention_ref, **args.kwargs, reduction=args.reduction)


@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(attention_inputs(**SMALL))
def test_public_name_equals_reference(args):
    check_kernel(kernels.flash_attention, kernels.flash_attention_ref, **args.kwargs, reduction=args.reduction)


@settings(max_examples=EXAMPLES, deadline=None)
@given(attention_inputs(**SMALL))
def test_backward_numba_kernel_equals_reference(args):
    kw = args.kwargs
    opts = {k: kw[k] for k in ("causal", "window", "scale", "block_q", "block_kv")}
    out, lse = kernels.flash_attention_ref(kw["q"], kw["k"], kw["v"], **opts)
    dout = np.random.default_rng(0).standard_normal(out.shape).astype(out.dtype)
    check_kernel(flash_attention_backward_nb, kernels.flash_attention_backward_ref,
                 kw["q"], kw["k"], kw["v"], out, lse, dout, **opts, reduction=4 * args.reduction)


@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(attention_inputs(max_len=8, max_dim=4, max_heads=4, max_block=4))
def test_reference_equals_naive_softmax(args):
    kw = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v) for k, v in args.kwargs.items()}
    out, lse = kernels.flash_attention_ref(**kw)
    want_out, want_lse = _naive(kw["q"], kw["k"], kw["v"], kw["causal"], kw["window"], kw["scale"])
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-12, atol=1e-12)


@settings(max_examples=8, deadline=None)
@given(attention_inputs(max_len=5, max_dim=3, max_heads=2, max_block=4))
def test_reference_backward_equals_central_differences(args):
    kw = {k: (np.array(v, dtype=np.float64) if isinstance(v, np.ndarray) else v) for k, v in args.kwargs.items()}
    opts = {k: kw[k] for k in ("causal", "window", "scale")}
    q, k, v = kw["q"], kw["k"], kw["v"]
    rng = np.random.default_rng(1)
    dout = rng.standard_normal(q.shape)
    dlse = rng.standard_normal(q.shape[:3])

    def loss(q, k, v):  # depends on out only: the kernel's backward takes d(out)
        return (kernels.flash_attention_ref(q, k, v, **opts)[0] * dout).sum()

    out, lse = kernels.flash_attention_ref(q, k, v, **opts)
    grads = kernels.flash_attention_backward_ref(q, k, v, out, lse, dout, **opts)
    del dlse
    eps = 1e-6
    for which, (x, g) in enumerate(zip((q, k, v), grads)):
        num = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            plus, minus = [a.copy() for a in (q, k, v)], [a.copy() for a in (q, k, v)]
            plus[which][idx] += eps
            minus[which][idx] -= eps
            num[idx] = (loss(*plus) - loss(*minus)) / (2 * eps)
        np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-7)


def test_gqa_equals_repeated_kv_and_decode_equals_last_rows():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 4, 9, 8)).astype(np.float32)
    k = rng.standard_normal((1, 2, 9, 8)).astype(np.float32)
    v = rng.standard_normal((1, 2, 9, 8)).astype(np.float32)
    out, lse = kernels.flash_attention(q, k, v, causal=True, block_q=4, block_kv=4)
    rep = kernels.flash_attention(q, np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1), causal=True, block_q=4, block_kv=4)
    np.testing.assert_allclose(out, rep[0], rtol=1e-6, atol=1e-6)
    last, last_lse = kernels.flash_attention(q[:, :, -3:], k, v, causal=True, block_q=2, block_kv=4)  # Tq < Tk
    np.testing.assert_allclose(last, out[:, :, -3:], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(last_lse, lse[:, :, -3:], rtol=1e-6, atol=1e-6)


def test_window_larger_than_sequence_is_causal():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 1, 6, 4)) for _ in range(3))
    np.testing.assert_allclose(kernels.flash_attention(q, k, v, window=100)[0], kernels.flash_attention(q, k, v, causal=True)[0])


@pytest.mark.parametrize("impl", [flash_attention_nb, kernels.flash_attention_ref, kernels.flash_attention])
def test_nan_propagates_to_its_rows_only(impl):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 1, 5, 4)).astype(np.float32) for _ in range(3))
    v[0, 0, 2, 1] = np.nan  # key 2: causal queries 2.. see it
    out, _ = impl(q, k, v, causal=True, block_q=2, block_kv=2)
    assert np.isnan(out[0, 0, 2:, 1]).all()
    dense = impl is kernels.flash_attention_ref or (impl is kernels.flash_attention and jit_disabled())
    if not dense:  # the dense reference computes 0 * NaN for masked keys
        assert np.isfinite(out[0, 0, :2]).all()
    q[0, 0, 0, 0] = np.nan
    out, lse = impl(q, k, v, causal=True, block_q=2, block_kv=2)
    assert np.isnan(out[0, 0, 0]).all() and np.isnan(lse[0, 0, 0])


def test_flash_attention_config():
    cfg = kernels.FlashAttentionConfig()
    assert (cfg.block_q, cfg.block_kv) == (64, 64)
    with pytest.raises(ValueError, match="block_kv"):
        kernels.FlashAttentionConfig(block_q=16, block_kv=0)


@pytest.mark.parametrize("fn", [kernels.flash_attention, kernels.flash_attention_ref, flash_attention_nb])
def test_bad_inputs_raise_clear_errors(fn):
    q = np.zeros((1, 3, 4, 8), np.float32)
    k = np.zeros((1, 2, 4, 8), np.float32)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        fn(q, k, k)
    with pytest.raises(ValueError, match="4 dimensions"):
        fn(q[0], k, k)
    with pytest.raises(TypeError, match="float32 or float64"):
        fn(q.astype(np.int32), k[:, :1], k[:, :1])
    with pytest.raises(ValueError, match="more queries than keys"):
        fn(q[:, :1], k[:, :1, :2], k[:, :1, :2])
    with pytest.raises(ValueError, match="window"):
        fn(q[:, :1], k[:, :1], k[:, :1], window=0)
    with pytest.raises(ValueError, match="block_q"):
        fn(q[:, :1], k[:, :1], k[:, :1], block_q=0)
    with pytest.raises(ValueError, match="same shape"):
        fn(q[:, :1], k[:, :1], k[:, :1, :3])


def test_backward_bad_saved_shapes():
    q = np.zeros((1, 1, 4, 8), np.float32)
    with pytest.raises(ValueError, match="lse must have shape"):
        kernels.flash_attention_backward(q, q, q, q, np.zeros((1, 1, 3), np.float32), q)


# ------------------------------------------------------------------ the one visibility rule


WINDOWS = (None, 1, 2, 3, 7)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", WINDOWS)
def test_numba_predicates_equal_visible_mask(causal, window):
    """The Numba kernels inline the rule per key of a tile (`_visible_queries`: the range of the
    tile's queries that see it), per block (`_kv_range`) and per tile for the causal split
    (`_block_visible`: a tile every query of which sees every key skips the per-key masking); all
    equal `visible_mask` / `visible_key_range` for every pair, block, tile."""
    from axon_kernels.attention import _block_visible, _kv_range, _visible_queries, visible_key_range

    for tk in range(1, 9):
        for tq in range(1, tk + 1):
            mask = kernels.visible_mask(tq, tk, causal, window)
            for i0 in range(tq):                              # a tile of queries i0..i1-1
                for i1 in range(i0 + 1, tq + 1):
                    for j in range(tk):
                        lo, hi = _visible_queries(j, tk - tq + i0, i1 - i0, causal, window or 0)
                        got = [lo <= i < hi for i in range(i1 - i0)]
                        assert got == mask[i0:i1, j].tolist(), (tq, tk, i0, i1, j)
            for i0 in range(tq):
                for i1 in range(i0 + 1, tq + 1):
                    p0, p1 = tk - tq + i0, tk - tq + i1 - 1
                    lo, hi = _kv_range(p0, p1, tk, causal, window or 0)
                    assert (lo, hi) == visible_key_range(p0, p1, tk, causal, window)
                    cols = np.flatnonzero(mask[i0:i1].any(axis=0))  # the range is the tight hull of what the block sees
                    assert (lo, hi) == (cols[0], cols[-1] + 1)
                    for j0 in range(tk):
                        for j1 in range(j0 + 1, tk + 1):
                            want = bool(mask[i0:i1, j0:j1].all())
                            assert _block_visible(p0, p1, j0, j1, causal, window or 0) == want, (tq, tk, i0, i1, j0, j1)


def test_visible_mask_window_implies_causal_and_key_mask_adds_padding():
    # the example: a window without causal still hides later keys (on every path)
    np.testing.assert_array_equal(kernels.visible_mask(3, 3, False, 2), kernels.visible_mask(3, 3, True, 2))
    assert kernels.visible_mask(3, 3, False, 2).tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    km = np.array([[False, True, True], [True, True, True]])
    got = kernels.visible_mask(2, 3, True, None, km)  # [B, 1, Tq, Tk]; queries at positions 1, 2
    assert got.shape == (2, 1, 2, 3)
    assert got[0, 0].tolist() == [[0, 1, 0], [0, 1, 1]] and got[1, 0].tolist() == [[1, 1, 0], [1, 1, 1]]
    with pytest.raises(ValueError, match="window"):
        kernels.visible_mask(2, 2, True, 0)
    with pytest.raises(ValueError, match="key_mask"):
        kernels.visible_mask(2, 2, True, None, np.ones((1, 3), bool))


@pytest.mark.parametrize("split", ["batched", "threads"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("tq, tk", [(6, 6), (1, 6), (3, 8)])
def test_blas_attention_and_its_reference_equal_the_naive_softmax(causal, window, pad, tq, tk, split, monkeypatch):
    """causal x window x left padding x cache offset (Tq < Tk); GQA; blocks of 2 queries; small work
    done in one batched call per block ("batched") and large work in pieces on the threads ("threads")."""
    import axon_kernels.attention as attention

    monkeypatch.setattr(attention, "INLINE_WORK", 1 << 60 if split == "batched" else 0)
    rng = np.random.default_rng(tq * 100 + tk + pad)
    q = rng.standard_normal((2, 4, tq, 5))
    k, v = rng.standard_normal((2, 2, tk, 5)), rng.standard_normal((2, 2, tk, 5))
    key_mask = np.ones((2, tk), bool)
    key_mask[1, :pad] = False  # row 1 left-padded
    want, _ = _naive(q, k, v, causal, window, 0.3, key_mask)
    for fn in (kernels.blas_attention, kernels.blas_attention_ref):
        got = fn(q, k, v, causal, window, 0.3, key_mask, block_q=2)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        f32 = fn(*(x.astype(np.float32) for x in (q, k, v)), causal, window, 0.3, key_mask, block_q=2)
        assert f32.dtype == np.float32
        np.testing.assert_allclose(f32, want, rtol=1e-5, atol=1e-5)


def test_blas_attention_bad_key_mask_and_shapes_raise():
    q = np.zeros((1, 2, 3, 4))
    k = np.zeros((1, 1, 3, 4))
    with pytest.raises(ValueError, match="key_mask"):
        kernels.blas_attention(q, k, k, key_mask=np.ones((1, 2), bool))
    with pytest.raises(ValueError, match="key_mask"):
        kernels.blas_attention(q, k, k, key_mask=np.ones((1, 3), np.int64))
    with pytest.raises(ValueError, match="multiple"):
        kernels.blas_attention(np.zeros((1, 3, 3, 4)), np.zeros((1, 2, 3, 4)), np.zeros((1, 2, 3, 4)))


# ------------------------------------------------------------------ the flash kernels' tile machinery


@pytest.mark.parametrize("m, kd, n", [(1, 1, 1), (4, 4, 16), (5, 7, 3), (9, 13, 37), (64, 64, 64)])
def test_tile_gemm_update_equals_numpy(m, kd, n):
    """`_mm_acc` (every flash GEMM: c[m, n] += a[m, kd] b[kd, n] on 1-D buffers with offsets and
    row strides) equals NumPy, remainders of its 4-row / 4-deep blocking included."""
    from axon_kernels.attention import _mm_acc

    rng = np.random.default_rng(m * 100 + kd * 10 + n)
    lda, ldb, ldc = kd + 3, n + 1, n + 5  # padded rows: only [:kd] / [:n] of each row is read / written
    ao, bo, co = 2, 1, 7
    a = rng.standard_normal(ao + m * lda)
    b = rng.standard_normal(bo + kd * ldb)
    c = rng.standard_normal(co + m * ldc)
    want = c.copy()
    cw = want[co:].reshape(m, ldc)
    cw[:, :n] += a[ao:].reshape(m, lda)[:, :kd] @ b[bo:].reshape(kd, ldb)[:, :n]
    u = np.uint64
    _mm_acc(a, u(ao), u(lda), b, u(bo), u(ldb), c, u(co), u(ldc), u(m), u(kd), u(n))
    np.testing.assert_allclose(c, want, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(jit_disabled(), reason="no machine code to inspect under NUMBA_DISABLE_JIT=1")
def test_tile_gemm_compiles_to_packed_fma():
    """The tile GEMM's inner loop is vectorised: packed float32 FMAs (`vfmadd...ps`), not only the
    scalar `...ss` form LLVM falls back to when indices may be negative or buffers may alias."""
    import platform
    import re

    from numba import njit

    from axon_kernels._jit import CONTRACT
    from axon_kernels.attention import _mm_acc

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"the assembly check knows x86-64 FMA mnemonics only, this is {platform.machine()}")

    tile_gemm = njit(fastmath=CONTRACT, error_model="numpy")(_mm_acc.py_func)  # uncached: inspect_asm needs a fresh compile
    u = np.uint64
    a = np.ones(64 * 64, np.float32)
    c = np.zeros(64 * 64, np.float32)
    tile_gemm(a, u(0), u(64), a, u(0), u(64), c, u(0), u(64), u(64), u(64), u(64))
    np.testing.assert_array_equal(c, np.full(64 * 64, 64, np.float32))
    asm = tile_gemm.inspect_asm(tile_gemm.signatures[0])
    if "vfmadd" not in asm:
        pytest.skip("this CPU has no FMA instructions (the check looks for packed FMAs)")
    assert re.search(r"vfmadd\d+ps", asm), "the tile GEMM compiled to scalar FMAs only"


def test_backward_on_one_thread_equals_two_threads_and_reference():
    """dQ goes through per-thread buffers summed at the end: one thread and all threads agree."""
    import numba

    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 4, 37, 8))
    k, v = (rng.standard_normal((1, 2, 37, 8)) for _ in range(2))
    out, lse = kernels.flash_attention_ref(q, k, v, causal=True)
    dout = rng.standard_normal(out.shape)
    want = kernels.flash_attention_backward_ref(q, k, v, out, lse, dout, causal=True)
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, before}):
            numba.set_num_threads(threads)
            got = flash_attention_backward_nb(q, k, v, out, lse, dout, causal=True, block_q=8, block_kv=16)
            for g, w in zip(got, want):
                np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("tq, tk", [(1, 1), (1, 70), (3, 130), (130, 130)])
def test_default_tiles_fit_the_shape_and_equal_the_reference(tq, tk):
    """`flash_tile_sizes` (used when block_q / block_kv are None) never exceeds the sequence
    (rounded up to 4 queries / 16 keys), keeps sizes it is given, and the kernels run with it."""
    from axon_kernels.attention import flash_tile_sizes

    bq, bkv = flash_tile_sizes(tq, tk, 8)
    assert 1 <= bq <= max(4, tq) and 1 <= bkv <= max(16, tk) and bq <= 128 and bkv <= 64
    assert flash_tile_sizes(tq, tk, 8, 5, 7) == (5, 7)
    rng = np.random.default_rng(tq + tk)
    q = rng.standard_normal((1, 2, tq, 8)).astype(np.float32)
    k, v = (rng.standard_normal((1, 1, tk, 8)).astype(np.float32) for _ in range(2))
    out, lse = flash_attention_nb(q, k, v, causal=True)
    want, want_lse = kernels.flash_attention_ref(q, k, v, causal=True)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-5, atol=1e-5)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    got = flash_attention_backward_nb(q, k, v, want, want_lse, dout, causal=True)
    for g, w in zip(got, kernels.flash_attention_backward_ref(q, k, v, want, want_lse, dout, causal=True)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
