"""Mamba's selective scan (S6) in mamba_ssm's `selective_scan_fn` convention.

Glossary
    b batch, d channels (d_inner), l sequence length, n state size per channel.
    u, delta, z [b, d, l]; A [d, n]; B, C [b, n, l]; D, delta_bias [d]; state x [b, d, n].

Per channel and step t (dt = softplus(delta + delta_bias) when delta_softplus, else delta + bias):

    x_t = exp(dt_t A) * x_{t-1} + dt_t B_t u_t          (x_{-1} = 0)
    y_t = C_t . x_t + D u_t
    out_t = y_t * silu(z_t)                              (when z is given)

`selective_scan_ref` is the definition (NumPy, a Python loop over t like mamba_ssm's
`selective_scan_ref`). The Numba kernel gives each task a block of channels of one batch row and
keeps their states in a [n, channels] tile, so every inner loop runs along channels and
vectorises (with `fast_exp`). The backward recomputes the states and runs the recurrence for the
state gradient in reverse (docs/kernels.md derives it).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._jit import CONTRACT, fast_exp, fast_log1p, float_array, jit_disabled, result_float_dtype

__all__ = [
    "selective_scan",
    "selective_scan_ref",
    "selective_scan_nb",
    "selective_scan_backward",
    "selective_scan_backward_ref",
    "selective_scan_backward_nb",
    "selective_scan_step",
    "selective_scan_step_ref",
    "selective_scan_step_nb",
    "softplus",
]

_CHANNELS = 64  # channels per Numba task
_STEPS = 16  # time steps per input read: 16 float32 = one 64-byte cache line per channel


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _per_channel(name: str, x, d: int):
    """An optional per-channel vector (``D``, ``delta_bias``): None, or a float array checked to be ``[d]``."""
    if x is None:
        return None
    x = float_array(name, x, ndim=1)
    if x.shape != (d,):
        raise ValueError(f"{name} must be [d] = ({d},), got {x.shape}")
    return x

def _validate(u, delta, A, B, C, D, z, delta_bias, extra=()):
    u = float_array("u", u, ndim=3)
    b, d, l = u.shape
    delta = float_array("delta", delta, ndim=3)
    A = float_array("A", A, ndim=2)
    B = float_array("B", B, ndim=3)
    C = float_array("C", C, ndim=3)
    if delta.shape != u.shape:
        raise ValueError(f"delta must have the shape of u [b, d, l] = {u.shape}, got {delta.shape}")
    if A.shape[0] != d:
        raise ValueError(f"A must be [d, n] with d={d}, got {A.shape}")
    n = A.shape[1]
    for name, x in (("B", B), ("C", C)):
        if x.shape != (b, n, l):
            raise ValueError(f"{name} must be [b, n, l] = {(b, n, l)}, got {x.shape}")
    D = _per_channel("D", D, d)
    delta_bias = _per_channel("delta_bias", delta_bias, d)
    if z is not None:
        z = float_array("z", z, ndim=3)
        if z.shape != u.shape:
            raise ValueError(f"z must have the shape of u [b, d, l] = {u.shape}, got {z.shape}")
    checked = []
    for name, x, dims in extra:  # dims: a string of the glossary's letters, e.g. "bdl"
        shape = tuple({"b": b, "d": d, "l": l, "n": n}[c] for c in dims)
        if x is not None:
            x = float_array(name, x, ndim=len(shape))
            if x.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {x.shape}")
        checked.append(x)
    dtype = result_float_dtype(u, delta, A, B, C, D, z, delta_bias, *checked)
    return (u, delta, A, B, C, D, z, delta_bias, *checked), dtype


def _cast(dtype, *xs):
    return tuple(None if x is None else x.astype(dtype, copy=False) for x in xs)


def softplus(x):
    """torch's softplus (threshold 20): log(1 + exp(x)) for x <= 20, x above."""
    x = np.asarray(x)
    with np.errstate(over="ignore"):
        return np.where(x <= 20, np.log1p(np.exp(np.minimum(x, 20))), x)


def _sigmoid(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


# --------------------------------------------------------------------------------------------
# references
# --------------------------------------------------------------------------------------------


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    """Reference selective scan: y [b, d, l] (and the last state [b, d, n] when asked)."""
    (u, delta, A, B, C, D, z, delta_bias), dtype = _validate(u, delta, A, B, C, D, z, delta_bias)
    u, delta, A, B, C, D, z, delta_bias = _cast(dtype, u, delta, A, B, C, D, z, delta_bias)
    b, d, l = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = softplus(delta).astype(dtype, copy=False)
    delta_a = np.exp(np.einsum("bdl,dn->bdln", delta, A))  # [b, d, l, n]
    delta_b_u = np.einsum("bdl,bnl,bdl->bdln", delta, B, u)  # [b, d, l, n]
    x = np.zeros((b, d, A.shape[1]), dtype)  # [b, d, n]
    y = np.empty((b, d, l), dtype)
    for t in range(l):
        x = delta_a[:, :, t] * x + delta_b_u[:, :, t]
        y[:, :, t] = np.einsum("bdn,bn->bd", x, C[:, :, t])
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * (z * _sigmoid(z))
    y = y.astype(dtype, copy=False)
    return (y, x) if return_last_state else y


def selective_scan_backward_ref(u, delta, A, B, C, dout, D=None, z=None, delta_bias=None, delta_softplus=False, dlast_state=None):
    """Reference gradients of `selective_scan` given d(out) [b, d, l] (and d(last state) [b, d, n]).

    Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias); an entry is None when its input was.
    With g_t = dL/dx_t: g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1} (+ dlast_state at t = l - 1).
    """
    (u, delta, A, B, C, D, z, delta_bias, dout, dlast_state), dtype = _validate(
        u, delta, A, B, C, D, z, delta_bias,
        extra=(("dout", dout, "bdl"), ("dlast_state", dlast_state, "bdn")),
    )
    u, delta, A, B, C, D, z, delta_bias, dout, dlast_state = _cast(dtype, u, delta, A, B, C, D, z, delta_bias, dout, dlast_state)
    b, d, l = u.shape
    n = A.shape[1]
    raw = delta + delta_bias[:, None] if delta_bias is not None else delta
    dt = softplus(raw).astype(dtype, copy=False) if delta_softplus else raw  # [b, d, l]
    decay = np.exp(np.einsum("bdl,dn->bdln", dt, A))  # [b, d, l, n]
    states = np.empty((b, d, l, n), dtype)  # x_t for every t
    x = np.zeros((b, d, n), dtype)
    for t in range(l):
        x = decay[:, :, t] * x + (dt[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        states[:, :, t] = x
    y = np.einsum("bdln,bnl->bdl", states, C)  # [b, d, l]
    if D is not None:
        y = y + u * D[:, None]
    dz = None
    dy = dout
    if z is not None:
        sig = _sigmoid(z)
        dz = dout * y * sig * (1 + z * (1 - sig))  # d silu(z) = sig (1 + z (1 - sig))
        dy = dout * z * sig
    du = dy * D[:, None] if D is not None else np.zeros_like(u)
    dD = (dy * u).sum(axis=(0, 2)) if D is not None else None
    dC = np.einsum("bdl,bdln->bnl", dy, states)  # [b, n, l]
    dB = np.empty((b, n, l), dtype)
    ddt = np.empty((b, d, l), dtype)
    dA = np.zeros((d, n), dtype)
    g = np.zeros((b, d, n), dtype) if dlast_state is None else dlast_state.copy()  # [b, d, n]
    for t in range(l - 1, -1, -1):
        g = g + dy[:, :, t, None] * C[:, None, :, t]
        x_prev = states[:, :, t - 1] if t > 0 else np.zeros((b, d, n), dtype)
        a = decay[:, :, t]
        ddt[:, :, t] = (g * (x_prev * a * A + B[:, None, :, t] * u[:, :, t, None])).sum(axis=-1)
        dA += (g * x_prev * a * dt[:, :, t, None]).sum(axis=0)
        dB[:, :, t] = (g * (dt[:, :, t] * u[:, :, t])[:, :, None]).sum(axis=1)
        du[:, :, t] += (g * dt[:, :, t, None] * B[:, None, :, t]).sum(axis=-1)
        g = g * a
    if delta_softplus:
        ddt = np.where(raw <= 20, ddt * _sigmoid(raw), ddt)
    d_bias = ddt.sum(axis=(0, 2)) if delta_bias is not None else None
    cast = lambda x: None if x is None else np.asarray(x, dtype=dtype)  # noqa: E731
    return tuple(cast(x) for x in (du, ddt, dA, dB, dC, dD, dz, d_bias))


def _validate_step(state, u, delta, A, B, C, D, z, delta_bias):
    if not isinstance(state, np.ndarray) or state.dtype not in (np.float32, np.float64) or state.ndim != 3:
        raise TypeError(f"state must be a float32/float64 ndarray [b, d, n] (it is updated in place), got {type(state).__name__} {getattr(state, 'shape', '')}")
    if not state.flags.writeable:
        raise ValueError("state must be writeable: selective_scan_step updates it in place")
    b, d, n = state.shape
    u = float_array("u", u, ndim=2)
    delta = float_array("delta", delta, ndim=2)
    A = float_array("A", A, ndim=2)
    B = float_array("B", B, ndim=2)
    C = float_array("C", C, ndim=2)
    for name, x, shape in (("u", u, (b, d)), ("delta", delta, (b, d)), ("A", A, (d, n)), ("B", B, (b, n)), ("C", C, (b, n))):
        if x.shape != shape:
            raise ValueError(f"{name} must have shape {shape} (state is [b, d, n] = {state.shape}), got {x.shape}")
    D = _per_channel("D", D, d)
    delta_bias = _per_channel("delta_bias", delta_bias, d)
    if z is not None:
        z = float_array("z", z, ndim=2)
        if z.shape != (b, d):
            raise ValueError(f"z must be [b, d] = {(b, d)}, got {z.shape}")
    return u, delta, A, B, C, D, z, delta_bias


def selective_scan_step_ref(state, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """One decoding step of the scan: updates `state` [b, d, n] in place, returns y [b, d].

    u, delta, z [b, d]; A [d, n]; B, C [b, n]; D, delta_bias [d] (mamba_ssm's
    `selective_state_update`). Feeding a sequence one step at a time from a zero state gives
    `selective_scan(...)` column by column.
    """
    u, delta, A, B, C, D, z, delta_bias = _validate_step(state, u, delta, A, B, C, D, z, delta_bias)
    dtype = state.dtype
    u, delta, A, B, C, D, z, delta_bias = _cast(dtype, u, delta, A, B, C, D, z, delta_bias)
    if delta_bias is not None:
        delta = delta + delta_bias
    if delta_softplus:
        delta = softplus(delta).astype(dtype, copy=False)
    state *= np.exp(delta[:, :, None] * A)  # [b, d, n]
    state += (delta * u)[:, :, None] * B[:, None, :]
    y = np.einsum("bdn,bn->bd", state, C)  # [b, d]
    if D is not None:
        y = y + u * D
    if z is not None:
        y = y * (z * _sigmoid(z))
    return y.astype(dtype, copy=False)


# --------------------------------------------------------------------------------------------
# Numba kernels
# --------------------------------------------------------------------------------------------


@njit(inline="always", error_model="numpy")
def _softplus(x):
    return fast_log1p(fast_exp(x)) if x <= 20.0 else x


@njit(inline="always", error_model="numpy")
def _sigmoid_scalar(x):
    return 1.0 / (1.0 + fast_exp(-x))


@njit(parallel=True, cache=True, nogil=True, fastmath=CONTRACT, error_model="numpy")
def _scan_forward_kernel(u, delta, A, B, C, D, z, delta_bias, has_d, has_z, has_bias, softplus_, y, last_state):
    n_b, d, l = u.shape
    n = A.shape[1]
    chunks = (d + _CHANNELS - 1) // _CHANNELS
    for task in prange(n_b * chunks):
        bi = task // chunks
        c0 = (task % chunks) * _CHANNELS
        m = min(d, c0 + _CHANNELS) - c0
        x = np.zeros((n, m), u.dtype)  # states of this block of channels, [n, m]
        a_t = np.empty((n, m), u.dtype)  # A transposed: loops run along channels
        for k in range(n):
            for j in range(m):
                a_t[k, j] = A[c0 + j, k]
        dt = np.empty(m, u.dtype)
        dtu = np.empty(m, u.dtype)
        bias = np.zeros(m, u.dtype)
        if has_bias:
            for j in range(m):
                bias[j] = delta_bias[c0 + j]
        # inputs are read _STEPS time steps at a time: one cache line per channel instead of a
        # strided load per step (rows l apart map to a handful of L1 sets and evict each other)
        u_buf = np.empty((_STEPS, m), u.dtype)
        d_buf = np.empty((_STEPS, m), u.dtype)
        z_buf = np.empty((_STEPS, m), u.dtype)
        y_buf = np.empty((_STEPS, m), u.dtype)
        b_buf = np.empty((_STEPS, n), u.dtype)
        c_buf = np.empty((_STEPS, n), u.dtype)
        for t0 in range(0, l, _STEPS):
            steps = min(_STEPS, l - t0)
            for j in range(m):
                for s in range(steps):
                    u_buf[s, j] = u[bi, c0 + j, t0 + s]
                    d_buf[s, j] = delta[bi, c0 + j, t0 + s]
            if has_z:
                for j in range(m):
                    for s in range(steps):
                        z_buf[s, j] = z[bi, c0 + j, t0 + s]
            for k in range(n):
                for s in range(steps):
                    b_buf[s, k] = B[bi, k, t0 + s]
                    c_buf[s, k] = C[bi, k, t0 + s]
            for s in range(steps):
                uu = u_buf[s]
                acc = y_buf[s]
                for j in range(m):
                    raw = d_buf[s, j] + bias[j]
                    dt[j] = _softplus(raw) if softplus_ else raw
                    dtu[j] = dt[j] * uu[j]
                    acc[j] = 0.0
                for k in range(n):
                    bk = b_buf[s, k]
                    ck = c_buf[s, k]
                    xk = x[k]
                    ak = a_t[k]
                    for j in range(m):
                        xn = fast_exp(dt[j] * ak[j]) * xk[j] + dtu[j] * bk
                        xk[j] = xn
                        acc[j] += xn * ck
                if has_d:
                    for j in range(m):
                        acc[j] += D[c0 + j] * uu[j]
                if has_z:
                    gate = z_buf[s]
                    for j in range(m):
                        acc[j] *= gate[j] * _sigmoid_scalar(gate[j])
            for j in range(m):
                for s in range(steps):
                    y[bi, c0 + j, t0 + s] = y_buf[s, j]
        for j in range(m):
            for k in range(n):
                last_state[bi, c0 + j, k] = x[k, j]


@njit(parallel=True, cache=True, nogil=True, fastmath=CONTRACT, error_model="numpy")
def _scan_backward_kernel(u, delta, A, B, C, D, z, delta_bias, dout, dlast, has_d, has_z, has_bias, softplus_, has_dlast,
                          du, ddelta, dz, dA_part, dB_part, dC_part, dD_part, dbias_part):
    # dA_part [b, d, n], dD_part / dbias_part [b, d]: per batch row, summed by the caller;
    # dB_part / dC_part [b, chunks, n, l]: per channel block, summed by the caller.
    # Each task gathers its block into [l, m] buffers (contiguous along channels), so the
    # inner loops vectorise; the sums over channels (dB, dC) are separate scalar loops.
    n_b, d, l = u.shape
    n = A.shape[1]
    chunks = (d + _CHANNELS - 1) // _CHANNELS
    for task in prange(n_b * chunks):
        bi = task // chunks
        ci = task % chunks
        c0 = ci * _CHANNELS
        m = min(d, c0 + _CHANNELS) - c0
        a_t = np.empty((n, m), u.dtype)
        for k in range(n):
            for j in range(m):
                a_t[k, j] = A[c0 + j, k]
        uu = np.empty((l, m), u.dtype)
        raw = np.empty((l, m), u.dtype)  # delta + bias
        go = np.empty((l, m), u.dtype)  # d(out)
        zz = np.zeros((l, m), u.dtype)
        for j in range(m):
            for t in range(l):
                uu[t, j] = u[bi, c0 + j, t]
                raw[t, j] = delta[bi, c0 + j, t] + (delta_bias[c0 + j] if has_bias else 0.0)
                go[t, j] = dout[bi, c0 + j, t]
                if has_z:
                    zz[t, j] = z[bi, c0 + j, t]
        dts = np.empty((l, m), u.dtype)
        for t in range(l):
            for j in range(m):
                dts[t, j] = _softplus(raw[t, j]) if softplus_ else raw[t, j]
        states = np.zeros((l + 1, n, m), u.dtype)  # states[t + 1] = x_t, states[0] = 0
        for t in range(l):  # forward again, keeping the states
            for k in range(n):
                bk = B[bi, k, t]
                for j in range(m):
                    states[t + 1, k, j] = fast_exp(dts[t, j] * a_t[k, j]) * states[t, k, j] + dts[t, j] * uu[t, j] * bk
        g = np.zeros((n, m), u.dtype)  # dL/dx_t flowing back from later steps
        if has_dlast:
            for k in range(n):
                for j in range(m):
                    g[k, j] = dlast[bi, c0 + j, k]
        dy = np.empty(m, u.dtype)
        yv = np.empty(m, u.dtype)
        ddt = np.empty(m, u.dtype)
        du_t = np.empty(m, u.dtype)
        pb = np.empty(m, u.dtype)
        pc = np.empty(m, u.dtype)
        d_d = np.zeros(m, u.dtype)
        d_bias = np.zeros(m, u.dtype)
        da = np.zeros((n, m), u.dtype)
        out_du = np.empty((l, m), u.dtype)
        out_ddt = np.empty((l, m), u.dtype)
        out_dz = np.zeros((l, m), u.dtype)
        dvec = np.zeros(m, u.dtype)
        if has_d:
            for j in range(m):
                dvec[j] = D[c0 + j]
        for t in range(l - 1, -1, -1):
            if has_z:
                for j in range(m):
                    yv[j] = 0.0
                for k in range(n):
                    ck = C[bi, k, t]
                    for j in range(m):
                        yv[j] += states[t + 1, k, j] * ck
                for j in range(m):
                    zj = zz[t, j]
                    sig = _sigmoid_scalar(zj)
                    out_dz[t, j] = go[t, j] * (yv[j] + dvec[j] * uu[t, j]) * sig * (1.0 + zj * (1.0 - sig))
                    dy[j] = go[t, j] * zj * sig
            else:
                for j in range(m):
                    dy[j] = go[t, j]
            for j in range(m):
                du_t[j] = dy[j] * dvec[j]
                d_d[j] += dy[j] * uu[t, j]
                ddt[j] = 0.0
            for k in range(n):
                ck = C[bi, k, t]
                bk = B[bi, k, t]
                gk = g[k]
                ak = a_t[k]
                dak = da[k]
                x_prev = states[t, k]
                x_now = states[t + 1, k]
                for j in range(m):
                    gj = gk[j] + dy[j] * ck
                    dtj = dts[t, j]
                    decay = fast_exp(dtj * ak[j])
                    ddt[j] += gj * (x_prev[j] * decay * ak[j] + bk * uu[t, j])
                    dak[j] += gj * x_prev[j] * decay * dtj
                    du_t[j] += gj * dtj * bk
                    pb[j] = gj * dtj * uu[t, j]
                    pc[j] = dy[j] * x_now[j]
                    gk[j] = gj * decay
                sb = 0.0
                sc = 0.0
                for j in range(m):
                    sb += pb[j]
                    sc += pc[j]
                dB_part[bi, ci, k, t] = sb
                dC_part[bi, ci, k, t] = sc
            for j in range(m):
                g_raw = ddt[j]
                if softplus_ and raw[t, j] <= 20.0:
                    g_raw *= _sigmoid_scalar(raw[t, j])
                out_ddt[t, j] = g_raw
                d_bias[j] += g_raw
                out_du[t, j] = du_t[j]
        for j in range(m):
            for t in range(l):
                du[bi, c0 + j, t] = out_du[t, j]
                ddelta[bi, c0 + j, t] = out_ddt[t, j]
                dz[bi, c0 + j, t] = out_dz[t, j]
            dD_part[bi, c0 + j] = d_d[j]
            dbias_part[bi, c0 + j] = d_bias[j]
            for k in range(n):
                dA_part[bi, c0 + j, k] = da[k, j]


@njit(cache=True, nogil=True, fastmath=CONTRACT, error_model="numpy")
def _scan_step_kernel(state, u, delta, A, B, C, D, z, delta_bias, has_d, has_z, has_bias, softplus_, y):
    n_b, d, n = state.shape
    for bi in range(n_b):
        for j in range(d):
            raw = delta[bi, j]
            if has_bias:
                raw += delta_bias[j]
            dt = _softplus(raw) if softplus_ else raw
            dtu = dt * u[bi, j]
            out = 0.0
            for k in range(n):
                xn = fast_exp(dt * A[j, k]) * state[bi, j, k] + dtu * B[bi, k]
                state[bi, j, k] = xn
                out += xn * C[bi, k]
            if has_d:
                out += D[j] * u[bi, j]
            if has_z:
                out *= z[bi, j] * _sigmoid_scalar(z[bi, j])
            y[bi, j] = out


def _contiguous(dtype, *named):
    """C-contiguous arrays of `dtype`; None becomes an empty placeholder (of the same rank) the kernels ignore."""
    return tuple(np.empty((0,) * ndim, dtype) if x is None else np.ascontiguousarray(x, dtype=dtype) for x, ndim in named)


def selective_scan_nb(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    """Numba selective scan (always runs the `@njit` kernel); same contract as the reference."""
    (u, delta, A, B, C, D, z, delta_bias), dtype = _validate(u, delta, A, B, C, D, z, delta_bias)
    b, d, l = u.shape
    y = np.empty((b, d, l), dtype)
    last = np.zeros((b, d, A.shape[1]), dtype)
    if u.size:
        _scan_forward_kernel(*_contiguous(dtype, (u, 3), (delta, 3), (A, 2), (B, 3), (C, 3), (D, 1), (z, 3), (delta_bias, 1)),
                             D is not None, z is not None, delta_bias is not None, bool(delta_softplus), y, last)
    return (y, last) if return_last_state else y


def selective_scan_backward_nb(u, delta, A, B, C, dout, D=None, z=None, delta_bias=None, delta_softplus=False, dlast_state=None):
    """Numba selective-scan backward; same contract as `selective_scan_backward_ref`."""
    (u, delta, A, B, C, D, z, delta_bias, dout, dlast_state), dtype = _validate(
        u, delta, A, B, C, D, z, delta_bias,
        extra=(("dout", dout, "bdl"), ("dlast_state", dlast_state, "bdn")),
    )
    b, d, l = u.shape
    n = A.shape[1]
    chunks = max(1, (d + _CHANNELS - 1) // _CHANNELS)
    du = np.zeros((b, d, l), dtype)
    ddelta = np.zeros((b, d, l), dtype)
    dz = np.zeros((b, d, l), dtype)
    dA_part = np.zeros((b, d, n), dtype)
    dB_part = np.zeros((b, chunks, n, l), dtype)
    dC_part = np.zeros((b, chunks, n, l), dtype)
    dD_part = np.zeros((b, d), dtype)
    dbias_part = np.zeros((b, d), dtype)
    if u.size:
        _scan_backward_kernel(*_contiguous(dtype, (u, 3), (delta, 3), (A, 2), (B, 3), (C, 3), (D, 1), (z, 3), (delta_bias, 1), (dout, 3), (dlast_state, 3)),
                              D is not None, z is not None, delta_bias is not None, bool(delta_softplus), dlast_state is not None,
                              du, ddelta, dz, dA_part, dB_part, dC_part, dD_part, dbias_part)
    return (
        du,
        ddelta,
        dA_part.sum(axis=0),  # [b, d, n] -> [d, n]
        dB_part.sum(axis=1),  # [b, chunks, n, l] -> [b, n, l]
        dC_part.sum(axis=1),
        dD_part.sum(axis=0) if D is not None else None,  # [b, d] -> [d]
        dz if z is not None else None,
        dbias_part.sum(axis=0) if delta_bias is not None else None,
    )


def selective_scan_step_nb(state, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Numba one-step scan update (always runs the `@njit` kernel); same contract as the reference."""
    u, delta, A, B, C, D, z, delta_bias = _validate_step(state, u, delta, A, B, C, D, z, delta_bias)
    dtype = state.dtype
    y = np.empty(state.shape[:2], dtype)  # [b, d]
    work = state if state.flags.c_contiguous else np.ascontiguousarray(state)
    _scan_step_kernel(work, *_contiguous(dtype, (u, 2), (delta, 2), (A, 2), (B, 2), (C, 2), (D, 1), (z, 2), (delta_bias, 1)),
                      D is not None, z is not None, delta_bias is not None, bool(delta_softplus), y)
    if work is not state:
        state[...] = work
    return y


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    """Selective scan (mamba_ssm `selective_scan_fn` convention): y [b, d, l] (+ last state [b, d, n]).

    u, delta, z [b, d, l]; A [d, n]; B, C [b, n, l]; D, delta_bias [d]. See the module
    docstring for the recurrence. Runs the Numba kernel, or the reference when the JIT is off.
    """
    if jit_disabled():
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return selective_scan_nb(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def selective_scan_backward(u, delta, A, B, C, dout, D=None, z=None, delta_bias=None, delta_softplus=False, dlast_state=None):
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias) of `selective_scan` (None for absent inputs)."""
    if jit_disabled():
        return selective_scan_backward_ref(u, delta, A, B, C, dout, D, z, delta_bias, delta_softplus, dlast_state)
    return selective_scan_backward_nb(u, delta, A, B, C, dout, D, z, delta_bias, delta_softplus, dlast_state)


def selective_scan_step(state, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """One decoding step: updates `state` [b, d, n] in place and returns y [b, d] (see the reference)."""
    if jit_disabled():
        return selective_scan_step_ref(state, u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return selective_scan_step_nb(state, u, delta, A, B, C, D, z, delta_bias, delta_softplus)
