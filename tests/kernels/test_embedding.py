"""`axon_kernels.embedding`: the embedding gradient kernel equals its NumPy reference bit for bit
(both add each id's rows in token order), on repeated, unseen and padding ids."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from axon_kernels.embedding import embedding_backward, embedding_backward_nb, embedding_backward_ref


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 40), vocab=st.integers(1, 12), d=st.integers(1, 9), dtype=st.sampled_from([np.float32, np.float64]),
       padding=st.booleans(), seed=st.integers(0, 2**16))
def test_kernel_equals_reference_bit_for_bit(n, vocab, d, dtype, padding, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=n)
    g = rng.standard_normal((n, d)).astype(dtype)
    pad = int(rng.integers(0, vocab)) if padding else None
    want = embedding_backward_ref(ids, g, vocab, pad)
    got = embedding_backward_nb(ids, g, vocab, pad)
    assert got.shape == (vocab, d) and got.dtype == want.dtype == dtype
    np.testing.assert_array_equal(got, want)


def test_rows_of_each_id_are_summed_and_unseen_ids_are_zero():
    ids = np.array([2, 0, 2, 2])
    g = np.array([[1.0, 2.0], [10.0, 20.0], [100.0, 200.0], [1000.0, 2000.0]], np.float32)
    np.testing.assert_array_equal(embedding_backward(ids, g, 4), [[10, 20], [0, 0], [1101, 2202], [0, 0]])
    np.testing.assert_array_equal(embedding_backward(ids, g, 4, padding_idx=2), [[10, 20], [0, 0], [0, 0], [0, 0]])


def test_nan_reaches_only_its_id():
    g = np.ones((3, 2), np.float32)
    g[1, 0] = np.nan
    for fn in (embedding_backward_ref, embedding_backward_nb):
        gw = fn(np.array([0, 1, 0]), g, 3)
        assert np.isnan(gw[1, 0]) and np.isfinite(np.delete(gw.reshape(-1), 2)).all()


@pytest.mark.parametrize("fn", [embedding_backward_ref, embedding_backward_nb])
def test_bad_input_is_a_clear_error(fn):
    g = np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        fn(np.array([0, 3, 1]), g, 3)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        fn(np.array([0, -1, 1]), g, 3)
    with pytest.raises(ValueError, match="ids \\[N\\] and g \\[N, D\\]"):
        fn(np.array([0, 1]), g, 3)
    with pytest.raises(TypeError, match="integers"):
        fn(np.array([0.0, 1.0, 2.0]), g, 3)
