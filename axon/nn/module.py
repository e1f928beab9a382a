"""``Module``: the container of parameters, buffers and sub-modules (torch's API).

Attribute assignment registers things: ``self.w = Parameter(...)`` goes to ``_parameters``,
``self.block = Linear(...)`` to ``_modules``, ``self.register_buffer("x", t)`` to ``_buffers``.
Dotted names (``layers.0.self_attn.q_proj.weight``) are the state_dict / checkpoint keys.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterator, NamedTuple

import numpy as np

from ..tensor import Tensor
from .parameter import Buffer, Parameter

__all__ = ["Module", "LoadResult"]


class LoadResult(NamedTuple):
    """What ``load_state_dict`` found: keys the model has but the dict lacks, keys the dict
    has but the model lacks, and ``(key, model_shape, checkpoint_shape)`` for shape mismatches."""

    missing_keys: list
    unexpected_keys: list
    mismatched: list


class Module:
    """Base class of every layer and model."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # -------------------------------------------------------------- registration
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError("call super().__init__() before assigning attributes of a Module")
        params, buffers, modules = self._parameters, self._buffers, self._modules
        if isinstance(value, Parameter):
            buffers.pop(name, None)
            modules.pop(name, None)
            self.__dict__.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None)
            buffers.pop(name, None)
            self.__dict__.pop(name, None)
            modules[name] = value
        elif isinstance(value, Buffer):
            self.register_buffer(name, value, persistent=value.persistent)
        elif name in params:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} to parameter {name!r} (use a Parameter or None)")
            params[name] = None
        elif name in buffers:
            if value is not None and not isinstance(value, Tensor):
                value = Tensor(value)
            buffers[name] = value
        elif name in modules:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} to sub-module {name!r}")
            modules[name] = None
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for store in (self._parameters, self._buffers, self._modules):
            if name in store:
                del store[name]
                self._non_persistent.discard(name)
                return
        object.__delattr__(self, name)

    def register_parameter(self, name: str, param) -> None:
        """Register ``param`` (a Parameter or None) under ``name``."""
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter({name!r}): expected a Parameter, got {type(param).__name__}")
        self.__dict__.pop(name, None)
        self._parameters[name] = param

    def register_buffer(self, name: str, tensor, persistent: bool = True) -> None:
        """A non-trainable tensor saved in the state_dict (unless ``persistent=False``)."""
        if tensor is not None and not isinstance(tensor, Tensor):
            tensor = Tensor(tensor)
        self.__dict__.pop(name, None)
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)

    def add_module(self, name: str, module) -> None:
        """Register ``module`` (or None) as a child named ``name``."""
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module({name!r}): expected a Module, got {type(module).__name__}")
        self._modules[name] = module

    register_module = add_module

    def get_submodule(self, target: str) -> "Module":
        """The descendant at the dotted path ``target`` ("" is self)."""
        mod = self
        for part in target.split(".") if target else []:
            mod = getattr(mod, part)
        return mod

    def get_parameter(self, target: str) -> Parameter:
        """The parameter at the dotted path ``target``."""
        mod_path, _, name = target.rpartition(".")
        return getattr(self.get_submodule(mod_path), name)

    # -------------------------------------------------------------- calling
    def forward(self, *args, **kwargs):
        """The computation; subclasses override it and callers use ``module(...)``."""
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # -------------------------------------------------------------- traversal
    def named_modules(self, memo=None, prefix: str = "", remove_duplicate: bool = True) -> Iterator:
        """(dotted name, module) for self and every descendant, depth-first, iteratively."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, mod = stack.pop()
            if remove_duplicate:
                if id(mod) in seen:
                    continue
                seen.add(id(mod))
            yield name, mod
            children = [(f"{name}.{n}" if name else n, m) for n, m in mod._modules.items() if m is not None]
            stack.extend(reversed(children))

    def modules(self) -> Iterator:
        """Self and every descendant (each once)."""
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator:
        """(name, module) for the direct children."""
        seen = set()
        for name, m in self._modules.items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def children(self) -> Iterator:
        """The direct children."""
        for _, m in self.named_children():
            yield m

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True) -> Iterator:
        """(dotted name, Parameter); a tied parameter is listed once (under its first name)."""
        seen = set()
        mods = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse else [(prefix, self)]
        for mname, mod in mods:
            for pname, p in mod._parameters.items():
                if p is None:
                    continue
                if remove_duplicate:
                    if id(p) in seen:
                        continue
                    seen.add(id(p))
                yield (f"{mname}.{pname}" if mname else pname), p

    def parameters(self, recurse: bool = True) -> Iterator:
        """Every parameter (tied ones once)."""
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True) -> Iterator:
        """(dotted name, tensor) for every registered buffer."""
        seen = set()
        mods = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for mname, mod in mods:
            for bname, b in mod._buffers.items():
                if b is None or (remove_duplicate and id(b) in seen):
                    continue
                seen.add(id(b))
                yield (f"{mname}.{bname}" if mname else bname), b

    def buffers(self, recurse: bool = True) -> Iterator:
        """Every registered buffer."""
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Total parameter count (tied parameters once); never allocates lazy parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # -------------------------------------------------------------- modes, grads, dtype
    def train(self, mode: bool = True) -> "Module":
        """Set training mode on self and all descendants (dropout active)."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        """Set evaluation mode (dropout off); returns self."""
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        """Turn gradient tracking of every parameter on or off."""
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's ``.grad`` (or zero it with ``set_to_none=False``)."""
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad.data[...] = 0

    def apply(self, fn) -> "Module":
        """Call ``fn(module)`` on every sub-module (children first) and then self."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    def materialize(self) -> "Module":
        """Allocate and initialise every lazy parameter now."""
        for p in self.parameters():
            p.materialize()
        return self

    def to(self, *args, dtype=None, **kwargs) -> "Module":
        """Cast floating parameters and buffers to ``dtype`` (device strings are ignored)."""
        for a in args:
            if not (isinstance(a, str) and a.startswith("cpu")):
                dtype = a
        if dtype is None:
            return self
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"Module.to() only accepts floating dtypes, got {dtype}")
        for p in self.parameters():
            if p.dtype.kind == "f":
                p.cast_(dtype)
        for m in self.modules():
            for name, b in m._buffers.items():
                if b is not None and b.dtype.kind == "f" and b.dtype != dtype:
                    m._buffers[name] = Tensor(b.data.astype(dtype))
        return self

    def float(self) -> "Module":
        """Cast floating parameters and buffers to float32."""
        return self.to(np.float32)

    def double(self) -> "Module":
        """Cast floating parameters and buffers to float64."""
        return self.to(np.float64)

    def half(self) -> "Module":
        """Cast floating parameters and buffers to float16."""
        return self.to(np.float16)

    # -------------------------------------------------------------- state dict
    def _state_entries(self):
        """(key, owner module, attribute name, tensor) for every state_dict entry (tied ones repeated)."""
        for mname, mod in self.named_modules(remove_duplicate=False):
            for pname, p in mod._parameters.items():
                if p is not None:
                    yield (f"{mname}.{pname}" if mname else pname), mod, pname, p
            for bname, b in mod._buffers.items():
                if b is not None and bname not in mod._non_persistent:
                    yield (f"{mname}.{bname}" if mname else bname), mod, bname, b

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """name -> np.ndarray (the live arrays, not copies; lazy parameters are materialised)."""
        return OrderedDict((key, t.data) for key, _, _, t in self._state_entries())

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False) -> LoadResult:
        """Put checkpoint arrays into place without allocating random ones first.

        Values may be ndarrays or Tensors; each is copied into a new array of the parameter's
        dtype (lazy parameters are never randomly initialised). With ``assign=True`` (torch's
        flag) an array already of the right dtype and writeable is adopted without a copy —
        the memory-saving choice for freshly loaded checkpoints. With ``strict=True`` any
        missing key, unexpected key or shape mismatch raises ``ValueError`` listing all of
        them, and nothing is loaded.
        """
        entries = list(self._state_entries())
        expected = {key for key, *_ in entries}
        missing, mismatched = [], []
        for key, _, _, t in entries:
            if key not in state_dict:
                missing.append(key)
                continue
            shape = tuple(np.shape(state_dict[key]))
            if shape != tuple(t.shape):
                mismatched.append((key, tuple(t.shape), shape))
        unexpected = [k for k in state_dict if k not in expected]
        result = LoadResult(missing, unexpected, mismatched)
        if strict and (missing or unexpected or mismatched):
            lines = ["load_state_dict(strict=True) failed:"]
            if missing:
                lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
            if unexpected:
                lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
            for key, want, got in mismatched:
                lines.append(f"  shape mismatch for {key}: model {want}, checkpoint {got}")
            raise ValueError("\n".join(lines))
        bad = {k for k, _, _ in mismatched}
        for key, mod, name, t in entries:
            if key not in state_dict or key in bad:
                continue
            value = state_dict[key]
            arr = value.data if isinstance(value, Tensor) else np.asarray(value)
            if not assign or arr.dtype != t.dtype or not arr.flags.writeable:
                arr = np.array(arr, dtype=t.dtype, copy=True)
            if isinstance(t, Parameter):
                t.data = arr
                t.grad = None
            else:
                t._data = arr
        return result

    # -------------------------------------------------------------- repr
    def extra_repr(self) -> str:
        """One line of settings shown in the module's repr (override in layers)."""
        return ""

    def __repr__(self) -> str:
        lines = []
        for name, m in self._modules.items():
            child = repr(m).replace("\n", "\n  ")
            lines.append(f"({name}): {child}")
        extra = self.extra_repr()
        head = f"{type(self).__name__}("
        if not lines:
            return head + extra + ")"
        body = ([extra] if extra else []) + lines
        return head + "\n  " + "\n  ".join(body) + "\n)"

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._modules) | set(self._buffers))
