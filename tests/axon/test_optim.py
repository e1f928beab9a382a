"""Optimizers against the published update rules, schedules, clipping, state dicts, and an
end-to-end fit of a non-linear problem."""

from __future__ import annotations

import math

import numpy as np
import pytest

import axon
import axon.nn as nn
import axon.nn.functional as F
from axon.optim import SGD, Adam, AdamW, StepLR, WarmupCosineLR, clip_grad_norm_


def run(opt_cls, steps=3, p0=1.0, **kw):
    """Minimise p^2 (grad 2p) from p0 in float64; return the trajectory of p."""
    p = nn.Parameter(np.array([p0]))
    opt = opt_cls([p], **kw)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        (p * p).sum().backward()
        opt.step()
        out.append(float(p.data[0]))
    return out


def test_sgd_momentum_weight_decay_hand_checked():
    # constant grad 0.5 (loss 0.5 p), lr 0.1, momentum 0.9, wd 0.1:
    # g1 = 0.5 + 0.1 * 1 = 0.6, b1 = 0.6, p1 = 1 - 0.06 = 0.94
    # g2 = 0.5 + 0.094 = 0.594, b2 = 0.9 * 0.6 + 0.594 = 1.134, p2 = 0.94 - 0.1134 = 0.8266
    p = nn.Parameter(np.array([1.0]))
    opt = SGD([p], lr=0.1, momentum=0.9, weight_decay=0.1)
    got = []
    for _ in range(2):
        opt.zero_grad()
        (p * 0.5).sum().backward()
        opt.step()
        got.append(float(p.data[0]))
    assert got == pytest.approx([0.94, 0.8266], abs=1e-12)


def test_sgd_nesterov_hand_checked():
    # g1 = 0.6, b1 = 0.6, step = g1 + 0.9 b1 = 1.14, p1 = 0.886
    # g2 = 0.5 + 0.0886 = 0.5886, b2 = 0.54 + 0.5886 = 1.1286, step = 0.5886 + 1.01574 = 1.60434, p2 = 0.725566
    p = nn.Parameter(np.array([1.0]))
    opt = SGD([p], lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True)
    got = []
    for _ in range(2):
        opt.zero_grad()
        (p * 0.5).sum().backward()
        opt.step()
        got.append(float(p.data[0]))
    assert got == pytest.approx([0.886, 0.725566], abs=1e-12)


def test_plain_sgd():
    assert run(SGD, steps=2, lr=0.25) == pytest.approx([0.5, 0.25])


def adam_reference(steps, lr, b1, b2, eps, wd, decoupled, p=1.0):
    """Kingma & Ba (Algorithm 1) with torch's L2 decay, or Loshchilov & Hutter's decoupled decay."""
    m = v = 0.0
    out = []
    for t in range(1, steps + 1):
        g = 2 * p
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1**t), v / (1 - b2**t)
        p = p - lr * mhat / (math.sqrt(vhat) + eps)
        out.append(p)
    return out


def test_adamw_first_step_by_hand_and_later_steps_by_formula():
    # step 1: g = 2, p <- 1 * (1 - 0.1 * 0.1) = 0.99; mhat = 2, vhat = 4; p <- 0.99 - 0.1 * 2 / (2 + 1e-8)
    got = run(AdamW, steps=5, lr=0.1, weight_decay=0.1)
    assert got[0] == pytest.approx(0.99 - 0.1 * 2 / (2 + 1e-8), abs=1e-14)
    assert got == pytest.approx(adam_reference(5, 0.1, 0.9, 0.999, 1e-8, 0.1, True), abs=1e-12)


def test_adam_l2_decay_by_formula():
    got = run(Adam, steps=5, lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.2)
    assert got == pytest.approx(adam_reference(5, 0.05, 0.8, 0.99, 1e-6, 0.2, False), abs=1e-12)
    # Adam and AdamW differ exactly when weight decay is on
    assert run(Adam, lr=0.1) == pytest.approx(run(AdamW, lr=0.1, weight_decay=0.0))


def test_param_groups_and_skipping_params_without_grad():
    a, b = nn.Parameter(np.ones(1)), nn.Parameter(np.ones(1))
    opt = SGD([{"params": [a], "lr": 0.5}, {"params": [b]}], lr=0.1)
    (a * 1.0).sum().backward()
    opt.step()
    assert a.data[0] == 0.5 and b.data[0] == 1.0
    c = nn.Parameter(np.ones(1))
    opt.add_param_group({"params": [c], "lr": 0.25})
    (c * 1.0).sum().backward()
    opt.step()
    assert c.data[0] == 0.75 and opt.param_groups[-1]["momentum"] == 0.0
    with pytest.raises(ValueError, match="more than one"):
        opt.add_param_group({"params": [a]})


def test_clip_grad_norm():
    a, b = nn.Parameter(np.zeros(1)), nn.Parameter(np.zeros(1))
    a.grad, b.grad = axon.tensor(np.array([3.0])), axon.tensor(np.array([4.0]))
    total = clip_grad_norm_([a, b], max_norm=1.0)
    assert total.item() == pytest.approx(5.0)
    assert a.grad.item() == pytest.approx(0.6, rel=1e-5) and b.grad.item() == pytest.approx(0.8, rel=1e-5)
    assert clip_grad_norm_([a, b], max_norm=10.0).item() == pytest.approx(1.0, rel=1e-5)
    assert a.grad.item() == pytest.approx(0.6, rel=1e-5)


def test_warmup_cosine_and_step_schedules():
    p = nn.Parameter(np.ones(1))
    opt = SGD([p], lr=1.0)
    sched = WarmupCosineLR(opt, warmup_steps=2, total_steps=6, min_lr_ratio=0.1)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(7):
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    cos = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / 4)) for i in range(5)]
    assert lrs == pytest.approx([0.0, 0.5] + cos + [0.1])
    opt2 = SGD([p], lr=0.8)
    step = StepLR(opt2, step_size=2, gamma=0.5)
    seen = [opt2.param_groups[0]["lr"]]
    for _ in range(4):
        step.step()
        seen.append(opt2.param_groups[0]["lr"])
    assert seen == pytest.approx([0.8, 0.8, 0.4, 0.4, 0.2])


def test_optimizer_state_dict_round_trip_continues_identically():
    def make():
        axon.manual_seed(0)
        return nn.Linear(3, 2).double()

    x = axon.tensor(np.random.default_rng(0).standard_normal((4, 3)))
    m1 = make()
    opt1 = AdamW(m1.parameters(), lr=0.1)
    for _ in range(3):
        opt1.zero_grad()
        m1(x).pow(2).sum().backward()
        opt1.step()
    m2 = make()
    m2.load_state_dict({k: v.copy() for k, v in m1.state_dict().items()})
    opt2 = AdamW(m2.parameters(), lr=0.5)
    opt2.load_state_dict(opt1.state_dict())
    assert opt2.param_groups[0]["lr"] == 0.1
    for m, opt in ((m1, opt1), (m2, opt2)):
        opt.zero_grad()
        m(x).pow(2).sum().backward()
        opt.step()
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert np.array_equal(a.data, b.data)


def test_optimizer_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="Nesterov"):
        SGD([nn.Parameter(np.ones(1))], lr=0.1, nesterov=True)


def test_mlp_with_adamw_fits_concentric_circles():
    """A non-linear problem: inner disc vs outer ring (no linear separator exists)."""
    axon.manual_seed(0)
    r = np.random.default_rng(0)
    n = 512
    radius = np.where(r.random(n) < 0.5, r.uniform(0, 1, n), r.uniform(1.5, 2.5, n))
    angle = r.uniform(0, 2 * np.pi, n)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1).astype(np.float32)
    y = (radius > 1.25).astype(np.int64)
    model = nn.Sequential(nn.Linear(2, 32), nn.GELU(), nn.Linear(32, 2))
    opt = AdamW(model.parameters(), lr=0.02, weight_decay=0.01)
    xt = axon.tensor(x)
    for _ in range(150):
        loss = F.cross_entropy(model(xt), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with axon.no_grad():
        acc = (model(xt).argmax(-1).numpy() == y).mean()
    assert acc >= 0.95, f"accuracy {acc:.3f}"
    assert loss.dtype == np.float32 and all(p.dtype == np.float32 for p in model.parameters())


# ------------------------------------------------------------------------------ the fused AdamW kernel
@pytest.mark.parametrize("decoupled, wd", [(True, 0.01), (False, 0.1), (True, 0.0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_adamw_kernel_equals_the_unfused_numpy_update(decoupled, wd, dtype):
    """`adamw_step_nb` (one fused Numba pass) equals `adamw_step_ref` (the NumPy in-place
    sequence) over 5 steps, to float rounding: each element's update is ~10 roundings of the
    dtype's unit roundoff on values of magnitude <~ 3, so float32 agrees to ~1e-6 relative and
    float64 to ~1e-14; a wrong bias correction or decay is off by > 1e-3."""
    from axon_kernels.adamw import adamw_step_nb, adamw_step_ref

    rng = np.random.default_rng(3)
    p0 = rng.standard_normal((37, 11)).astype(dtype)
    states = [[p0.copy(), np.zeros_like(p0), np.zeros_like(p0)] for _ in range(2)]
    for step in range(1, 6):
        g = rng.standard_normal(p0.shape).astype(dtype)
        for fn, (p, m, v) in zip((adamw_step_nb, adamw_step_ref), states):
            fn(p, g, m, v, 1e-2, 0.9, 0.999, 1e-8, wd, step, decoupled)
    tol = 2e-6 if dtype == np.float32 else 1e-13
    for fused, ref in zip(*states):
        assert fused.dtype == dtype
        np.testing.assert_allclose(fused, ref, rtol=tol, atol=tol)
    assert not np.allclose(states[0][0], p0)                              # it moved


def test_fused_adamw_kernel_propagates_nan_like_the_reference():
    """A NaN gradient gives a NaN parameter and moments in both (no fastmath)."""
    from axon_kernels.adamw import adamw_step_nb, adamw_step_ref

    for fn in (adamw_step_nb, adamw_step_ref):
        p, m, v = np.ones(4, np.float32), np.zeros(4, np.float32), np.zeros(4, np.float32)
        g = np.array([0.5, np.nan, -0.5, np.inf], np.float32)
        with np.errstate(invalid="ignore"):
            fn(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.01, 1, True)
        assert np.isnan(p[1]) and np.isnan(m[1]) and np.isfinite(p[0]) and np.isfinite(p[2])


def test_fused_adamw_kernel_divides_by_zero_like_the_reference():
    """eps = 0 with v = 0 is 0 / 0: NaN in both (the kernel's numpy error model), no exception."""
    from axon_kernels.adamw import adamw_step_nb, adamw_step_ref

    for fn in (adamw_step_nb, adamw_step_ref):
        p, m, v = np.ones(3, np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            fn(p, np.array([0.0, 1.0, 0.0], np.float32), m, v, 1e-3, 0.9, 0.999, 0.0, 0.0, 1, True)
        assert np.isnan(p[0]) and np.isnan(p[2]) and np.isfinite(p[1])


def test_fused_adamw_kernel_is_vectorised():
    """The loop compiles to packed square roots (x86-64): with Numba's default (Python) error
    model it checked each division for zero and stayed scalar, ~11x slower."""
    import platform
    import re

    from numba import njit

    from axon_kernels._jit import jit_disabled
    from axon_kernels.adamw import _adamw_flat

    if jit_disabled() or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the assembly check needs the JIT and knows x86-64 mnemonics only")
    fresh = njit(error_model="numpy")(_adamw_flat.py_func)               # uncached: inspect_asm needs a compile
    a = np.ones(64, np.float32)
    t = np.float32
    fresh(a, a.copy(), a.copy(), a.copy(), t(1), t(0), t(0.9), t(0.1), t(0.999), t(0.001), t(1), t(1e-8), t(1e-3))
    asm = fresh.inspect_asm(fresh.signatures[0])
    assert re.search(r"v?sqrtps\s+%[xyz]mm", asm), "the AdamW loop compiled to scalar square roots only"


def test_a_large_models_parameters_are_shared_out_between_threads_with_the_same_result():
    """Above `PARALLEL_MIN_VALUES` the parameters go to the threads in balanced shares of whole
    parameters (`_share_out`); every update is the same as one thread's, bit for bit."""
    import numba

    from axon.optim import optimizer as opt_module

    rng = np.random.default_rng(0)
    shapes = [(512, 256), (256,), (700, 300), (3, 5), (1000, 100), (64,)]
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(3)]
    results = []
    before = numba.get_num_threads()
    for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
        numba.set_num_threads(threads)
        try:
            params = [axon.Tensor(a.copy(), requires_grad=True) for a in start]
            opt = axon.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
            for step in grads:
                for p, g in zip(params, step):
                    p.grad = axon.Tensor(g)
                opt.step()
            results.append([p.numpy() for p in params])
        finally:
            numba.set_num_threads(before)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    updates = [(np.empty(s, np.float32),) for s in shapes]
    assert sum(a[0].size for a in updates) >= opt_module.PARALLEL_MIN_VALUES
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        shares = opt_module._share_out(updates)
    finally:
        numba.set_num_threads(before)
    assert sorted(id(u) for share in shares for u in share) == sorted(id(u) for u in updates)   # each once
    if len(shares) == 2:
        sizes = sorted(sum(u[0].size for u in share) for share in shares)
        assert sizes[1] - sizes[0] <= max(a[0].size for a in updates)                      # balanced
    assert opt_module._share_out(updates[3:4]) == [updates[3:4]]                              # small: one share
