"""A checked GGUF reader, and the bridge from llama.cpp's GGUF files to HF-named tensors.

GGUF (llama.cpp's file format) is, in order, all little-endian::

    magic  b"GGUF"   version u32 (2 or 3)   tensor_count u64   kv_count u64
    kv_count   x  ( key: string, value_type: u32, value )
    tensor_count x ( name: string, n_dims: u32, dims: u64[n_dims], ggml_type: u32, offset: u64 )
    padding to `general.alignment` (default 32), then the tensor data; every offset is
    relative to the start of the data and a multiple of the alignment.

    string = ( length u64, bytes[length] ) in UTF-8;  array = ( elem_type u32, count u64, elems )

Nothing in a file is trusted: every count, string length, array length, tensor shape, offset
and byte size is checked against the bytes that are really there *before* anything is
allocated, so a truncated or hostile file (a 49-byte file declaring an array of 2**63
elements hangs gguf 0.19's ``GGUFReader``) fails at once with :class:`ModelFormatError`.
The tensor data itself is never read here: tensors are zero-copy views of a read-only
memory map, so quantised weights stay quantised.

``load_gguf(path)`` goes one step further for the ``llama`` architecture: it maps the
``llama.*`` metadata to HuggingFace config field names, renames ``blk.N.attn_q.weight`` to
``model.layers.N.self_attn.q_proj.weight`` etc., and undoes, exactly once, the row
permutation that llama.cpp's converter applies to Q and K (HF's rotate_half RoPE pairs
dimension i with i + d/2, GGML's rope pairs 2i with 2i + 1).
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from axon_llm.errors import ModelFormatError, UnsupportedError
from axon_llm.limits import CEILINGS, check_config_against_file, check_count, check_disjoint, check_float

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4           # GGML_MAX_DIMS
MAX_ARRAY_NESTING = 4  # arrays of arrays of ...: real files use none; a bound stops recursion bombs
MAX_TENSORS = 1 << 20           # real files: at most a few thousand
MAX_KV = 1 << 16                # real files: a few dozen metadata pairs
MAX_OBJECT_ARRAY = 1 << 23      # strings or arrays in one array (a vocabulary or merges: at most ~10**6)

# GGUF metadata value types: id -> (name, struct format or None for variable-size kinds)
_VALUE_TYPES: dict[int, tuple[str, str | None]] = {
    0: ("UINT8", "<B"), 1: ("INT8", "<b"), 2: ("UINT16", "<H"), 3: ("INT16", "<h"),
    4: ("UINT32", "<I"), 5: ("INT32", "<i"), 6: ("FLOAT32", "<f"), 7: ("BOOL", "<?"),
    8: ("STRING", None), 9: ("ARRAY", None), 10: ("UINT64", "<Q"), 11: ("INT64", "<q"),
    12: ("FLOAT64", "<d"),
}
_NUMPY_OF_VALUE_TYPE = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4",
                        6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9

# ggml tensor types this library knows: id -> (name, elements per block, bytes per block).
# Only the types in SUPPORTED_TENSOR_TYPES can be loaded; the others are listed so that the
# error names the type instead of printing a number.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
}
QUANTIZED_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL",
                   "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K")     # = axon_kernels.quant_formats.QUANT_TYPES
SUPPORTED_TENSOR_TYPES = ("F32", "F16", "BF16") + QUANTIZED_TYPES


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor as declared in the header (already checked against the file size).

    ``shape`` is in NumPy / PyTorch order (slowest dimension first), i.e. the reverse of
    GGML's ``ne`` list: a GGUF ``[576, 1536]`` (ne0 = in_features) is ``(1536, 576)`` here.
    ``offset`` is absolute (from the start of the file); ``nbytes`` is the stored size.
    """

    name: str
    type_name: str
    type_id: int
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def n_elements(self) -> int:
        """Number of (logical, dequantised) elements."""
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class GGUFQuantTensor:
    """A quantised tensor exactly as stored: ``raw`` uint8 ``[rows, row_bytes]`` plus its logical shape.

    ``shape`` is the logical (dequantised) NumPy shape, e.g. ``(out_features, in_features)``.
    ``raw`` may be a read-only view of the file's memory map.
    """

    type_name: str
    raw: np.ndarray
    shape: tuple[int, ...]

    def dequantize(self) -> np.ndarray:
        """The tensor as float32 (``kernels.quant.dequantize_ref``)."""
        from axon_kernels.quant import dequantize_ref
        return dequantize_ref(self.type_name, self.raw, self.shape)


class _Cursor:
    """Bounds-checked little-endian reads from a bytes-like buffer."""

    def __init__(self, buf, path: str):
        self.buf = buf
        self.size = len(buf)
        self.pos = 0
        self.path = path

    def fail(self, what: str) -> ModelFormatError:
        return ModelFormatError(f"{self.path}: not a valid GGUF file: {what}")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"{what} needs {n} bytes at offset {self.pos} but the file has "
                            f"{self.size} bytes (truncated or corrupt)")

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def u32(self, what: str) -> int:
        return self.unpack("<I", what)

    def u64(self, what: str) -> int:
        return self.unpack("<Q", what)

    def string(self, what: str, strict: bool = True) -> str:
        n = self.u64(f"length of {what}")
        self.need(n, f"{what} (declared length {n})")
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            if strict:
                raise self.fail(f"{what} is not valid UTF-8") from None
            return raw.decode("utf-8", errors="replace")

    def count(self, what: str, min_item_bytes: int, ceiling: int | None = None) -> int:
        """A u64 element count, rejected unless that many items could fit in the rest of the file
        (and, with ``ceiling``, unless it is at most that: Python objects cost more than their bytes)."""
        n = self.u64(what)
        if ceiling is not None and n > ceiling:
            raise self.fail(f"{what} declares {n} entries, more than the {ceiling} this reader accepts")
        left = self.size - self.pos
        if n > left // max(min_item_bytes, 1):
            raise self.fail(f"{what} declares {n} entries but only {left} bytes remain "
                            f"(each entry needs at least {min_item_bytes})")
        return n


def _min_value_bytes(vtype: int) -> int:
    """The smallest number of bytes one value of this type can occupy."""
    if vtype == _STRING:
        return 8
    if vtype == _ARRAY:
        return 12
    return struct.calcsize(_VALUE_TYPES[vtype][1])


def _read_value(cur: _Cursor, vtype: int, what: str, depth: int = 0) -> Any:
    if vtype not in _VALUE_TYPES:
        raise cur.fail(f"{what} has unknown value type {vtype}")
    if vtype == _STRING:
        return cur.string(what, strict=False)
    if vtype != _ARRAY:
        value = cur.unpack(_VALUE_TYPES[vtype][1], what)
        return bool(value) if vtype == 7 else value
    if depth >= MAX_ARRAY_NESTING:
        raise cur.fail(f"{what} nests arrays more than {MAX_ARRAY_NESTING} deep")
    etype = cur.u32(f"element type of {what}")
    if etype not in _VALUE_TYPES:
        raise cur.fail(f"{what} has unknown array element type {etype}")
    n = cur.count(f"array {what}", _min_value_bytes(etype),
                  None if etype in _NUMPY_OF_VALUE_TYPE else MAX_OBJECT_ARRAY)
    if etype in _NUMPY_OF_VALUE_TYPE:  # fixed-size elements: one vectorised read
        dt = np.dtype(_NUMPY_OF_VALUE_TYPE[etype])
        cur.need(n * dt.itemsize, what)
        arr = np.frombuffer(cur.buf, dtype=dt, count=n, offset=cur.pos).copy()
        cur.pos += n * dt.itemsize
        return arr.astype(bool) if etype == 7 else arr
    return [_read_value(cur, etype, f"{what}[{i}]", depth + 1) for i in range(n)]


def _align(x: int, a: int) -> int:
    return x + (-x) % a


class GGUFFile:
    """A parsed, fully checked GGUF header over a read-only memory map of the file.

    Attributes: ``path``, ``version``, ``metadata`` (key -> Python value; arrays of numbers
    are NumPy arrays, arrays of strings are lists), ``tensors`` (name -> GGUFTensorInfo,
    in file order), ``alignment``, ``data_offset``.
    Use as a context manager or call :meth:`close`; arrays returned by :meth:`tensor_data`
    keep the map alive on their own.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        p = Path(path)
        if not p.is_file():
            raise ModelFormatError(f"{self.path}: no such GGUF file")
        size = p.stat().st_size
        if size < 24:
            raise ModelFormatError(f"{self.path}: not a GGUF file ({size} bytes, the header alone needs 24)")
        with open(p, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self._parse()
        except Exception:
            self._map.close()
            raise

    def _parse(self) -> None:
        cur = _Cursor(self._map, self.path)
        magic = bytes(self._map[:4])
        if magic != GGUF_MAGIC:
            raise ModelFormatError(f"{self.path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")
        cur.pos = 4
        version = cur.u32("version")
        if version not in (2, 3):
            if struct.unpack("<I", struct.pack(">I", version))[0] in (2, 3):
                raise UnsupportedError(f"{self.path}: big-endian GGUF files are not supported")
            raise ModelFormatError(f"{self.path}: unsupported GGUF version {version} (this reader knows 2 and 3)")
        self.version = version
        n_tensors = cur.count("tensor_count", 8 + 4 + 4 + 8, MAX_TENSORS)   # name length, n_dims, type, offset
        n_kv = cur.count("kv_count", 8 + 4 + 1, MAX_KV)                      # key length, type, smallest value

        metadata: dict[str, Any] = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}")
            vtype = cur.u32(f"value type of {key!r}")
            metadata[key] = _read_value(cur, vtype, f"metadata {key!r}")
        self.metadata = metadata

        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 \
                or alignment & (alignment - 1) or alignment > 1 << 20:
            raise ModelFormatError(f"{self.path}: general.alignment must be a power of two, got {alignment!r}")
        self.alignment = alignment

        raw_infos = []
        for i in range(n_tensors):
            name = cur.string(f"name of tensor #{i}")
            n_dims = cur.u32(f"n_dims of tensor {name!r}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise cur.fail(f"tensor {name!r} has {n_dims} dimensions (GGML allows 1..{MAX_DIMS})")
            ne = [cur.u64(f"dimension {d} of tensor {name!r}") for d in range(n_dims)]
            type_id = cur.u32(f"type of tensor {name!r}")
            offset = cur.u64(f"data offset of tensor {name!r}")
            raw_infos.append((name, ne, type_id, offset))

        self.data_offset = _align(cur.pos, alignment)
        file_size = cur.size
        tensors: dict[str, GGUFTensorInfo] = {}
        for name, ne, type_id, offset in raw_infos:
            if name in tensors:
                raise ModelFormatError(f"{self.path}: tensor {name!r} is declared twice")
            if type_id not in GGML_TYPES:
                raise UnsupportedError(f"{self.path}: tensor {name!r} has unknown ggml type id {type_id}")
            type_name, block, type_size = GGML_TYPES[type_id]
            if any(d == 0 for d in ne):
                raise ModelFormatError(f"{self.path}: tensor {name!r} has a zero dimension {ne}")
            n_el = 1
            for d in ne:           # Python ints: no overflow; checked against the file size below
                n_el *= d
            if ne[0] % block:
                raise ModelFormatError(f"{self.path}: tensor {name!r} ({type_name}) has ne0={ne[0]}, "
                                       f"not a multiple of its block size {block}")
            nbytes = n_el // block * type_size
            if offset % alignment:
                raise ModelFormatError(f"{self.path}: tensor {name!r} offset {offset} is not a multiple "
                                       f"of the alignment {alignment}")
            start = self.data_offset + offset
            if start + nbytes > file_size:
                raise ModelFormatError(f"{self.path}: tensor {name!r} ({type_name}, shape {ne[::-1]}) needs "
                                       f"bytes {start}..{start + nbytes} but the file has {file_size} "
                                       f"(truncated or corrupt)")
            tensors[name] = GGUFTensorInfo(name, type_name, type_id, tuple(int(d) for d in reversed(ne)),
                                           start, nbytes)
        check_disjoint(((t.offset, t.offset + t.nbytes, t.name) for t in tensors.values()), self.path)
        self.tensors = tensors

    # -- access ---------------------------------------------------------------------------------
    @property
    def architecture(self) -> str:
        """``general.architecture`` (e.g. ``"llama"``)."""
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise ModelFormatError(f"{self.path}: metadata has no general.architecture string")
        return arch

    def tensor_data(self, name: str) -> np.ndarray | GGUFQuantTensor:
        """A tensor's stored data without copying: F32 as float32, F16 as float16 (NumPy
        shapes), BF16 widened to float32 (a copy), quantised types as :class:`GGUFQuantTensor`
        (``raw`` ``[rows, row_bytes]``).
        Unsupported types raise :class:`UnsupportedError` naming the type."""
        if name not in self.tensors:
            raise ModelFormatError(f"{self.path}: no tensor named {name!r}")
        info = self.tensors[name]
        if info.type_name not in SUPPORTED_TENSOR_TYPES:
            raise UnsupportedError(f"{self.path}: tensor {name!r} has ggml type {info.type_name}; supported "
                                   f"types are {', '.join(SUPPORTED_TENSOR_TYPES)}")
        buf = np.frombuffer(self._map, dtype=np.uint8, count=info.nbytes, offset=info.offset)
        if info.type_name == "F32":
            return buf.view("<f4").reshape(info.shape)
        if info.type_name == "F16":
            return buf.view("<f2").reshape(info.shape)
        if info.type_name == "BF16":       # bfloat16 = the top 16 bits of a float32
            return (buf.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(info.shape)
        rows = info.n_elements // info.shape[-1]
        return GGUFQuantTensor(info.type_name, buf.reshape(rows, info.nbytes // rows), info.shape)

    def release(self, name: str) -> None:
        """Tell the kernel a tensor's pages are no longer needed (after it was repacked or copied),
        so a loaded model does not keep the whole file resident. Views stay valid: the pages are
        read back from the file if touched again."""
        info = self.tensors[name]
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if advice is None or self._map.closed:
            return
        start = info.offset - info.offset % mmap.PAGESIZE
        try:
            self._map.madvise(advice, start, info.offset + info.nbytes - start)
        except (OSError, ValueError):   # not supported here: only memory use is affected
            pass

    def close(self) -> None:
        """Release the memory map (arrays still referencing it stay valid until dropped)."""
        try:
            self._map.close()
        except BufferError:   # views still exported: the map closes when they are dropped
            pass

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_gguf_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Only the (checked) metadata key/value pairs of a GGUF file."""
    g = GGUFFile(path)
    md = g.metadata
    g.close()
    return md


# -- llama architecture: config and tensor names --------------------------------------------------

def _md_int(md: dict, key: str, path: str, default: Any = None, ceiling: str = "token_id") -> Any:
    """An integer metadata value in ``[0, CEILINGS[ceiling]]`` (a constant per-layer array counts as one)."""
    v = md.get(key, default)
    if v is None:
        raise ModelFormatError(f"{path}: GGUF metadata lacks {key}")
    if isinstance(v, np.ndarray) and v.size and v.ndim == 1 and np.issubdtype(v.dtype, np.integer) \
            and key.endswith(("head_count", "head_count_kv", "feed_forward_length")):
        if np.any(v != v.flat[0]):
            raise UnsupportedError(f"{path}: {key} varies per layer ({v[:8].tolist()}...); not supported")
        v = v.flat[0]
    return check_count(v, f"{path}: GGUF metadata {key}", lo=0, hi=CEILINGS[ceiling])


def _md_float(md: dict, key: str, path: str, default: float | None = None, *, lo: float | None = None,
              hi: float | None = None) -> float:
    """A finite float metadata value in ``(lo, hi]``."""
    v = md.get(key, default)
    if v is None:
        raise ModelFormatError(f"{path}: GGUF metadata lacks {key}")
    return check_float(v, f"{path}: GGUF metadata {key}", lo=lo, hi=hi, lo_open=lo == 0.0)


_REQUIRED = object()   # a MetadataField default: the file must carry the key


def _md_bool(md: dict, key: str, path: str, default: bool = False) -> bool:
    """A bool metadata value (``default`` when absent)."""
    v = md.get(key, default)
    if not isinstance(v, (bool, np.bool_)):
        raise ModelFormatError(f"{path}: GGUF metadata {key} must be a bool, got {str(v)[:40]}")
    return bool(v)


@dataclass(frozen=True)
class MetadataField:
    """One GGUF metadata value and the HF config field it carries, in both directions.

    ``key`` follows the ``<arch>.`` prefix (``"block_count"`` is ``gpt2.block_count``) unless it
    starts with ``tokenizer.`` (absolute). ``kind`` (``"int"``, ``"float"``, ``"bool"``) is how it
    is checked on reading and written (uint32, float32, bool, as llama.cpp's converter writes them);
    ints are bounded by ``CEILINGS[ceiling]``. A file without the key gets ``default``
    (``_REQUIRED``: :class:`ModelFormatError` naming it). ``to_hf`` turns a stored value into the
    config value (a sliding window of 0 into None). To write, ``from_config(config dict)`` gives the
    value (default ``config[hf]``). ``hf=None``: llama.cpp wants the key but the HF config has no
    such field (it is written from ``from_config``; the family's ``finish`` hook may read it).
    """

    key: str
    hf: str | None
    kind: str = "int"
    ceiling: str = "hidden"
    default: Any = _REQUIRED
    to_hf: Callable[[Any], Any] | None = None
    from_config: Callable[[dict], Any] | None = None

    def full_key(self, arch: str) -> str:
        """The key as stored in the file."""
        return self.key if self.key.startswith("tokenizer.") else f"{arch}.{self.key}"

    def read(self, md: dict, arch: str, path: str) -> Any:
        """The checked stored value (or the default)."""
        k = self.full_key(arch)
        if k not in md:
            if self.default is _REQUIRED:
                raise ModelFormatError(f"{path}: GGUF metadata lacks {k} (required for {arch})")
            return self.default
        if self.kind == "bool":
            return _md_bool(md, k, path)
        if self.kind == "float":   # stored as float32: the shortest decimal that rounds to it is the intended one
            return float(str(np.float32(_md_float(md, k, path, lo=0.0, hi=1e15))))
        return _md_int(md, k, path, ceiling=self.ceiling)

    def value(self, config: dict) -> Any:
        """The value to write for an HF config dict."""
        return self.from_config(config) if self.from_config is not None else config[self.hf]


@dataclass(frozen=True)
class TensorTransform:
    """What llama.cpp's converter did to one kind of HF tensor on its way into GGUF, and its inverse:
    ``to_hf(stored) -> HF array``, ``to_gguf(HF array) -> stored`` (float32 arrays; a quantised
    tensor of such a kind is dequantised first)."""

    to_hf: Callable[[np.ndarray], np.ndarray]
    to_gguf: Callable[[np.ndarray], np.ndarray]


_LLAMA_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}


@dataclass(frozen=True)
class GGUFArchitecture:
    """How one GGUF ``general.architecture`` maps onto a model class here, both ways.

    Tensor names: ``block_names`` maps a GGUF block tensor (``blk.N.<name>``) to its HF submodule
    under ``<block_prefix>.N``; ``global_names`` maps the other GGUF tensors (``token_embd`` ...) to
    HF module names. Tensor values: ``permute_qk`` says whether llama.cpp's converter permuted the
    Q/K rows (only for ``llama``); ``norm_offset`` is added to every ``*norm.weight`` (Gemma's GGUF
    stores ``1 + w``, so -1); ``transposed`` lists the kinds (:func:`tensor_kind`) stored as the
    transpose of the HF tensor (GPT-2's Conv1D: HF ``[in, out]``, GGUF ``[out, in]`` rows);
    ``transforms`` maps a kind (``"ssm_a"``) to a :class:`TensorTransform`; ``tied_only``: the HF
    class always ties its head, so an ``output.weight`` equal to ``token_embd`` is dropped and any
    other is :class:`UnsupportedError`. Config: ``fields`` are the ``<arch>.*`` metadata values and
    their HF config fields (:func:`metadata_from_config` writes them); ``fixed_config`` holds what
    the architecture implies (its activation ...); ``finish(cfg, md, tensors, path)`` derives the
    rest. Families with no ``fields`` (the llama family) are read by :func:`config_from_metadata`'s
    llama path. ``model_kwargs`` go to the model class (BERT files carry no pooler).
    """

    hf_architecture: str
    model_type: str
    block_names: dict
    permute_qk: bool = False
    norm_offset: float = 0.0
    block_prefix: str = "model.layers"
    global_names: dict = field(default_factory=lambda: dict(_LLAMA_GLOBAL_NAMES))
    transposed: frozenset = frozenset()
    transforms: dict = field(default_factory=dict)
    tied_only: bool = False
    fields: tuple = ()
    fixed_config: dict = field(default_factory=dict)
    finish: Callable[[dict, dict, dict, str], None] | None = None
    model_kwargs: dict = field(default_factory=dict)


_LLAMA_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _int(key: str, hf: str | None, ceiling: str = "hidden", **kw) -> MetadataField:
    return MetadataField(key, hf, "int", ceiling, **kw)


def _float(key: str, hf: str | None, **kw) -> MetadataField:
    return MetadataField(key, hf, "float", **kw)


# -- phi3 (convert_hf_to_gguf.py Phi3MiniModel): LLaMA names, fused qkv and gate+up, partial rotary --

def _phi3_finish(cfg: dict, md: dict, tensors: dict, path: str) -> None:
    for name in ("rope_factors_long.weight", "rope_factors_short.weight"):
        if name in tensors:
            raise UnsupportedError(f"{path}: phi3 with long-context RoPE factors ({name}, 'longrope') is not supported")
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    rot = _md_int(md, "phi3.rope.dimension_count", path, head_dim, ceiling="head_dim")
    if not 0 < rot <= head_dim or rot % 2:
        raise ModelFormatError(f"{path}: phi3.rope.dimension_count={rot} must be even and in (0, {head_dim}]")
    cfg["partial_rotary_factor"] = rot / head_dim
    if cfg["original_max_position_embeddings"] is None:
        cfg["original_max_position_embeddings"] = cfg["max_position_embeddings"]


_PHI3_FIELDS = (
    _int("context_length", "max_position_embeddings", "positions"),
    _int("rope.scaling.original_context_length", "original_max_position_embeddings", "positions", default=None),
    _int("embedding_length", "hidden_size"),
    _int("feed_forward_length", "intermediate_size", "intermediate"),
    _int("block_count", "num_hidden_layers", "layers"),
    _int("attention.head_count", "num_attention_heads", "heads"),
    _int("attention.head_count_kv", "num_key_value_heads", "heads"),
    _float("attention.layer_norm_rms_epsilon", "rms_norm_eps"),
    _int("rope.dimension_count", None, "head_dim", default=None,
         from_config=lambda c: int(c.get("partial_rotary_factor", 1.0) * c["hidden_size"]) // c["num_attention_heads"]),
    _float("rope.freq_base", "rope_theta", default=10000.0),
    _int("attention.sliding_window", "sliding_window", "positions", default=0, to_hf=lambda w: w or None,
         from_config=lambda c: c.get("sliding_window") or 0),
)

# -- gpt2 (GPT2Model): Conv1D weights transposed, learned positions, always tied --------------------

def _gpt2_finish(cfg: dict, md: dict, tensors: dict, path: str) -> None:
    if cfg["n_inner"] == 4 * cfg["n_embd"]:
        cfg["n_inner"] = None                                     # HF's default, as GPT-2's config.json has it


_GPT2_FIELDS = (
    _int("context_length", "n_positions", "positions"),
    _int("embedding_length", "n_embd"),
    _int("feed_forward_length", "n_inner", "intermediate", from_config=lambda c: c.get("n_inner") or 4 * c["n_embd"]),
    _int("block_count", "n_layer", "layers"),
    _int("attention.head_count", "n_head", "heads"),
    _float("attention.layer_norm_epsilon", "layer_norm_epsilon"),
)

# -- mamba (MambaModel): A stored as -exp(A_log), conv1d squeezed to [d_inner, d_conv] --------------

def _a_log_from_a(a: np.ndarray) -> np.ndarray:
    if not np.all(a < 0):
        raise ModelFormatError("mamba ssm_a must be negative everywhere (llama.cpp stores A = -exp(A_log))")
    return np.log(-a.astype(np.float64)).astype(np.float32)


def _mamba_finish(cfg: dict, md: dict, tensors: dict, path: str) -> None:
    if _md_bool(md, "mamba.ssm.dt_b_c_rms", path):
        raise UnsupportedError(f"{path}: mamba.ssm.dt_b_c_rms is set (Falcon-Mamba's B/C/dt RMSNorm); not supported")
    hidden, inner = cfg["hidden_size"], cfg["intermediate_size"]
    if inner % hidden:
        raise UnsupportedError(f"{path}: mamba ssm.inner_size {inner} is not a multiple of embedding_length {hidden}")
    cfg["expand"] = inner // hidden
    cfg["use_conv_bias"] = "blk.0.ssm_conv1d.bias" in tensors
    cfg["use_bias"] = "blk.0.ssm_in.bias" in tensors


_MAMBA_FIELDS = (
    _int("context_length", None, "positions", default=None, from_config=lambda c: 1 << 20),   # "arbitrary" (converter)
    _int("embedding_length", "hidden_size"),
    _int("feed_forward_length", None, "intermediate", default=None, from_config=lambda c: 0),  # unused by mamba, but
    _int("attention.head_count", None, "heads", default=None, from_config=lambda c: 0),       # llama.cpp wants them
    _int("block_count", "num_hidden_layers", "layers"),
    _int("ssm.conv_kernel", "conv_kernel", "kernel"),
    _int("ssm.inner_size", "intermediate_size", "intermediate"),
    _int("ssm.state_size", "state_size", "state"),
    _int("ssm.time_step_rank", "time_step_rank"),
    _float("attention.layer_norm_rms_epsilon", "layer_norm_epsilon", default=1e-5),
    MetadataField("ssm.dt_b_c_rms", None, "bool", default=False, from_config=lambda c: False),
)

# -- bert (BertModel): an encoder; token types and positions; no pooler, no MLM head in the file ----

def _bert_finish(cfg: dict, md: dict, tensors: dict, path: str) -> None:
    if _md_bool(md, "bert.attention.causal", path, default=False):
        raise UnsupportedError(f"{path}: bert.attention.causal is true; a BERT encoder attends both ways")
    rows = tensors["token_types.weight"].shape[0] if "token_types.weight" in tensors else None
    if cfg["type_vocab_size"] is None:
        cfg["type_vocab_size"] = rows or 1
    elif rows is not None and rows != cfg["type_vocab_size"]:
        raise ModelFormatError(f"{path}: tokenizer.ggml.token_type_count={cfg['type_vocab_size']} but token_types "
                               f"has {rows} rows")
    pooling = md.get("bert.pooling_type")
    if pooling is not None:
        check_count(pooling, f"{path}: GGUF metadata bert.pooling_type", lo=0, hi=4)


_BERT_FIELDS = (
    _int("context_length", "max_position_embeddings", "positions"),
    _int("embedding_length", "hidden_size"),
    _int("feed_forward_length", "intermediate_size", "intermediate"),
    _int("block_count", "num_hidden_layers", "layers"),
    _int("attention.head_count", "num_attention_heads", "heads"),
    _float("attention.layer_norm_epsilon", "layer_norm_eps"),
    MetadataField("attention.causal", None, "bool", default=False, from_config=lambda c: False),
    _int("tokenizer.ggml.token_type_count", "type_vocab_size", "labels", default=None),
)

#: GGUF general.architecture -> its mapping; other architectures raise UnsupportedError naming them
GGUF_ARCHITECTURES: dict[str, GGUFArchitecture] = {
    "llama": GGUFArchitecture("LlamaForCausalLM", "llama", _LLAMA_BLOCK_NAMES, permute_qk=True),
    "qwen2": GGUFArchitecture("Qwen2ForCausalLM", "qwen2", _LLAMA_BLOCK_NAMES),
    "gemma3": GGUFArchitecture("Gemma3ForCausalLM", "gemma3_text", {
        **_LLAMA_BLOCK_NAMES,
        "ffn_norm": "pre_feedforward_layernorm",          # diff vs llama: four norms per layer
        "post_attention_norm": "post_attention_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
        "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm",
    }, norm_offset=-1.0),
    "phi3": GGUFArchitecture("Phi3ForCausalLM", "phi3", {
        "attn_norm": "input_layernorm",
        "attn_qkv": "self_attn.qkv_proj",                  # diff vs llama: q, k, v rows in one tensor
        "attn_output": "self_attn.o_proj",
        "ffn_norm": "post_attention_layernorm",
        "ffn_up": "mlp.gate_up_proj",                      # diff vs llama: gate rows, then up rows
        "ffn_down": "mlp.down_proj",
    }, fields=_PHI3_FIELDS, fixed_config={"hidden_act": "silu"}, finish=_phi3_finish),
    "gpt2": GGUFArchitecture("GPT2LMHeadModel", "gpt2", {
        "attn_norm": "ln_1",
        "attn_qkv": "attn.c_attn",
        "attn_output": "attn.c_proj",
        "ffn_norm": "ln_2",
        "ffn_up": "mlp.c_fc",
        "ffn_down": "mlp.c_proj",
    }, block_prefix="transformer.h",
        global_names={"token_embd": "transformer.wte", "position_embd": "transformer.wpe",
                      "output_norm": "transformer.ln_f", "output": "lm_head"},
        transposed=frozenset({"attn_qkv.weight", "attn_output.weight", "ffn_up.weight", "ffn_down.weight"}),
        tied_only=True, fields=_GPT2_FIELDS, fixed_config={"activation_function": "gelu_new"}, finish=_gpt2_finish),
    "mamba": GGUFArchitecture("MambaForCausalLM", "mamba", {
        "attn_norm": "norm",
        "ssm_in": "mixer.in_proj",
        "ssm_conv1d": "mixer.conv1d",
        "ssm_x": "mixer.x_proj",
        "ssm_dt": "mixer.dt_proj",
        "ssm_a": "mixer.A_log",
        "ssm_d": "mixer.D",
        "ssm_out": "mixer.out_proj",
    }, block_prefix="backbone.layers",
        global_names={"token_embd": "backbone.embeddings", "output_norm": "backbone.norm_f", "output": "lm_head"},
        transforms={
            "ssm_a": TensorTransform(_a_log_from_a, lambda a_log: -np.exp(a_log)),
            "ssm_conv1d.weight": TensorTransform(lambda w: w.reshape(w.shape[0], 1, w.shape[-1]),   # [di, k] -> [di, 1, k]
                                                 lambda w: w.reshape(w.shape[0], w.shape[-1])),   # [di, 1, k] -> [di, k]
        }, fields=_MAMBA_FIELDS, finish=_mamba_finish),
    "bert": GGUFArchitecture("BertModel", "bert", {
        "attn_q": "attention.self.query",
        "attn_k": "attention.self.key",
        "attn_v": "attention.self.value",
        "attn_output": "attention.output.dense",
        "attn_output_norm": "attention.output.LayerNorm",
        "ffn_up": "intermediate.dense",
        "ffn_down": "output.dense",
        "layer_output_norm": "output.LayerNorm",
    }, block_prefix="encoder.layer",
        global_names={"token_embd": "embeddings.word_embeddings", "position_embd": "embeddings.position_embeddings",
                      "token_types": "embeddings.token_type_embeddings", "token_embd_norm": "embeddings.LayerNorm"},
        fields=_BERT_FIELDS, fixed_config={"hidden_act": "gelu", "position_embedding_type": "absolute"},
        finish=_bert_finish, model_kwargs={"add_pooling_layer": False}),
}


def metadata_from_config(architecture: str, config: dict) -> dict[str, tuple[str, Any]]:
    """The ``<arch>.*`` metadata llama.cpp's converter writes for an HF config dict, as
    ``{full key: (kind, value)}`` with kind ``"int"`` (uint32), ``"float"`` (float32) or ``"bool"``:
    the inverse of :func:`config_from_metadata`, for the families described by ``fields``."""
    spec = GGUF_ARCHITECTURES[architecture]
    if not spec.fields:
        raise UnsupportedError(f"GGUF {architecture}: no metadata table (the llama family is written by convert)")
    out = {}
    for f in spec.fields:
        v = f.value(config)
        if v is not None:
            out[f.full_key(architecture)] = (f.kind, bool(v) if f.kind == "bool" else
                                             float(v) if f.kind == "float" else int(v))
    return out


def gguf_architecture(md: dict, path: str = "<gguf>") -> tuple[str, GGUFArchitecture]:
    """``(name, mapping)`` of the file's ``general.architecture`` (``UnsupportedError`` naming it)."""
    arch = md.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelFormatError(f"{path}: metadata has no general.architecture string")
    if arch not in GGUF_ARCHITECTURES:
        raise UnsupportedError(f"{path}: GGUF architecture {arch!r} is not supported "
                               f"(supported: {', '.join(sorted(GGUF_ARCHITECTURES))})")
    return arch, GGUF_ARCHITECTURES[arch]


def config_from_metadata(md: dict, tensors: dict[str, GGUFTensorInfo], path: str = "<gguf>",
                         rope_freqs: np.ndarray | None = None) -> dict:
    """The HF config dict (transformers' field names) of a GGUF file, from its ``<arch>.*`` metadata
    (and, for Llama 3.x files, the values of their ``rope_freqs`` tensor)."""
    a, spec = gguf_architecture(md, path)
    if spec.fields:
        return _config_from_fields(a, spec, md, tensors, path)
    hidden = _md_int(md, f"{a}.embedding_length", path, ceiling="hidden")
    heads = _md_int(md, f"{a}.attention.head_count", path, ceiling="heads")
    kv_heads = _md_int(md, f"{a}.attention.head_count_kv", path, heads, ceiling="heads")
    if heads == 0 or kv_heads == 0 or heads % kv_heads:
        raise ModelFormatError(f"{path}: head_count={heads} must be a positive multiple of head_count_kv={kv_heads}")
    vocab = md.get(f"{a}.vocab_size")
    if vocab is None:
        tokens = md.get("tokenizer.ggml.tokens")
        if isinstance(tokens, list):
            vocab = len(tokens)
        elif "token_embd.weight" in tensors:
            vocab = tensors["token_embd.weight"].shape[0]
    if vocab is None:
        raise ModelFormatError(f"{path}: cannot tell the vocabulary size (no {a}.vocab_size, tokens or token_embd)")
    vocab = _md_int({f"{a}.vocab_size": vocab}, f"{a}.vocab_size", path, ceiling="vocab")
    head_dim = _md_int(md, f"{a}.attention.key_length", path, hidden // heads, ceiling="head_dim")
    cfg: dict[str, Any] = {
        "architectures": [spec.hf_architecture],
        "model_type": spec.model_type,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": _md_int(md, f"{a}.feed_forward_length", path, ceiling="intermediate"),
        "num_hidden_layers": _md_int(md, f"{a}.block_count", path, ceiling="layers"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        # GGUF stores eps as float32; the shortest decimal that rounds to it is the intended value
        "rms_norm_eps": float(str(np.float32(_md_float(md, f"{a}.attention.layer_norm_rms_epsilon", path, 1e-5,
                                                       lo=0.0, hi=1.0)))),
        "rope_theta": _md_float(md, f"{a}.rope.freq_base", path, 10000.0, lo=1.0, hi=1e15),
        "max_position_embeddings": _md_int(md, f"{a}.context_length", path, 2048, ceiling="positions"),
        "tie_word_embeddings": "output.weight" not in tensors,
    }
    if a == "llama":
        cfg["attention_bias"] = "blk.0.attn_q.bias" in tensors
        cfg["mlp_bias"] = "blk.0.ffn_up.bias" in tensors
    rot = md.get(f"{a}.rope.dimension_count")
    if rot is not None and _md_int(md, f"{a}.rope.dimension_count", path, ceiling="head_dim") != cfg["head_dim"]:
        raise UnsupportedError(f"{path}: partial rotary (rope.dimension_count={rot}, head_dim={cfg['head_dim']}) "
                               f"is not supported for GGUF {a}")
    scaling = md.get(f"{a}.rope.scaling.type")
    if scaling is not None and not isinstance(scaling, str):
        raise ModelFormatError(f"{path}: GGUF metadata {a}.rope.scaling.type must be a string, got {str(scaling)[:40]}")
    if scaling not in (None, "none"):
        factor = _md_float(md, f"{a}.rope.scaling.factor", path, lo=0.0, hi=1e6)
        if scaling != "linear":
            raise UnsupportedError(f"{path}: rope scaling type {scaling!r} in GGUF is not supported (only linear)")
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": factor}
    if "rope_freqs.weight" in tensors:
        if rope_freqs is None:
            raise UnsupportedError(f"{path}: llama3-style rope_freqs: pass the tensor's values (load_gguf does)")
        cfg["rope_scaling"] = llama3_scaling_from_rope_freqs(rope_freqs, head_dim, cfg["rope_theta"], path)
    if a == "gemma3":
        # gemma3 hyper-parameters llama.cpp's own files leave to their defaults: every 6th layer global,
        # local layers with RoPE base 1e4, scores scaled by 1/sqrt(head_dim) (1/sqrt(d/H) for 27B).
        # `axon-llm convert` writes the first two keys (llama.cpp reads them too).
        cfg["sliding_window"] = _md_int(md, f"{a}.attention.sliding_window", path)
        cfg["sliding_window_pattern"] = _md_int(md, f"{a}.attention.sliding_window_pattern", path, 6, ceiling="layers")
        cfg["rope_local_base_freq"] = _md_float(md, f"{a}.rope.freq_base_swa", path, 10000.0, lo=1.0, hi=1e15)
        cfg["query_pre_attn_scalar"] = hidden // heads if cfg["num_hidden_layers"] == 62 else head_dim
        cap = md.get(f"{a}.final_logit_softcapping")
        cfg["final_logit_softcapping"] = None if cap is None else _md_float(md, f"{a}.final_logit_softcapping", path)
    _special_token_ids(md, cfg)
    return cfg


def _special_token_ids(md: dict, cfg: dict) -> None:
    """bos / eos / pad ids from ``tokenizer.ggml.*`` into the config, as transformers reads them."""
    for hf, key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                    ("pad_token_id", "padding_token_id")):
        v = md.get(f"tokenizer.ggml.{key}")
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            cfg[hf] = int(v)


def _config_from_fields(a: str, spec: GGUFArchitecture, md: dict, tensors: dict, path: str) -> dict:
    """The HF config of a family described by ``spec.fields`` (phi3, gpt2, mamba, bert)."""
    cfg: dict[str, Any] = {"architectures": [spec.hf_architecture], "model_type": spec.model_type,
                           **spec.fixed_config}
    for f in spec.fields:
        v = f.read(md, a, path)
        if f.hf is not None:
            cfg[f.hf] = f.to_hf(v) if f.to_hf is not None and v is not None else v
    if "token_embd.weight" not in tensors:
        raise ModelFormatError(f"{path}: GGUF {a} file has no token_embd.weight")
    vocab = tensors["token_embd.weight"].shape[0]
    cfg["vocab_size"] = check_count(vocab, f"{path}: token_embd rows", lo=1, hi=CEILINGS["vocab"])
    if "output" in spec.global_names:
        cfg["tie_word_embeddings"] = spec.tied_only or "output.weight" not in tensors
    if spec.finish is not None:
        spec.finish(cfg, md, tensors, path)
    _special_token_ids(md, cfg)
    return cfg


def llama3_scaling_from_rope_freqs(factors, head_dim: int, theta: float, path: str = "<gguf>") -> dict | None:
    """transformers' ``rope_scaling`` (``rope_type: llama3``) that gives a GGUF ``rope_freqs`` tensor.

    llama.cpp's converter stores, per rotary frequency ``i``, the divisor ``r_i`` of its inverse
    frequency (``inv_i / r_i`` is what rotates): 1 for short wavelengths, ``factor`` for long ones,
    and in between ``1 / ((1 - s) / factor + s)`` with ``s = (old / wavelen - low) / (high - low)``,
    linear in ``1 / wavelen``. So ``factor = max r``, and a line through the in-between points gives
    ``low / old`` and ``high / old``; ``low_freq_factor = 1`` (every Llama 3.x) fixes the scale. The
    result is checked by recomputing the divisors with transformers' formula
    (:func:`axon_llm.rope.compute_inv_freq`); a tensor it cannot reproduce is ``UnsupportedError``.
    """
    from axon_llm.rope import compute_inv_freq

    r = np.asarray(factors, dtype=np.float64).reshape(-1)
    inv = np.asarray(compute_inv_freq(head_dim, theta), dtype=np.float64)
    if r.shape != inv.shape or not np.all(np.isfinite(r)) or np.any(r <= 0):
        raise ModelFormatError(f"{path}: rope_freqs must hold {inv.size} positive finite values, got {r.shape}")
    if np.allclose(r, 1.0, rtol=1e-6):
        return None
    factor = float(r.max())
    wavelen = 2 * np.pi / inv
    middle = (r > 1 + 1e-4) & (r < factor * (1 - 1e-4))
    candidates = []
    if middle.sum() >= 2:
        s = (1 / r[middle] - 1 / factor) / (1 - 1 / factor)          # in (0, 1)
        slope, offset = np.polyfit(1 / wavelen[middle], s, 1)           # s = slope / wavelen + offset
        if slope > 0 and offset < 0:
            old = -slope / offset                                       # low = 1
            candidates.append((1.0, 1.0 + old / slope, old))
    candidates.append((1.0, 4.0, 8192.0))                               # Llama 3.1 / 3.2
    for low, high, old in candidates:
        scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": float(low),
                   "high_freq_factor": float(round(high, 6)), "original_max_position_embeddings": int(round(old))}
        scaled = np.asarray(compute_inv_freq(head_dim, theta, scaling), dtype=np.float64)
        if np.allclose(inv / scaled, r, rtol=1e-4):
            return scaling
    raise UnsupportedError(f"{path}: the rope_freqs tensor matches no llama3 RoPE scaling (factors {r.tolist()})")


_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z0-9_]+)(?:\.(weight|bias))?$")


def tensor_kind(gguf_name: str) -> str:
    """A GGUF tensor name without its block number: ``blk.3.attn_qkv.weight`` -> ``attn_qkv.weight``,
    ``blk.0.ssm_a`` -> ``ssm_a``; a global tensor is its own kind."""
    m = _BLOCK_RE.match(gguf_name)
    if not m:
        return gguf_name
    return m.group(2) + (f".{m.group(3)}" if m.group(3) else "")


def hf_name(gguf_name: str, architecture: str = "llama") -> str:
    """The HuggingFace name of a GGUF tensor (``blk.3.ffn_up.weight`` ->
    ``model.layers.3.mlp.up_proj.weight``). Unknown names raise :class:`UnsupportedError`."""
    spec = GGUF_ARCHITECTURES[architecture]
    m = _BLOCK_RE.match(gguf_name)
    if m and m.group(2) in spec.block_names:
        suffix = f".{m.group(3)}" if m.group(3) else ""
        return f"{spec.block_prefix}.{m.group(1)}.{spec.block_names[m.group(2)]}{suffix}"
    base, _, suffix = gguf_name.rpartition(".")
    if base in spec.global_names and suffix in ("weight", "bias"):
        return f"{spec.global_names[base]}.{suffix}"
    raise UnsupportedError(f"GGUF tensor {gguf_name!r} has no {architecture} counterpart "
                           f"(MoE, a classifier head, or another architecture?)")


def gguf_tensor_name(hf: str, architecture: str = "llama") -> str:
    """The inverse of :func:`hf_name`: ``model.layers.3.mlp.up_proj.weight`` -> ``blk.3.ffn_up.weight``."""
    spec = GGUF_ARCHITECTURES[architecture]
    prefix = spec.block_prefix + "."
    if hf.startswith(prefix):
        layer, _, rest = hf[len(prefix):].partition(".")
        if layer.isdigit():
            for g, h in spec.block_names.items():
                if rest == h:                                   # a bare parameter (mamba's A_log, D)
                    return f"blk.{layer}.{g}"
                if rest in (f"{h}.weight", f"{h}.bias"):
                    return f"blk.{layer}.{g}.{rest.rpartition('.')[2]}"
    base, _, suffix = hf.rpartition(".")
    for g, h in spec.global_names.items():
        if h == base and suffix in ("weight", "bias"):
            return f"{g}.{suffix}"
    raise UnsupportedError(f"tensor {hf!r} has no GGUF {architecture} name")


def unpermute_qk_rows(x: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's ``permute`` of Q/K rows (convert_hf_to_gguf.py, LlamaModel.permute).

    The converter reorders each head's ``d`` output rows from HF's rotate_half order
    ``[0 .. d/2), [d/2 .. d)`` to interleaved pairs, viewing rows as ``[n_head, 2, d/2]`` and
    swapping the last two axes. Here rows are viewed as ``[n_head, d/2, 2]`` and swapped back.
    Works on dense weights, biases, and quantised ``raw [rows, row_bytes]`` alike, since only
    whole rows move.
    """
    rows = x.shape[0]
    if n_head <= 0 or rows % (2 * n_head):
        raise ModelFormatError(f"cannot un-permute {rows} Q/K rows over {n_head} heads")
    half = rows // n_head // 2
    return np.ascontiguousarray(
        x.reshape(n_head, half, 2, *x.shape[1:])   # [rows, ...] -> [n_head, d/2, 2, ...]
        .swapaxes(1, 2)                             # -> [n_head, 2, d/2, ...]
        .reshape(x.shape))                          # -> [rows, ...] in rotate_half order


def permute_qk_rows(x: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``permute`` of HF Q/K rows (what its converter writes): the inverse of
    :func:`unpermute_qk_rows` -- rows viewed as ``[n_head, 2, d/2]``, the last two axes swapped."""
    rows = x.shape[0]
    if n_head <= 0 or rows % (2 * n_head):
        raise ModelFormatError(f"cannot permute {rows} Q/K rows over {n_head} heads")
    half = rows // n_head // 2
    return np.ascontiguousarray(
        x.reshape(n_head, 2, half, *x.shape[1:])    # [rows, ...] -> [n_head, 2, d/2, ...]
        .swapaxes(1, 2)                             # -> [n_head, d/2, 2, ...]
        .reshape(x.shape))                          # -> [rows, ...] in GGML's interleaved order


@dataclass
class GGUFModel:
    """A loaded GGUF llama checkpoint with HF names.

    ``config``: HF-style config dict; ``tensors``: HF name -> float32 ndarray (F32/F16 tensors)
    or :class:`GGUFQuantTensor` (quantised, still packed, Q/K already un-permuted);
    ``metadata``: every GGUF key/value; ``tensor_infos``: GGUF name -> header info.
    """

    path: str
    architecture: str
    config: dict
    metadata: dict
    tensor_infos: dict[str, GGUFTensorInfo]
    tensors: dict[str, Any] = field(repr=False)
    gguf_names: dict[str, str] = field(default_factory=dict, repr=False)   # HF name -> GGUF name
    file: GGUFFile | None = field(default=None, repr=False)
    #: HF names of quantised tensors still in GGUF's transposed layout (GPT-2's Conv1D weights as
    #: ``[out, in]`` blocks: a block cannot be transposed; :func:`build_from_gguf` makes them linears)
    transposed: set[str] = field(default_factory=set, repr=False)

    def release(self, hf_name: str) -> None:
        """Drop the file pages behind one tensor (see :meth:`GGUFFile.release`)."""
        if self.file is not None and hf_name in self.gguf_names:
            self.file.release(self.gguf_names[hf_name])


def load_gguf(path: str | os.PathLike) -> GGUFModel:
    """Read a GGUF file of a supported architecture (:data:`GGUF_ARCHITECTURES`): checked header,
    HF config, HF-named tensors.

    Quantised tensors stay quantised (raw blocks, zero-copy except for the Q/K row
    un-permutation of ``llama``); F16 and BF16 are widened to float32; Gemma's ``1 + w`` norms get
    their 1 back off; each family's :class:`TensorTransform` and transposes are undone (dense
    tensors only: see :attr:`GGUFModel.transposed`). Raises :class:`ModelFormatError` for a corrupt
    file and :class:`UnsupportedError` for another architecture or tensor type.
    """
    g = GGUFFile(path)
    arch, spec = gguf_architecture(g.metadata, g.path)
    freqs = g.tensor_data("rope_freqs.weight") if "rope_freqs.weight" in g.tensors else None
    cfg = config_from_metadata(g.metadata, g.tensors, g.path, rope_freqs=freqs)
    heads, kv_heads = cfg.get("num_attention_heads"), cfg.get("num_key_value_heads")
    tensors: dict[str, Any] = {}
    names: dict[str, str] = {}
    transposed: set[str] = set()
    for name, info in g.tensors.items():
        if name == "rope_freqs.weight":          # read into cfg["rope_scaling"] above
            continue
        if spec.tied_only and name == "output.weight":
            _check_tied_copy(g, spec)            # a stored copy of the tied head: dropped
            continue
        key = hf_name(name, arch)
        names[key] = name
        kind = tensor_kind(name)
        data = g.tensor_data(name)
        transform = spec.transforms.get(kind)
        if transform is not None and isinstance(data, GGUFQuantTensor):
            data = data.dequantize()
        if isinstance(data, np.ndarray):
            data = np.array(data, dtype=np.float32)   # owned float32 copy (norms, small tensors)
            if spec.norm_offset and name.endswith("norm.weight"):
                data += np.float32(spec.norm_offset)
            if transform is not None:
                data = transform.to_hf(data)
            if kind in spec.transposed:
                data = np.ascontiguousarray(data.T)   # GGUF [out, in] -> HF Conv1D [in, out]
        elif kind in spec.transposed:
            transposed.add(key)
        n_perm = 0
        if spec.permute_qk:
            n_perm = heads if ".attn_q." in name else kv_heads if ".attn_k." in name else 0
        if n_perm:
            if isinstance(data, GGUFQuantTensor):
                data = GGUFQuantTensor(data.type_name, unpermute_qk_rows(data.raw, n_perm), data.shape)
            else:
                data = unpermute_qk_rows(data, n_perm)
        tensors[key] = data
    return GGUFModel(g.path, arch, cfg, g.metadata, dict(g.tensors), tensors, names, g, transposed)


def _check_tied_copy(g: GGUFFile, spec: GGUFArchitecture) -> None:
    """An ``output.weight`` in a family whose head is always tied must be a byte copy of ``token_embd``."""
    out, emb = g.tensors["output.weight"], g.tensors.get("token_embd.weight")
    same = emb is not None and out.type_id == emb.type_id and out.shape == emb.shape and \
        g._map[out.offset:out.offset + out.nbytes] == g._map[emb.offset:emb.offset + emb.nbytes]
    if not same:
        raise UnsupportedError(f"{g.path}: output.weight differs from token_embd.weight, but {spec.hf_architecture} "
                               f"always ties its head to the token embedding")


__all__ = [
    "GGUFFile", "GGUFTensorInfo", "GGUFQuantTensor", "GGUFModel", "load_gguf", "read_gguf_metadata",
    "config_from_metadata", "llama3_scaling_from_rope_freqs", "hf_name", "gguf_tensor_name", "unpermute_qk_rows",
    "permute_qk_rows", "GGUFArchitecture", "GGUF_ARCHITECTURES", "MetadataField", "TensorTransform",
    "metadata_from_config", "tensor_kind", "gguf_architecture", "build_from_gguf", "GGML_TYPES",
    "SUPPORTED_TENSOR_TYPES", "QUANTIZED_TYPES",
]


# -- building a model -----------------------------------------------------------------------------

#: byte ranges of the float16 scales inside one block, per quantised type
_SCALE_BYTES = {"Q8_0": (0, 2), "Q4_0": (0, 2), "Q4_1": (0, 4), "Q5_0": (0, 2), "Q5_1": (0, 4),
                "Q4_K": (0, 4), "Q5_K": (0, 4), "Q6_K": (208, 210), "Q2_K": (80, 84), "Q3_K": (108, 110)}


def _check_scales(path: str, name: str, t: GGUFQuantTensor) -> None:
    """A quantised tensor whose block scales are NaN/inf (bytes of another type, or corruption)
    would make every output NaN: :class:`ModelFormatError` naming it."""
    span = _SCALE_BYTES.get(t.type_name)
    if span is None:
        return
    block_bytes = GGML_TYPES[next(i for i, v in GGML_TYPES.items() if v[0] == t.type_name)][2]
    blocks = t.raw.reshape(-1, block_bytes)
    scales = np.ascontiguousarray(blocks[:, span[0]:span[1]]).view("<f2")
    if not np.isfinite(scales).all():
        raise ModelFormatError(f"{path}: quantised tensor {name!r} ({t.type_name}) has NaN/inf block scales")


def build_from_gguf(path: str | os.PathLike, **kwargs):
    """A ready model (the class of the file's family in :data:`GGUF_ARCHITECTURES`: LLaMA, Qwen2,
    Gemma 3, Phi-3, GPT-2, Mamba, BERT) from a GGUF file, quantised weights kept quantised.

    Every quantised linear weight becomes a :class:`axon_llm.quantized.QuantizedLinear` (repacked
    once, here, for the fused kernels); a quantised ``token_embd`` becomes a
    :class:`~axon_llm.quantized.QuantizedEmbedding`, shared with ``lm_head`` when the embeddings
    are tied (no ``output.weight`` in the file). A quantised GPT-2 Conv1D weight (``[out, in]``
    blocks) becomes a QuantizedLinear too: ``x W^T + b`` is what the Conv1D computes with ``W^T``.
    F32/F16 tensors load as float32 Parameters.
    ``from_pretrained(path.gguf)`` calls this. No keyword arguments are accepted yet.
    """
    if kwargs:
        raise UnsupportedError(f"build_from_gguf takes no options, got {sorted(kwargs)}")
    from axon_kernels.quant import pack

    import axon.nn as nn
    from axon_llm.loaders.safetensors import load_state
    from axon_llm.models import ARCHITECTURES, CONFIG_CLASSES
    from axon_llm.quantized import QuantizedEmbedding, QuantizedLinear

    gm = load_gguf(path)
    spec = GGUF_ARCHITECTURES[gm.architecture]
    model_class = ARCHITECTURES[gm.config["architectures"][0]]
    config_class = CONFIG_CLASSES.get(gm.config["model_type"], model_class.config_class)   # Phi3Config for phi3
    config = config_class.from_dict(gm.config)
    blocks = {int(m.group(1)) for m in map(_BLOCK_RE.match, gm.tensor_infos) if m}
    if blocks != set(range(config.num_hidden_layers)):
        raise ModelFormatError(f"{gm.path}: block_count is {config.num_hidden_layers} but the file has tensors for "
                               f"{len(blocks)} blocks" + (f" (up to blk.{max(blocks)})" if blocks else ""))
    check_config_against_file(config, sum(t.n_elements for t in gm.tensor_infos.values()), gm.path)
    model = model_class(config, **spec.model_kwargs)       # lazy parameters: nothing allocated yet
    quantised = {n: t for n, t in gm.tensors.items() if isinstance(t, GGUFQuantTensor)}
    dense = {n: t for n, t in gm.tensors.items() if n not in quantised}   # incl. biases of quantised layers
    packed_embedding = None
    for name, t in quantised.items():
        if not name.endswith(".weight"):
            raise UnsupportedError(f"{gm.path}: quantised tensor {name!r} is not a weight matrix")
        module_name = name[: -len(".weight")]
        parent_name, _, attr = module_name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
            old = getattr(parent, attr)
        except (AttributeError, KeyError, ValueError):
            raise ModelFormatError(f"{gm.path}: tensor {name!r} has no place in {model_class.__name__}") from None
        if isinstance(old, nn.Embedding) and module_name != spec.global_names["token_embd"]:
            dense[name] = t.dequantize()       # positions / token types: tables llama.cpp keeps F32 anyway
            continue
        want = tuple(getattr(getattr(old, "weight", None), "shape", ()))
        if name in gm.transposed:
            want = want[::-1]                              # a Conv1D [in, out] stored as [out, in] rows
        if len(t.shape) != 2 or len(want) != 2:
            raise ModelFormatError(f"{gm.path}: tensor {name!r} is quantised ({t.type_name}) but is not a weight "
                                   f"matrix (shape {list(t.shape)}); only linear and embedding weights may be")
        if tuple(t.shape) != want:
            raise ModelFormatError(f"{gm.path}: tensor {name!r} has shape {list(t.shape)}, the config implies {list(want)}")
        _check_scales(gm.path, name, t)
        qm = pack(t.type_name, t.raw, t.shape)
        gm.release(name)   # the packed copy is all we keep: let the file's pages go
        if module_name == spec.global_names["token_embd"]:
            packed_embedding = qm
            setattr(parent, attr, QuantizedEmbedding(qm))
        else:
            bias = gm.tensors.get(f"{module_name}.bias")
            if isinstance(bias, GGUFQuantTensor):
                raise UnsupportedError(f"{gm.path}: quantised bias {module_name}.bias is not supported")
            setattr(parent, attr, QuantizedLinear(qm, bias))
    if "output" in spec.global_names and config.tie_word_embeddings and packed_embedding is not None:
        model.lm_head = QuantizedLinear(packed_embedding)   # same blocks as the embedding: no copy
        model.tied_keys = ()
    load_state(model, dense)
    model.eval()
    # scalars and short lists only: the vocabulary arrays (tokens, merges, scores: ~100k Python
    # objects, ~10 MB) belong to the tokenizer, which reads them from the file itself
    model.gguf_metadata = {k: v for k, v in gm.metadata.items() if not (hasattr(v, "__len__") and
                                                                          not isinstance(v, str) and len(v) > 1024)}
    return model
