"""`axon_kernels.rope`: the rotary kernel against its NumPy reference, on every layout it reads and writes.

The kernel computes each output as one product plus one product (``x1 c - x2 s``), which
`_jit.CONTRACT` may fuse into a multiply-add: so it equals the reference to within 2 eps of
``|x1 c| + |x2 s|`` per element (the reference rounds both products), and bit for bit on the
channels that pass through. Under NUMBA_DISABLE_JIT=1 `rope_rotate` is the reference and the
same checks hold.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from axon_kernels.rope import rope_rotate, rope_rotate_nb, rope_rotate_ref


def _inputs(rng, b, h, t, dh, d, dtype, layout, batched_tables):
    if layout == "heads":                                      # C-contiguous [B, H, T, Dh]
        x = rng.standard_normal((b, h, t, dh)).astype(dtype)
    elif layout == "split":                                    # a projection's [B, T, H, Dh] seen as [B, H, T, Dh]
        x = rng.standard_normal((b, t, h, dh)).astype(dtype).transpose(0, 2, 1, 3)
    else:                                                      # any other strides: every other head
        x = rng.standard_normal((b, 2 * h, t, dh)).astype(dtype)[:, ::2]
    angles = rng.uniform(-7, 7, size=(b if batched_tables else 1, 1, t, d // 2))
    angles = np.concatenate([angles, angles], axis=-1)         # the rotate_half layout: pair (i, i + D/2)
    return x, np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def _tolerance(x, cos, sin):
    d = cos.shape[-1]
    half = d // 2
    xr = np.abs(x[..., :d].astype(np.float64))
    partner = np.concatenate([xr[..., half:], xr[..., :half]], axis=-1)
    bound = xr * np.abs(cos) + partner * np.abs(sin)          # |x1 c| + |x2 s| per output
    return 2 * np.finfo(x.dtype).eps * bound


@settings(max_examples=60, deadline=None)
@given(b=st.integers(1, 3), h=st.integers(1, 4), t=st.integers(1, 9), half=st.integers(1, 6), extra=st.integers(0, 3),
       dtype=st.sampled_from([np.float32, np.float64]), layout=st.sampled_from(["heads", "split", "strided"]),
       batched=st.booleans(), inverse=st.booleans(), tokens_major=st.booleans(), seed=st.integers(0, 2**16))
def test_kernel_equals_reference(b, h, t, half, extra, dtype, layout, batched, inverse, tokens_major, seed):
    d = 2 * half
    x, cos, sin = _inputs(np.random.default_rng(seed), b, h, t, d + extra, d, dtype, layout, batched)
    want = rope_rotate_ref(x, cos, sin, inverse, tokens_major)
    got = rope_rotate_nb(x, cos, sin, inverse, tokens_major)
    assert got.shape == want.shape == x.shape and got.dtype == want.dtype == x.dtype
    err = np.abs(got[..., :d].astype(np.float64) - want[..., :d])
    assert np.all(err <= _tolerance(x, cos, sin)), err.max()
    np.testing.assert_array_equal(got[..., d:], x[..., d:])   # partial rotary: copied
    memory = got.transpose(0, 2, 1, 3) if tokens_major else got
    assert memory.flags.c_contiguous                           # [B, T, H, Dh] or [B, H, T, Dh] memory


@pytest.mark.parametrize("rotate", [rope_rotate_ref, rope_rotate])
def test_inverse_undoes_the_rotation_and_the_norm_is_kept(rotate):
    x, cos, sin = _inputs(np.random.default_rng(0), 2, 3, 11, 16, 16, np.float64, "split", True)
    y = rotate(x, cos, sin)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-12)
    np.testing.assert_allclose(rotate(y, cos, sin, inverse=True, tokens_major=True), x, rtol=1e-12, atol=1e-12)


def test_pair_i_and_i_plus_half_rotate_by_their_angle():
    """Channel pair (i, i + D/2) is the point (x_i, x_{i+D/2}) turned by the angle (rotate_half)."""
    theta = np.array([0.3, -1.1], np.float64)
    cos = np.cos(np.concatenate([theta, theta]))[None, None, None, :]   # [1, 1, 1, 4]
    sin = np.sin(np.concatenate([theta, theta]))[None, None, None, :]
    x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 4)             # pairs (1, 3) and (2, 4)
    y = rope_rotate(x, cos, sin)[0, 0, 0]
    for i in range(2):
        a, b = x[0, 0, 0, i], x[0, 0, 0, i + 2]
        np.testing.assert_allclose([y[i], y[i + 2]], [a * np.cos(theta[i]) - b * np.sin(theta[i]),
                                                      b * np.cos(theta[i]) + a * np.sin(theta[i])], rtol=1e-14)


def test_nan_and_inf_stay_in_their_pair():
    x, cos, sin = _inputs(np.random.default_rng(1), 1, 2, 3, 8, 8, np.float32, "split", False)
    x = x.copy()
    x[0, 1, 2, 1] = np.nan                                     # pair (1, 5) of head 1, token 2
    x[0, 0, 0, 6] = np.inf                                     # pair (2, 6) of head 0, token 0
    for rotate in (rope_rotate_ref, rope_rotate_nb):
        y = rotate(x, cos, sin)
        bad = ~np.isfinite(y)
        assert bad[0, 1, 2, [1, 5]].all() and bad[0, 0, 0, [2, 6]].all()
        assert bad.sum() == 4


@pytest.mark.parametrize("rotate", [rope_rotate_ref, rope_rotate_nb])
def test_bad_shapes_are_value_errors(rotate):
    x = np.zeros((1, 2, 3, 8), np.float32)
    ok = np.zeros((1, 1, 3, 8), np.float32)
    for cos in (np.zeros((1, 1, 4, 8), np.float32),            # wrong T
                np.zeros((1, 1, 3, 10), np.float32),           # D > Dh
                np.zeros((1, 1, 3, 7), np.float32),            # odd D
                np.zeros((2, 1, 3, 8), np.float32),            # batch 2 for B = 1
                np.zeros((3, 8), np.float32)):                 # not 4-d
        with pytest.raises(ValueError, match="rope"):
            rotate(x, cos, cos)
    with pytest.raises(ValueError, match="rope"):
        rotate(x, ok, np.zeros((1, 1, 3, 6), np.float32))     # cos and sin disagree
    with pytest.raises(ValueError, match="rope"):
        rotate(np.zeros((2, 3, 8), np.float32), ok, ok)       # x not 4-d
    with pytest.raises(ValueError, match="rope"):
        rotate(np.zeros((1, 2, 3, 8), np.int64), ok, ok)      # x not float


def test_empty_inputs():
    x = np.zeros((0, 2, 3, 8), np.float32)
    cos = np.zeros((1, 1, 3, 8), np.float32)
    assert rope_rotate_nb(x, cos, cos).shape == (0, 2, 3, 8)
    x = np.zeros((1, 2, 0, 8), np.float32)
    cos = np.zeros((1, 1, 0, 8), np.float32)
    assert rope_rotate_nb(x, cos, cos, inverse=True, tokens_major=True).shape == (1, 2, 0, 8)
