"""Built-in layers. Every parameter is created lazily (see ``parameter.py``) with torch's
default initialisation, so constructing a large model allocates nothing."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from . import functional as F
from .module import Module
from .parameter import Parameter

__all__ = [
    "Linear", "Embedding", "LayerNorm", "RMSNorm", "Dropout", "Conv1d", "Identity",
    "ModuleList", "ModuleDict", "Sequential", "GELU", "SiLU", "ReLU", "Tanh", "Sigmoid", "Softmax",
]


def _uniform_fill(bound: float):
    def fill(arr, rng):
        arr[...] = rng.uniform(-bound, bound, size=arr.shape)
    return fill


def _const_fill(value: float):
    def fill(arr, rng):
        arr[...] = value
    return fill


def _normal_fill(std: float):
    def fill(arr, rng):
        arr[...] = rng.standard_normal(size=arr.shape) * std
    return fill


class Linear(Module):
    """y = x W^T + b; ``weight`` [out_features, in_features] (torch's layout), U(-1/sqrt(in), 1/sqrt(in)) init."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=np.float32):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
        self.weight = Parameter.lazy((out_features, in_features), _uniform_fill(bound), dtype)
        self.bias = Parameter.lazy((out_features,), _uniform_fill(bound), dtype) if bias else None
        if not bias:
            self.register_parameter("bias", None)

    def forward(self, x):
        """[*, in_features] -> [*, out_features]."""
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        """The constructor arguments, shown by ``repr(module)``."""
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A lookup table ``weight`` [num_embeddings, embedding_dim], N(0, 1) init."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, dtype=np.float32):
        super().__init__()
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        if padding_idx is not None and padding_idx < 0:
            padding_idx += num_embeddings
        self.padding_idx = padding_idx

        def fill(arr, rng):
            arr[...] = rng.standard_normal(size=arr.shape)
            if padding_idx is not None:
                arr[padding_idx] = 0

        self.weight = Parameter.lazy((num_embeddings, embedding_dim), fill, dtype)

    def forward(self, ids):
        """Integer ids [*] -> rows of ``weight`` [*, embedding_dim]."""
        return F.embedding(ids, self.weight, self.padding_idx)

    def extra_repr(self) -> str:
        """The constructor arguments, shown by ``repr(module)``."""
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"


class LayerNorm(Module):
    """Layer normalisation over the trailing ``normalized_shape`` (weight ones, bias zeros)."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 dtype=np.float32):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps = shape, eps
        self.weight = Parameter.lazy(shape, _const_fill(1.0), dtype) if elementwise_affine else None
        self.bias = Parameter.lazy(shape, _const_fill(0.0), dtype) if elementwise_affine and bias else None
        for name in ("weight", "bias"):
            if getattr(self, name) is None:
                self.register_parameter(name, None)

    def forward(self, x):
        """[*, *normalized_shape] -> same shape, normalised over the trailing dims."""
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        """The constructor arguments, shown by ``repr(module)``."""
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.weight is not None}"


class RMSNorm(Module):
    """RMS normalisation over the last dim (LLaMA), weight initialised to ones."""

    def __init__(self, normalized_shape, eps: float = 1e-6, elementwise_affine: bool = True, dtype=np.float32):
        super().__init__()
        dim = normalized_shape if isinstance(normalized_shape, int) else int(np.prod(normalized_shape))
        self.normalized_shape, self.eps = (dim,), eps
        self.weight = Parameter.lazy((dim,), _const_fill(1.0), dtype) if elementwise_affine else None
        if not elementwise_affine:
            self.register_parameter("weight", None)

    def forward(self, x):
        """[*, dim] -> same shape, divided by the RMS of the last dim and scaled by ``weight``."""
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        """The constructor arguments, shown by ``repr(module)``."""
        return f"{self.normalized_shape}, eps={self.eps}"


class Dropout(Module):
    """Dropout with probability ``p`` while training; identity in eval mode."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, got {p}")
        self.p = p

    def forward(self, x):
        """Zero each element with probability ``p`` and scale the rest by 1/(1-p) while training; same shape."""
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        """The constructor arguments, shown by ``repr(module)``."""
        return f"p={self.p}"


class Conv1d(Module):
    """1-d convolution; weight [out_channels, in_channels/groups, kernel_size] (torch's layout and init)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding=0,
                 dilation: int = 1, groups: int = 1, bias: bool = True, dtype=np.float32):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv1d: in_channels={in_channels} and out_channels={out_channels} must be divisible by groups={groups}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        bound = 1.0 / math.sqrt((in_channels // groups) * kernel_size)
        self.weight = Parameter.lazy((out_channels, in_channels // groups, kernel_size), _uniform_fill(bound), dtype)
        self.bias = Parameter.lazy((out_channels,), _uniform_fill(bound), dtype) if bias else None
        if not bias:
            self.register_parameter("bias", None)

    def forward(self, x):
        """[B, in_channels, L] -> [B, out_channels, L_out]."""
        return F.conv1d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        """The constructor arguments, shown by ``repr(module)``."""
        s = f"{self.in_channels}, {self.out_channels}, kernel_size=({self.kernel_size},), stride=({self.stride},)"
        if self.padding:
            s += f", padding={self.padding!r}" if isinstance(self.padding, str) else f", padding=({self.padding},)"
        if self.dilation != 1:
            s += f", dilation=({self.dilation},)"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class Identity(Module):
    """Returns its input unchanged (a placeholder where a layer is optional)."""

    def forward(self, x):
        """Return ``x`` itself."""
        return x


def _activation(name: str, fn, doc: str):
    def forward(self, x):
        """Apply the activation elementwise; output shape = input shape."""
        return fn(x)

    return type(name, (Module,), {"forward": forward, "__doc__": doc})



class GELU(Module):
    """GELU; ``approximate="tanh"`` for the tanh form."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x):
        """Apply GELU elementwise; output shape = input shape."""
        return F.gelu(x, approximate=self.approximate)

    def extra_repr(self) -> str:
        """The constructor arguments, shown by ``repr(module)``."""
        return f"approximate={self.approximate!r}" if self.approximate != "none" else ""


SiLU = _activation("SiLU", F.silu, "x * sigmoid(x).")
ReLU = _activation("ReLU", F.relu, "max(x, 0).")
Tanh = _activation("Tanh", F.tanh, "tanh(x).")
Sigmoid = _activation("Sigmoid", F.sigmoid, "1 / (1 + exp(-x)).")


class Softmax(Module):
    """Softmax along ``dim`` (default the last)."""

    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        """Probabilities along ``self.dim``; output shape = input shape."""
        return F.softmax(x, self.dim)


class ModuleList(Module):
    """A list of modules registered under "0", "1", ... (so keys read ``layers.0.attn...``)."""

    def __init__(self, modules=None):
        super().__init__()
        for m in modules or []:
            self.append(m)

    def append(self, module: Module) -> "ModuleList":
        """Add ``module`` at the end."""
        self.add_module(str(len(self._modules)), module)
        return self

    def extend(self, modules) -> "ModuleList":
        """Append every module of ``modules``."""
        for m in modules:
            self.append(m)
        return self

    def insert(self, index: int, module: Module) -> None:
        """Insert ``module`` before position ``index``."""
        mods = list(self._modules.values())
        mods.insert(index, module)
        self._modules.clear()
        for i, m in enumerate(mods):
            self._modules[str(i)] = m

    def __getitem__(self, idx):
        mods = list(self._modules.values())
        if isinstance(idx, slice):
            return ModuleList(mods[idx])
        return mods[idx]

    def __setitem__(self, idx: int, module: Module) -> None:
        key = list(self._modules)[idx]
        self._modules[key] = module

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class ModuleDict(Module):
    """A dict of modules, registered under their keys."""

    def __init__(self, modules=None):
        super().__init__()
        for k, m in (modules or {}).items():
            self[k] = m

    def __getitem__(self, key: str) -> Module:
        return self._modules[key]

    def __setitem__(self, key: str, module: Module) -> None:
        self.add_module(key, module)

    def __delitem__(self, key: str) -> None:
        del self._modules[key]

    def __contains__(self, key) -> bool:
        return key in self._modules

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def keys(self):
        """The names."""
        return self._modules.keys()

    def values(self):
        """The modules."""
        return self._modules.values()

    def items(self):
        """(name, module) pairs."""
        return self._modules.items()


class Sequential(Module):
    """Modules applied in order: ``Sequential(Linear(2, 8), ReLU(), Linear(8, 1))``."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (dict, OrderedDict)):
            for k, m in modules[0].items():
                self.add_module(k, m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)

    def forward(self, x):
        """Feed ``x`` through each module in order and return the last output."""
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, idx):
        mods = list(self._modules.values())
        if isinstance(idx, slice):
            return Sequential(*mods[idx])
        return mods[idx]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module: Module) -> "Sequential":
        """Add ``module`` at the end."""
        self.add_module(str(len(self._modules)), module)
        return self
