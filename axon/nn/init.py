"""Parameter initialisers with torch's names; they work on lazy parameters too.

On a lazy :class:`Parameter` an initialiser only records itself (the array is drawn when the
parameter is materialised); on a materialised tensor it fills the array in place now.
All draw from axon's generator (``axon.manual_seed``).
"""

from __future__ import annotations

import math

import numpy as np

from ..autograd import no_grad
from ..random import get_rng
from .parameter import Parameter

__all__ = [
    "normal_", "uniform_", "zeros_", "ones_", "constant_", "trunc_normal_", "xavier_uniform_",
    "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "calculate_fan_in_and_fan_out",
]


def _apply(tensor, fill):
    """Record ``fill(arr, rng)`` on a lazy parameter, or run it on an existing array."""
    if isinstance(tensor, Parameter):
        tensor.set_init(fill)
    else:
        with no_grad():
            fill(tensor.data, get_rng())
    return tensor


def calculate_fan_in_and_fan_out(tensor) -> tuple:
    """(fan_in, fan_out) of a weight [out, in, *kernel] (torch's convention)."""
    shape = tensor.shape
    if len(shape) < 2:
        raise ValueError(f"fan in/out need at least 2 dims, got shape {tuple(shape)}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _gain(nonlinearity: str, a: float = 0.0) -> float:
    if nonlinearity in ("linear", "sigmoid", "conv1d"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        return math.sqrt(2.0 / (1 + a * a))
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}")


def normal_(tensor, mean: float = 0.0, std: float = 1.0):
    """Fill with N(mean, std^2)."""
    def fill(arr, rng):
        arr[...] = rng.normal(mean, std, size=arr.shape)
    return _apply(tensor, fill)


def trunc_normal_(tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0):
    """N(mean, std^2) redrawn until inside [a, b]."""
    def fill(arr, rng):
        out = rng.normal(mean, std, size=arr.shape)
        bad = (out < a) | (out > b)
        while bad.any():
            out[bad] = rng.normal(mean, std, size=int(bad.sum()))
            bad = (out < a) | (out > b)
        arr[...] = out
    return _apply(tensor, fill)


def uniform_(tensor, a: float = 0.0, b: float = 1.0):
    """Fill with U(a, b)."""
    def fill(arr, rng):
        arr[...] = rng.uniform(a, b, size=arr.shape)
    return _apply(tensor, fill)


def constant_(tensor, val: float):
    """Fill with ``val``."""
    def fill(arr, rng):
        arr[...] = val
    return _apply(tensor, fill)


def zeros_(tensor):
    """Fill with 0."""
    return constant_(tensor, 0.0)


def ones_(tensor):
    """Fill with 1."""
    return constant_(tensor, 1.0)


def xavier_uniform_(tensor, gain: float = 1.0):
    """U(-b, b) with b = gain * sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio)."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound)


def xavier_normal_(tensor, gain: float = 1.0):
    """N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)))


def kaiming_uniform_(tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"):
    """U(-b, b) with b = gain * sqrt(3 / fan) (He et al.; torch's Linear default uses a=sqrt(5))."""
    fan = calculate_fan_in_and_fan_out(tensor)[0 if mode == "fan_in" else 1]
    bound = _gain(nonlinearity, a) * math.sqrt(3.0 / fan)
    return uniform_(tensor, -bound, bound)


def kaiming_normal_(tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"):
    """N(0, std^2) with std = gain / sqrt(fan)."""
    fan = calculate_fan_in_and_fan_out(tensor)[0 if mode == "fan_in" else 1]
    return normal_(tensor, 0.0, _gain(nonlinearity, a) / math.sqrt(fan))
