"""axon.save / axon.load: round trips, bf16 / f16 read as float32, bad files."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import axon
import axon.nn as nn


def write_raw_safetensors(path, tensors):
    """Write a safetensors file by hand: tensors = {name: (dtype_tag, shape, raw_bytes)}."""
    header, blobs, offset = {}, [], 0
    for name, (tag, shape, raw) in tensors.items():
        header[name] = {"dtype": tag, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def test_round_trip_keeps_dtypes_and_values(tmp_path):
    sd = {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "d": np.linspace(0, 1, 4),
        "ids": np.array([1, 2, 3], np.int64),
        "mask": np.array([True, False]),
        "t": axon.tensor([1.5, 2.5]),
        "view": np.arange(12.0, dtype=np.float32).reshape(3, 4).T,  # non-contiguous
    }
    path = tmp_path / "x.safetensors"
    axon.save(sd, path, metadata={"format": "pt"})
    out = axon.load(path)
    assert set(out) == set(sd)
    for k, v in sd.items():
        ref = v.numpy() if isinstance(v, axon.Tensor) else v
        assert out[k].dtype == ref.dtype and np.array_equal(out[k], ref), k
    assert list(axon.load(path, names=["ids"])) == ["ids"]
    with pytest.raises(KeyError, match="nope"):
        axon.load(path, names=["nope"])


def test_bf16_and_f16_are_read_as_float32(tmp_path):
    values = np.array([[1.5, -2.0], [0.15625, 2.0**120]], np.float32)  # exactly representable in bf16
    bf16 = (values.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    f16 = np.array([0.5, -1.25, 65504.0], np.float16)
    f32 = np.array([7.0], np.float32)
    path = tmp_path / "half.safetensors"
    write_raw_safetensors(path, {"b": ("BF16", (2, 2), bf16), "h": ("F16", (3,), f16.tobytes()), "f": ("F32", (1,), f32.tobytes())})
    out = axon.load(path)
    assert out["b"].dtype == np.float32 and np.array_equal(out["b"], values)
    assert out["h"].dtype == np.float32 and np.array_equal(out["h"], f16.astype(np.float32))
    assert np.array_equal(out["f"], f32)


def test_model_save_load_round_trip(tmp_path):
    m = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    path = tmp_path / "m.safetensors"
    axon.save(m.state_dict(), path)
    m2 = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    m2.load_state_dict(axon.load(path))
    x = axon.randn(2, 3)
    assert np.array_equal(m(x).numpy(), m2(x).numpy())
    for p in m2.parameters():  # loaded arrays must be trainable in place
        assert p.data.flags.writeable


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        axon.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="not a valid safetensors"):
        axon.load(bad)
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\xff\xff")
    with pytest.raises(ValueError, match="not a valid safetensors"):
        axon.load(short)
    with pytest.raises(TypeError, match="unsupported dtype"):
        axon.save({"x": np.array(["a"])}, tmp_path / "s.safetensors")
