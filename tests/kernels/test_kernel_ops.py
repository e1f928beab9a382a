"""axon.kernel_ops: the autograd Functions over the kernels give the gradients of autograd
through the reference composition (axon primitives) and of float64 central differences;
F.scaled_dot_product_attention runs the flash kernel when it may."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

import axon
import axon.nn.functional as F
import axon_kernels as kernels
from axon import kernel_ops
from axon.nn.functional import _sdpa_reference
from axon.testing import gradcheck
from axon_kernels._jit import jit_disabled
from axon_kernels.testing import attention_inputs, scan_inputs

EXAMPLES = 8 if jit_disabled() else 20


def _tensors(*arrays):
    return [None if a is None else axon.tensor(np.array(a, dtype=np.float64), requires_grad=True) for a in arrays]


def _grads(out, inputs, seed=0):
    weights = np.random.default_rng(seed).standard_normal(out.shape)
    (out * axon.tensor(weights)).sum().backward()
    return [None if t is None else t.grad.numpy() for t in inputs]


# ---------------------------------------------------------------------------------- attention


@settings(max_examples=EXAMPLES, deadline=None)
@given(attention_inputs(max_len=12, max_dim=8, max_heads=4, max_block=8))
def test_flash_attention_gradients_equal_autograd_through_the_reference(args):
    kw = args.kwargs
    causal = kw["causal"] or kw["window"] is not None  # the kernel's window is causal; axon's needs is_causal
    scale = kw["scale"] if kw["scale"] is not None else kw["q"].shape[-1] ** -0.5
    fast_in = _tensors(kw["q"], kw["k"], kw["v"])
    out = kernel_ops.flash_attention(*fast_in, causal=causal, window=kw["window"], scale=kw["scale"],
                                     block_q=kw["block_q"], block_kv=kw["block_kv"])
    ref_in = _tensors(kw["q"], kw["k"], kw["v"])
    want = _sdpa_reference(*ref_in, None, 0.0, causal, scale, kw["window"])
    np.testing.assert_allclose(out.numpy(), want.numpy(), rtol=1e-10, atol=1e-10)
    for got, exp in zip(_grads(out, fast_in), _grads(want, ref_in)):
        np.testing.assert_allclose(got, exp, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("causal,window,tq", [(False, None, 5), (True, None, 3), (True, 2, 5)])
def test_flash_attention_gradcheck(causal, window, tq):
    rng = np.random.default_rng(0)
    q = axon.tensor(rng.standard_normal((1, 4, tq, 3)))
    k, v = (axon.tensor(rng.standard_normal((1, 2, 5, 3))) for _ in range(2))
    assert gradcheck(lambda q, k, v: kernel_ops.flash_attention(q, k, v, causal=causal, window=window, block_q=2, block_kv=2),
                     [q, k, v], atol=1e-7, rtol=1e-5)


def test_sdpa_dispatches_to_flash_only_without_mask_and_dropout():
    rng = np.random.default_rng(0)
    tq, tk = 320, 448  # Tq * Tk >= FLASH_MIN_SCORES
    assert tq * tk >= kernel_ops.FLASH_MIN_SCORES
    q = axon.tensor(rng.standard_normal((1, 4, tq, 8)).astype(np.float32), requires_grad=True)
    k = axon.tensor(rng.standard_normal((1, 2, tk, 8)).astype(np.float32), requires_grad=True)
    v = axon.tensor(rng.standard_normal((1, 2, tk, 8)).astype(np.float32), requires_grad=True)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, window=80)
    assert out._ctx.fn is kernel_ops.FlashAttention
    want = _sdpa_reference(q, k, v, None, 0.0, True, 8 ** -0.5, 80)
    np.testing.assert_allclose(out.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    (out * axon.tensor(dout)).sum().backward()
    got = [t.grad.numpy() for t in (q, k, v)]
    ref_in = [axon.tensor(t.numpy(), requires_grad=True) for t in (q, k, v)]
    (_sdpa_reference(*ref_in, None, 0.0, True, 8 ** -0.5, 80) * axon.tensor(dout)).sum().backward()
    for g, t in zip(got, ref_in):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-4, atol=1e-5)
    mask = np.ones((tq, tk), dtype=bool)
    assert F.scaled_dot_product_attention(q, k, v, attn_mask=mask)._ctx.fn is not kernel_ops.FlashAttention
    windowed = F.scaled_dot_product_attention(q, k, v, window=80)  # a window implies causal in both
    assert windowed._ctx.fn is kernel_ops.FlashAttention
    np.testing.assert_allclose(windowed.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    assert F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)._ctx.fn is not kernel_ops.FlashAttention
    # one query against a cache: the dense composite is faster, and means the same
    step = F.scaled_dot_product_attention(q[:, :, -1:], k, v, is_causal=True)
    assert step._ctx.fn is not kernel_ops.FlashAttention


# ---------------------------------------------------------------------------------- selective scan


def _scan_composite(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """The scan written with axon primitives, one time step at a time (autograd does the backward)."""
    b, d, l = u.shape
    dt = delta if delta_bias is None else delta + delta_bias.reshape(d, 1)
    if delta_softplus:
        dt = F.softplus(dt)
    x = axon.zeros(b, d, A.shape[1], dtype=u.dtype)
    ys = []
    for t in range(l):
        decay = (dt[:, :, t].unsqueeze(-1) * A).exp()  # [b, d, n]
        x = decay * x + (dt[:, :, t] * u[:, :, t]).unsqueeze(-1) * B[:, :, t].unsqueeze(1)
        ys.append((x * C[:, :, t].unsqueeze(1)).sum(-1))  # [b, d]
    y = axon.stack(ys, dim=-1)  # [b, d, l]
    if D is not None:
        y = y + u * D.reshape(d, 1)
    if z is not None:
        y = y * F.silu(z)
    return y


@settings(max_examples=EXAMPLES, deadline=None)
@given(scan_inputs(max_len=6, max_channels=10, max_state=4))
def test_selective_scan_gradients_equal_autograd_through_the_reference(args):
    kw = args.kwargs
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    fast_in = _tensors(*(kw[n] for n in names))
    ref_in = _tensors(*(kw[n] for n in names))
    y = kernel_ops.selective_scan(*fast_in, delta_softplus=kw["delta_softplus"])
    want = _scan_composite(*ref_in, kw["delta_softplus"])
    np.testing.assert_allclose(y.numpy(), want.numpy(), rtol=1e-10, atol=1e-12)
    for name, got, exp in zip(names, _grads(y, fast_in), _grads(want, ref_in)):
        if exp is None:
            assert got is None
        else:
            np.testing.assert_allclose(got, exp, rtol=1e-9, atol=1e-11, err_msg=f"d{name}")


def test_selective_scan_gradcheck_and_last_state():
    rng = np.random.default_rng(0)
    b, d, l, n = 1, 3, 4, 2
    u, z = (axon.tensor(rng.standard_normal((b, d, l))) for _ in range(2))
    delta = axon.tensor(rng.standard_normal((b, d, l)))
    A = axon.tensor(-np.exp(rng.standard_normal((d, n))))
    B, C = (axon.tensor(rng.standard_normal((b, n, l))) for _ in range(2))
    D, bias = (axon.tensor(rng.standard_normal(d)) for _ in range(2))
    fn = lambda *a: kernel_ops.selective_scan(*a, delta_softplus=True)  # noqa: E731
    assert gradcheck(fn, [u, delta, A, B, C, D, z, bias], atol=1e-7, rtol=1e-5)
    y, last = kernel_ops.selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True, return_last_state=True)
    _, want = kernels.selective_scan_ref(*(t.numpy() for t in (u, delta, A, B, C, D, z, bias)), delta_softplus=True,
                                         return_last_state=True)
    np.testing.assert_allclose(last, want, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------- ternary linear


def test_ternary_linear_forward_matches_the_packed_kernel_and_backward_is_straight_through():
    rng = np.random.default_rng(0)
    x = axon.tensor(rng.standard_normal((2, 3, 16)).astype(np.float32), requires_grad=True)
    w = axon.tensor(rng.standard_normal((5, 16)).astype(np.float32), requires_grad=True)
    b = axon.tensor(rng.standard_normal(5).astype(np.float32), requires_grad=True)
    y = kernel_ops.ternary_linear(x, w, b)
    packed, scale = kernels.ternary_quantize(w.numpy())
    np.testing.assert_allclose(y.numpy(), kernels.ternary_matmul(x.numpy(), packed, scale, 16) + b.numpy(), rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    (y * axon.tensor(dy)).sum().backward()
    t, s = kernels.ternary_codes(w.numpy())
    wq = t / np.float32(s)
    q, a = kernels.quantize_activations(x.numpy())
    xq = q / a
    np.testing.assert_allclose(x.grad.numpy(), dy @ wq, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w.grad.numpy(), dy.reshape(-1, 5).T @ xq.reshape(-1, 16), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.grad.numpy(), dy.reshape(-1, 5).sum(0), rtol=1e-5, atol=1e-6)
