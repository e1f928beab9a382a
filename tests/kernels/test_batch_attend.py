"""axon_kernels.batch_attend: one call for the RoPE, cache write and attention of n rows against
its reference, the per-row `rope_attend` loop (rows at different positions over a left-padded
cache, the serial and the parallel kernel, rows cut into blocks), and its NumPy reference."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from axon_kernels import batch_attend as ba
from axon_kernels.decode import rope_attend, rope_attend_ref


def _case(n, h, hkv, d, length, slot, lo, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, h, d), dtype=np.float32)                      # [n, H, D]
    k = rng.standard_normal((n, hkv, d), dtype=np.float32)                    # [n, Hkv, D]
    v = rng.standard_normal((n, hkv, d), dtype=np.float32)
    kc = rng.standard_normal((n + 1, hkv, length, d), dtype=np.float32)       # one idle row past n
    vc = rng.standard_normal((n + 1, hkv, length, d), dtype=np.float32)
    ang = rng.uniform(0, 6, size=(n, d // 2)).astype(np.float32)             # each row its own position
    cos = np.concatenate([np.cos(ang), np.cos(ang)], axis=1)                  # [n, D]
    sin = np.concatenate([np.sin(ang), np.sin(ang)], axis=1)
    return q, k, v, kc, vc, slot, np.asarray(lo, np.int64), cos, sin


def _per_row(case, scale, one=rope_attend):
    q, k, v, kc, vc, slot, lo, cos, sin = [np.copy(a) if isinstance(a, np.ndarray) else a for a in case]
    out = np.empty_like(q)
    for r in range(q.shape[0]):
        one(q[r], k[r], v[r], kc[r], vc[r], slot, int(lo[r]), cos[r], sin[r], scale, out[r])
    return out, q, k, kc, vc


def _batched(case, scale, kern=None):
    q, k, v, kc, vc, slot, lo, cos, sin = [np.copy(a) if isinstance(a, np.ndarray) else a for a in case]
    out = np.empty_like(q)
    if kern is None:
        ba.batch_rope_attend(q, k, v, kc, vc, slot, lo, cos, sin, scale, out)
    else:
        kern(q, k, v, kc, vc, slot, lo, cos, sin, scale, out, numba.get_num_threads())
    return out, q, k, kc, vc


@pytest.mark.parametrize("lo", [[0, 5, 11, 3], [17, 17, 2, 9]])
def test_one_call_equals_the_per_row_loop_bit_for_bit(lo):
    case = _case(4, 6, 2, 16, length=24, slot=17, lo=lo)
    want = _per_row(case, 0.25)
    kerns = [None] if numba.config.DISABLE_JIT else [None, ba._batch_rope_attend_nb, ba._batch_rope_attend_serial_nb]
    for kern in kerns:
        got = _batched(case, 0.25, kern)
        for a, b in zip(got, want):                                           # out, rotated q/k, caches
            np.testing.assert_array_equal(a, b)
    ref = _per_row(case, 0.25, rope_attend_ref)
    for a, b in zip(_batched(case, 0.25), ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert (want[3][4] == case[3][4]).all()                                  # the idle row is untouched


def test_long_rows_are_cut_into_the_blocks_rope_attend_cuts_them_into():
    case = _case(3, 8, 2, 32, length=700, slot=650, lo=[0, 600, 100])
    blocks = ba.row_blocks(650, case[6], 8, 32, 2, threads=2)
    assert blocks == [3, 1, 3]                                       # the short row stays whole
    want = _per_row(case, 0.2)
    got = _batched(case, 0.2)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(got[0], _per_row(case, 0.2, rope_attend_ref)[0], rtol=1e-4, atol=1e-5)


def test_float16_cache_goes_through_rope_attend_row_by_row():
    case = list(_case(2, 4, 2, 8, length=12, slot=7, lo=[0, 4]))
    case[3], case[4] = case[3].astype(np.float16), case[4].astype(np.float16)
    for a, b in zip(_batched(tuple(case), 0.3), _per_row(tuple(case), 0.3)):
        np.testing.assert_array_equal(a, b)
