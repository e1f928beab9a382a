"""``axon.save`` / ``axon.load``: state dicts as safetensors files.

Writing uses ``safetensors.numpy.save_file``. Reading uses ``safetensors.safe_open`` for the
dtypes NumPy has; bfloat16 (which NumPy lacks) and float16 tensors are read from the file's
bytes here and returned as float32 — a bfloat16 is the top half of a float32, so the
conversion is a 16-bit shift and exact.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from .tensor import Tensor

__all__ = ["save", "load", "read_header"]

_HALF = {"BF16", "F16"}


def save(state_dict, path, metadata: dict | None = None) -> None:
    """Write ``name -> ndarray | Tensor`` to a safetensors file (``metadata``: str -> str)."""
    arrays = {}
    for name, value in state_dict.items():
        arr = value.data if isinstance(value, Tensor) else np.asarray(value)
        if arr.dtype.kind not in "fiub":
            raise TypeError(f"save(): {name!r} has unsupported dtype {arr.dtype}")
        arrays[name] = np.ascontiguousarray(arr)
    save_file(arrays, os.fspath(path), metadata={str(k): str(v) for k, v in (metadata or {}).items()} or None)


def read_header(path) -> dict:
    """The parsed JSON header: name -> {"dtype", "shape", "data_offsets"} (plus "__metadata__")."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError("file shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            if n > os.path.getsize(path) - 8:
                raise ValueError(f"header length {n} exceeds the file size")
            header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a valid safetensors file ({err})") from None
    header["__data_start__"] = 8 + n
    return header


def _read_half(path: str, info: dict, start: int) -> np.ndarray:
    b, e = info["data_offsets"]
    with open(path, "rb") as f:
        f.seek(start + b)
        raw = np.frombuffer(f.read(e - b), dtype=np.uint16)
    if info["dtype"] == "F16":
        return raw.view(np.float16).astype(np.float32).reshape(info["shape"])
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])  # bf16 -> f32, exact


def load(path, names=None) -> dict:
    """Read a safetensors file into ``name -> np.ndarray`` (bf16 / f16 become float32).

    ``names`` restricts the read to those tensors (a KeyError names any that are absent).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    header = read_header(path)
    start = header.pop("__data_start__")
    header.pop("__metadata__", None)
    wanted = list(header) if names is None else list(names)
    absent = [n for n in wanted if n not in header]
    if absent:
        raise KeyError(f"{path}: no tensors named {absent}")
    out = {}
    plain = [n for n in wanted if header[n]["dtype"] not in _HALF]
    if plain:
        try:
            with safe_open(path, framework="numpy") as f:
                for n in plain:
                    out[n] = f.get_tensor(n)
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f"{path}: cannot read tensors ({err})") from None
    for n in wanted:
        if n not in out:
            out[n] = _read_half(path, header[n], start)
    return {n: out[n] for n in wanted}
