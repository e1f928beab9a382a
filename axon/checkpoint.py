"""Activation checkpointing: keep a block's input, not its activations, and recompute them in backward.

A training step normally keeps every intermediate array of every layer until backward reaches it;
for a 30-layer model that is most of the step's memory. :func:`checkpoint` runs ``fn(x)`` and
keeps only ``x``; the backward runs ``fn`` again with the graph on (the same RNG state, so dropout
draws the same masks) and back-propagates through that fresh graph at once. Memory: one block's
activations at a time plus each block's input; cost: one more forward of every block.

The trainable parameters ``fn`` uses are passed as inputs so the node is recorded even when ``x``
needs no gradient (the first block over a frozen embedding, as in LoRA); their gradients are
accumulated by the inner backward, into ``param.grad`` as usual. (torch.utils.checkpoint.)
"""

from __future__ import annotations

import numpy as np

from .autograd import Function, backward, enable_grad
from .random import _state as _rng_state
from .tensor import Tensor

__all__ = ["checkpoint"]


def _rng_snapshot() -> dict:
    return _rng_state["rng"].bit_generator.state


def _with_rng(state: dict) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng


class _Checkpoint(Function):
    """``fn(x)`` whose graph is dropped after the forward and rebuilt in the backward."""

    @staticmethod
    def forward(ctx, x, *param_arrays, fn):
        rng = _rng_snapshot()
        with enable_grad():
            y = fn(Tensor(x)).data                            # the graph built here is dropped at once
        ctx.x, ctx.block, ctx.rng = x, fn, rng
        return y

    @staticmethod
    def backward(ctx, grad):
        x = Tensor(ctx.x, requires_grad=bool(ctx.needs_input_grad[0]))
        current = _rng_state["rng"]
        _rng_state["rng"] = _with_rng(ctx.rng)                 # the forward's random draws again
        try:
            with enable_grad():
                y = ctx.block(x)
        finally:
            _rng_state["rng"] = current
        if y._requires_grad:
            backward(y, grad)                                  # parameters' .grad accumulate here
        dx = x.grad.data if x.grad is not None else None
        return (dx,) + (None,) * (len(ctx.needs_input_grad) - 1)


def checkpoint(fn, x: Tensor, params=()) -> Tensor:
    """``fn(x)`` (one Tensor in, one out) without keeping its activations; ``params`` are the
    trainable tensors ``fn`` uses (their gradients still arrive)."""
    trainable = [p for p in params if p.requires_grad]
    return _Checkpoint.apply(x, *trainable, fn=fn)
