"""The Mamba mixer: the selective state-space layer shared by SSM (Mamba) and Hydra.

Glossary (the symbols of Gu & Dao, "Mamba", 2023, and of ``docs/models/ssm.md``)::

    B_  batch size                   T   sequence length (tokens fed in this call)
    d   hidden size (d_model)        di  inner size = expand * d
    n   state size (d_state)         k   depthwise-convolution width (d_conv)
    r   rank of the time-step projection (dt_rank = ceil(d / 16))
    x   the mixer's input stream     z   the gate stream       u  conv(x) after SiLU
    delta = softplus(dt_proj(dt))    A = -exp(A_log)  [di, n]   B, C  [B_, n, T]  D [di]
    h_t = exp(delta_t A) * h_{t-1} + delta_t B_t u_t ;  y_t = C_t . h_t + D u_t ;  out = y * silu(z)

Module attribute names are the transformers ``MambaMixer`` names (``in_proj``, ``conv1d``,
``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``), so its checkpoints load by lookup.

Two code paths, one recurrence:

* no cache (training, scoring): the whole sequence goes through ``axon.kernel_ops.selective_scan``
  (the autograd Function over ``kernels.selective_scan`` and its analytic backward), so every
  parameter (``A_log``, ``D`` and ``dt_proj.bias`` included) gets its exact gradient;
* with a :class:`MambaState` (streaming decode): the causal convolution reads the last
  ``k - 1`` inputs kept in ``conv_state`` and the recurrence starts from ``ssm_state``.
  This path is inference only (it runs under ``no_grad`` semantics: no graph is recorded
  through the cached state).
"""

from __future__ import annotations

import math

import numpy as np

import axon
import axon.nn.functional as F
import axon_kernels as kernels
from axon import kernel_ops, nn
from axon_llm.cache import Cache, reorder_rows

__all__ = ["MambaMixer", "MambaState", "causal_depthwise_conv1d"]


class MambaState(Cache):
    """Streaming state of one Mamba mixer: ``conv_state`` [B, di, k-1] and ``ssm_state`` [B, di, n].

    ``conv_state`` holds the last ``k - 1`` inputs of the depthwise convolution (zeros before
    the first token, which is exactly the causal zero padding of the full forward);
    ``ssm_state`` is ``h`` after the last token fed. Its size does not grow with the tokens fed
    (``max_length`` is None). See :class:`axon_llm.cache.Cache` for the interface.
    """

    max_length = None

    def __init__(self, batch_size: int, intermediate_size: int, state_size: int, conv_kernel: int,
                 dtype=np.float32):
        self.conv_state = np.zeros((batch_size, intermediate_size, conv_kernel - 1), dtype=dtype)
        self.ssm_state = np.zeros((batch_size, intermediate_size, state_size), dtype=dtype)
        self.seen = 0  # tokens consumed so far

    def __len__(self) -> int:
        return self.seen

    def update(self, conv_input: np.ndarray, ssm_state: np.ndarray | None = None):
        """Record ``T`` fed tokens: their conv inputs ``[B, di, T]`` (the last ``k - 1`` are kept)
        and ``h`` after the last one (``None``: ``ssm_state`` was already stepped in place).
        Returns ``(conv_state, ssm_state)``."""
        k1 = self.conv_state.shape[2]
        if k1:
            xs = np.concatenate([self.conv_state, conv_input.astype(self.conv_state.dtype, copy=False)], axis=2)  # [B, di, k-1+T]
            self.conv_state[...] = xs[:, :, xs.shape[2] - k1:]                                               # [B, di, k-1]
        if ssm_state is not None:
            self.ssm_state[...] = ssm_state
        self.seen += conv_input.shape[2]
        return self.conv_state, self.ssm_state

    def reorder(self, index) -> None:
        """Row ``i`` becomes row ``index[i]`` (beam search), in place."""
        reorder_rows(index, self.conv_state, self.ssm_state)

    def reset(self) -> None:
        """Forget everything (back to the state before the first token)."""
        self.conv_state[...] = 0
        self.ssm_state[...] = 0
        self.seen = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the two state arrays."""
        return self.conv_state.nbytes + self.ssm_state.nbytes


def causal_depthwise_conv1d(x: axon.Tensor, weight: axon.Tensor, bias: axon.Tensor | None,
                            history: np.ndarray | None = None) -> axon.Tensor:
    """Causal depthwise 1-D convolution: ``nn.Conv1d(di, di, k, groups=di, padding=k-1)(x)[..., :T]``.

    x [B, di, T]; weight [di, 1, k]; bias [di]; ``history`` [B, di, k-1] holds the inputs that
    came before ``x`` (``None`` = zeros, the causal zero padding). Returns [B, di, T].
    """
    k = weight.shape[-1]
    di = x.shape[1]
    if history is None:
        return F.conv1d(x, weight, bias, padding=k - 1, groups=di)[:, :, :x.shape[2]]  # [B, di, T+k-1] -> [B, di, T]
    xp = axon.cat([axon.tensor(history.astype(x.dtype, copy=False)), x], dim=2)         # [B, di, k-1+T]
    return F.conv1d(xp, weight, bias, padding=0, groups=di)                              # [B, di, T]


class MambaMixer(nn.Module):
    """Selective SSM mixer: ``out_proj(scan(silu(conv(x))) * silu(z))`` with ``[x, z] = in_proj(h)``.

    Parameters (HF ``MambaMixer`` names and shapes): ``in_proj`` [2di, d], ``conv1d.weight``
    [di, 1, k] (+ ``conv1d.bias`` [di]), ``x_proj`` [r + 2n, di], ``dt_proj`` [di, r] + bias
    [di], ``A_log`` [di, n], ``D`` [di], ``out_proj`` [d, di].
    """

    def __init__(self, hidden_size: int, intermediate_size: int, state_size: int = 16,
                 conv_kernel: int = 4, time_step_rank: int | None = None, use_bias: bool = False,
                 use_conv_bias: bool = True, time_step_min: float = 1e-3, time_step_max: float = 0.1,
                 time_step_floor: float = 1e-4, time_step_scale: float = 1.0,
                 initializer_range: float = 0.02):
        super().__init__()
        d, di, n = hidden_size, intermediate_size, state_size
        r = time_step_rank if time_step_rank is not None else math.ceil(hidden_size / 16)
        self.hidden_size, self.intermediate_size, self.state_size = d, di, n
        self.conv_kernel, self.time_step_rank = conv_kernel, r

        self.in_proj = nn.Linear(d, 2 * di, bias=use_bias)
        self.conv1d = nn.Conv1d(di, di, conv_kernel, groups=di, padding=conv_kernel - 1,
                                bias=use_conv_bias)
        self.x_proj = nn.Linear(di, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, di, bias=True)
        self.out_proj = nn.Linear(di, d, bias=use_bias)

        # S4D-real init: A = -[1..n] per channel, stored as A_log = log([1..n]) so A < 0 always.
        def a_log_init(arr, rng):
            arr[...] = np.log(np.arange(1, n + 1, dtype=np.float64))

        def ones_init(arr, rng):
            arr[...] = 1.0

        self.A_log = nn.Parameter.lazy((di, n), init=a_log_init)
        self.D = nn.Parameter.lazy((di,), init=ones_init)

        # Mamba's time-step init: dt_proj.weight ~ U(-r^-0.5, r^-0.5) * scale and its bias the
        # inverse softplus of dt ~ logUniform(dt_min, dt_max), so softplus(bias) starts in range.
        std = r ** -0.5 * time_step_scale

        def dt_weight(arr, rng):
            arr[...] = rng.uniform(-std, std, size=arr.shape)

        def dt_bias(arr, rng):
            dt = np.exp(rng.random(arr.shape) * (math.log(time_step_max) - math.log(time_step_min))
                        + math.log(time_step_min))
            dt = np.maximum(dt, time_step_floor)
            arr[...] = dt + np.log(-np.expm1(-dt))       # inverse of softplus

        self.dt_proj.weight.set_init(dt_weight)
        self.dt_proj.bias.set_init(dt_bias)

    def new_state(self, batch_size: int) -> MambaState:
        """A zero streaming state for ``batch_size`` sequences."""
        return MambaState(batch_size, self.intermediate_size, self.state_size, self.conv_kernel)

    def _split_ssm_params(self, u: axon.Tensor):
        """x_proj(u) -> (dt [B, T, r], B [B, n, T], C [B, n, T]); u is [B, di, T]."""
        r, n = self.time_step_rank, self.state_size
        p = self.x_proj(u.transpose(1, 2))                  # [B, T, di] -> [B, T, r + 2n]
        dt = p[:, :, :r]                                    # [B, T, r]
        Bm = p[:, :, r:r + n].transpose(1, 2)               # [B, T, n] -> [B, n, T]
        Cm = p[:, :, r + n:].transpose(1, 2)                # [B, T, n] -> [B, n, T]
        return dt, Bm, Cm

    def forward(self, hidden_states: axon.Tensor, state: MambaState | None = None,
                attention_mask: np.ndarray | None = None) -> axon.Tensor:
        """[B, T, d] -> [B, T, d]. ``attention_mask`` [B, T] (1 keep, 0 pad) zeroes padded inputs
        before and after the convolution, as transformers does, so left padding leaves no trace."""
        B_, T, _ = hidden_states.shape
        di = self.intermediate_size
        keep = None
        if attention_mask is not None:
            keep = axon.tensor(np.asarray(attention_mask, dtype=np.float32)[:, None, :])  # [B, 1, T]

        xz = self.in_proj(hidden_states).transpose(1, 2)     # [B, T, 2di] -> [B, 2di, T]
        x, z = xz[:, :di], xz[:, di:]                       # [B, di, T] each
        if keep is not None:
            x = x * keep

        history = None if state is None else state.conv_state
        u = F.silu(causal_depthwise_conv1d(x, self.conv1d.weight, self.conv1d.bias, history))
        if keep is not None:
            u = u * keep                                    # [B, di, T]

        dt, Bm, Cm = self._split_ssm_params(u)
        delta = (dt @ self.dt_proj.weight.T).transpose(1, 2)  # [B, T, r] @ [r, di] -> [B, di, T]
        A = -self.A_log.exp()                               # [di, n], always negative: h decays

        if state is None:
            y = kernel_ops.selective_scan(u, delta, A, Bm, Cm, self.D, z, self.dt_proj.bias,
                                          delta_softplus=True)          # [B, di, T]
        else:
            y = axon.tensor(self._scan_with_state(state, u, delta, A, Bm, Cm, z, x))
        return self.out_proj(y.transpose(1, 2))             # [B, T, di] -> [B, T, d]

    def _scan_with_state(self, state: MambaState, u, delta, A, Bm, Cm, z, x) -> np.ndarray:
        """The recurrence from ``state`` (inference): updates ``state`` in place, returns y [B, di, T]."""
        dtype = state.ssm_state.dtype
        u_, dl, A_, B_, C_, z_ = (np.asarray(t.data, dtype=dtype) for t in (u, delta, A, Bm, Cm, z))
        D_ = np.asarray(self.D.data, dtype=dtype)
        bias = np.asarray(self.dt_proj.bias.data, dtype=dtype)
        T = u_.shape[-1]
        last = None  # None: selective_scan_step advanced state.ssm_state in place
        if state.seen == 0:
            y, last = kernels.selective_scan(u_, dl, A_, B_, C_, D=D_, z=z_, delta_bias=bias,
                                             delta_softplus=True, return_last_state=True)
        else:
            ys = []
            for t in range(T):
                ys.append(kernels.selective_scan_step(
                    state.ssm_state, u_[:, :, t], dl[:, :, t], A_, B_[:, :, t], C_[:, :, t],
                    D=D_, z=z_[:, :, t], delta_bias=bias, delta_softplus=True))  # [B, di]
            y = np.stack(ys, axis=-1)                                           # [B, di, T]
        state.update(np.asarray(x.data, dtype=dtype), last)       # keeps the last k-1 conv inputs
        return y
