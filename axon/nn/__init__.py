"""``axon.nn``: Module, Parameter, the built-in layers, ``functional`` and ``init``."""

from . import functional, init
from .layers import (
    GELU, Conv1d, Dropout, Embedding, Identity, LayerNorm, Linear, ModuleDict, ModuleList, ReLU, RMSNorm,
    Sequential, Sigmoid, SiLU, Softmax, Tanh,
)
from .module import LoadResult, Module
from .parameter import Buffer, Parameter

__all__ = [
    "Module", "Parameter", "Buffer", "LoadResult", "Linear", "Embedding", "LayerNorm", "RMSNorm", "Dropout",
    "Conv1d", "Identity", "ModuleList", "ModuleDict", "Sequential", "GELU", "SiLU", "ReLU", "Tanh", "Sigmoid",
    "Softmax", "functional", "init",
]
