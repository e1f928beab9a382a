"""Optimizers (torch's update rules, in place on the parameters' arrays) and ``clip_grad_norm_``.

Each ``step()`` reads ``p.grad`` and updates ``p.data`` with NumPy in-place operations;
per-parameter state (momentum buffers, Adam moments) is created at the first step, so lazy
parameters stay lazy until training begins.
"""

from __future__ import annotations

import math

import numpy as np

from axon_kernels.adamw import adamw_step
from axon_kernels.workers import run_chunks, threads

from ..autograd import no_grad
from ..tensor import Tensor

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "clip_grad_norm_"]


class Optimizer:
    """Base class: ``param_groups`` (list of dicts with "params" and hyper-parameters) and ``state``."""

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        self.state = {}  # id(param) -> dict
        for g in groups:
            group = dict(self.defaults)
            group.update(g)
            group["params"] = list(group["params"])
            for p in group["params"]:
                if not isinstance(p, Tensor):
                    raise TypeError(f"optimizer params must be axon Tensors, got {type(p).__name__}")
            self.param_groups.append(group)

    def add_param_group(self, param_group: dict) -> None:
        """Add a group of parameters (hyper-parameters default to the optimizer's)."""
        group = dict(self.defaults)
        group.update(param_group)
        group["params"] = list(group["params"])
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in group["params"]):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's ``.grad``."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none or p.grad is None:
                    p.grad = None
                else:
                    p.grad.data[...] = 0

    def step(self) -> None:  # pragma: no cover - interface
        """Apply one update to every parameter that has a gradient."""
        raise NotImplementedError

    def _params_with_grad(self, group):
        """Yield (param, its array, its gradient array, its state dict) for each param of ``group`` with a grad."""
        for p in group["params"]:
            if p.grad is not None:
                yield p, p.data, p.grad.data, self.state.setdefault(id(p), {})

    # -------------------------------------------------------------- (de)serialisation
    def state_dict(self) -> dict:
        """{"state": {index: {name: array or number}}, "param_groups": [... "params": [indices]]}."""
        index, groups = {}, []
        for group in self.param_groups:
            ids = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                ids.append(index[id(p)])
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        state = {
            index[pid]: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s.items()}
            for pid, s in self.state.items()
            if pid in index
        }
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyper-parameters and per-parameter state saved by :meth:`state_dict`."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
            len(g["params"]) != len(mine["params"]) for g, mine in zip(groups, self.param_groups)
        ):
            raise ValueError("optimizer state_dict does not match this optimizer's parameter groups")
        by_index = {}
        for saved, mine in zip(groups, self.param_groups):
            for i, p in zip(saved["params"], mine["params"]):
                by_index[i] = p
            mine.update({k: v for k, v in saved.items() if k != "params"})
        self.state = {}
        for i, s in state_dict["state"].items():
            p = by_index[int(i)]
            self.state[id(p)] = {k: (np.array(v, dtype=p.dtype) if isinstance(v, np.ndarray) else v) for k, v in s.items()}

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(g.items()) if k != "params"]
        return "\n".join(lines) + "\n)"


class SGD(Optimizer):
    """SGD with momentum, dampening, Nesterov and (L2) weight decay, exactly torch's rule:

    g = grad + wd * p;  b = g (first step) else momentum * b + (1 - dampening) * g;
    g = g + momentum * b (nesterov) else b;  p -= lr * g
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        if lr < 0:
            raise ValueError(f"invalid learning rate {lr}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    @no_grad()
    def step(self) -> None:
        """Apply one update to every parameter that has a gradient."""
        for group in self.param_groups:
            lr, mom, damp, wd = group["lr"], group["momentum"], group["dampening"], group["weight_decay"]
            for p, data, grad, state in self._params_with_grad(group):
                g = grad + wd * data if wd else grad
                if mom:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = np.array(g, dtype=data.dtype, copy=True)
                    else:
                        buf *= mom
                        buf += (1 - damp) * g
                    g = g + mom * buf if group["nesterov"] else buf
                data -= (lr * g).astype(data.dtype, copy=False)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with L2 weight decay added to the gradient (torch's ``Adam``):

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
    p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    One fused pass per parameter: ``axon_kernels.adamw.adamw_step`` (its NumPy reference
    ``adamw_step_ref`` is the same rule, used for odd layouts and under NUMBA_DISABLE_JIT=1).
    """

    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid Adam hyper-parameters lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @no_grad()
    def step(self) -> None:
        """Apply one update to every parameter that has a gradient. The parameters are updated
        independently of each other, so a large model's are shared out between the threads
        (`_share_out`): each thread updates whole parameters, the same values either way."""
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            updates = []
            for p, data, grad, state in self._params_with_grad(group):
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = np.zeros_like(data)
                    state["exp_avg_sq"] = np.zeros_like(data)
                state["step"] += 1
                updates.append((data, grad, state["exp_avg"], state["exp_avg_sq"], state["step"]))

            def update(share) -> None:
                for data, grad, m, v, t in share:
                    adamw_step(data, grad, m, v, lr, b1, b2, eps, wd, t, self.decoupled)

            shares = _share_out(updates)
            if len(shares) == 1:
                update(shares[0])
            else:
                run_chunks(lambda i: update(shares[i]), len(shares))


#: below this many parameter values in a group, one thread updates them all (handing work to a
#: second thread costs more than it saves)
PARALLEL_MIN_VALUES = 1 << 18


def _share_out(updates: list) -> list[list]:
    """``updates`` (tuples starting with the parameter's array) in one share per thread, the
    largest arrays first, each to the share with the fewest values so far; one share when the
    total is below `PARALLEL_MIN_VALUES`."""
    total = sum(u[0].size for u in updates)
    n = min(threads(), len(updates)) if total >= PARALLEL_MIN_VALUES else 1
    if n <= 1:
        return [updates]
    shares, sizes = [[] for _ in range(n)], [0] * n
    for u in sorted(updates, key=lambda u: -u[0].size):
        i = sizes.index(min(sizes))
        shares[i].append(u)
        sizes[i] += u[0].size
    return shares


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p *= 1 - lr * wd, then the Adam step."""

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0) -> Tensor:
    """Scale all gradients together so their global norm is at most ``max_norm``; returns the norm before clipping."""
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    grads = [p.grad.data for p in parameters if p.grad is not None]
    if not grads:
        return Tensor(np.float32(0.0))
    if norm_type == math.inf:
        total = max(float(np.abs(g).max()) for g in grads)
    else:
        total = sum(float(np.sum(np.abs(g, dtype=np.float64) ** norm_type)) for g in grads) ** (1.0 / norm_type)
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads:
            g *= g.dtype.type(coef)
    return Tensor(np.asarray(total, dtype=np.float32))
