"""The sparse mixture-of-experts layer (Mixtral here, Chimera later).

Glossary: ``N`` tokens (``B * T`` flattened), ``d`` model width, ``I`` expert hidden width,
``E`` experts, ``k`` experts per token.

::

    router_logits = gate(x)                       # [N, E]      Linear(d, E, bias=False)
    p             = softmax(router_logits)        # [N, E]
    top           = top-k of p per token          # [N, k]      (indices; no gradient)
    w             = p[top] / sum(p[top])          # [N, k]      renormalised, differentiable in p
    y[n]          = sum_j w[n, j] * expert_top[n, j](x[n])
    expert(x)     = w2(silu(w1(x)) * w3(x))       # SwiGLU, no biases (Mixtral's w1/w2/w3 names)

Only the tokens routed to an expert go through it. The layer returns the router logits too,
so a caller (Chimera) can add the Switch-Transformer load-balancing loss
:func:`load_balancing_loss`, which is differentiable with respect to the router.
"""

from __future__ import annotations

import numpy as np

import axon
import axon.nn as nn
import axon.nn.functional as F

__all__ = ["SwiGLUExpert", "SparseMoE", "load_balancing_loss"]


class SwiGLUExpert(nn.Module):
    """One expert: ``w2(silu(w1 x) * w3 x)`` (Mixtral's ``MixtralBlockSparseTop2MLP``)."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.w1 = nn.Linear(hidden_size, intermediate_size, bias=False)   # gate
        self.w2 = nn.Linear(intermediate_size, hidden_size, bias=False)   # down
        self.w3 = nn.Linear(hidden_size, intermediate_size, bias=False)   # up

    def forward(self, x):
        """``[..., d] -> [..., d]``."""
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SparseMoE(nn.Module):
    """Top-k sparse MoE with a softmax router (HF ``MixtralSparseMoeBlock`` names: ``gate``, ``experts``).

    ``forward(x [B, T, d])`` returns ``(y [B, T, d], router_logits [B*T, E])``.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, num_experts: int, top_k: int):
        super().__init__()
        self.num_experts, self.top_k = num_experts, top_k
        self.gate = nn.Linear(hidden_size, num_experts, bias=False)
        self.experts = nn.ModuleList([SwiGLUExpert(hidden_size, intermediate_size) for _ in range(num_experts)])

    def route(self, x_flat):
        """Router for ``x_flat [N, d]``: ``(router_logits [N, E], weights [N, E], top [N, k])``.

        ``weights`` is zero outside each token's top-k experts and sums to 1 over them.
        """
        router_logits = self.gate(x_flat)                                  # [N, E]
        probs = F.softmax(router_logits, dim=-1)                           # [N, E]
        p = probs.data
        # top-k by probability; a stable sort keeps the lower expert index on ties (as torch.topk does)
        top = np.argsort(-p, axis=-1, kind="stable")[:, : self.top_k]      # [N, k]
        chosen = np.zeros_like(p)
        np.put_along_axis(chosen, top, 1.0, axis=-1)
        kept = probs * axon.tensor(chosen.astype(p.dtype))                 # [N, E], zero off the top-k
        weights = kept / kept.sum(dim=-1, keepdim=True)                    # [N, E] renormalised
        return router_logits, weights, top

    def forward(self, x):
        """``x [B, T, d]`` -> ``(y [B, T, d], router_logits [B*T, E])``."""
        b, t, d = x.shape
        x_flat = x.reshape(b * t, d)                                       # [N, d]
        router_logits, weights, top = self.route(x_flat)
        y = axon.zeros(b * t, d, dtype=x.dtype)                           # [N, d]
        for e, expert in enumerate(self.experts):
            rows = np.nonzero((top == e).any(axis=-1))[0]                  # tokens routed to e
            if rows.size == 0:
                continue
            idx = axon.tensor(rows)
            out = expert(x_flat[idx]) * weights[idx, e:e + 1]              # [n_e, d]
            index = np.broadcast_to(rows[:, None], out.shape)              # [n_e, d]
            y = y.scatter_add(0, axon.tensor(np.ascontiguousarray(index)), out)  # y[rows] += out
        return y.reshape(b, t, d), router_logits


def load_balancing_loss(router_logits, top_k: int, num_experts: int | None = None):
    """Switch-Transformer auxiliary loss ``E * sum_i f_i * P_i`` (a scalar Tensor).

    ``f_i``: fraction of routed token-slots sent to expert ``i`` (a constant); ``P_i``: mean router
    probability of expert ``i`` (differentiable). ``router_logits`` is ``[N, E]`` or a list of them
    (one per layer, concatenated over tokens, as transformers' ``load_balancing_loss_func``).
    """
    if isinstance(router_logits, (list, tuple)):
        router_logits = axon.cat(list(router_logits), dim=0)
    e = router_logits.shape[-1] if num_experts is None else num_experts
    probs = F.softmax(router_logits, dim=-1)                               # [N, E]
    top = np.argsort(-probs.data, axis=-1, kind="stable")[:, :top_k]       # [N, k]
    counts = np.zeros(e, dtype=np.float64)
    np.add.at(counts, top.reshape(-1), 1.0)
    f = counts / top.size                                                  # [E], sums to 1
    p_mean = probs.mean(dim=0)                                             # [E]
    return (p_mean * axon.tensor(f.astype(probs.dtype))).sum() * float(e)
