"""HuggingFace-layout checkpoints: config.json + safetensors (single file or sharded).

Module attribute names equal HF state-dict keys (``model.layers.0.self_attn.q_proj.weight``), so
loading is a lookup. The only rewrites, all in :func:`map_hf_to_axonml`, are the ones HF itself
does when loading:

* a checkpoint saved from the bare model (``wte.weight``, ``embeddings.word_embeddings.weight``)
  loaded into a model with a head (``transformer.``, ``bert.`` prefixes), and the reverse;
* old TF-era names ``LayerNorm.gamma`` / ``LayerNorm.beta`` -> ``weight`` / ``bias``;
* buffers some checkpoints carry that are not parameters (GPT-2 ``attn.bias`` / ``attn.masked_bias``,
  BERT ``embeddings.position_ids``, ``rotary_emb.inv_freq``) are dropped;
* Mixtral experts stored fused (transformers 5 in-memory layout: ``mlp.experts.gate_up_proj``
  ``[E, 2I, d]``, ``mlp.experts.down_proj`` ``[E, d, I]``, ``mlp.gate``) are split into
  ``block_sparse_moe.experts.N.w1/w3/w2`` and ``block_sparse_moe.gate``.

Tied weights (GPT-2 ``lm_head``, BERT MLM ``cls.predictions.decoder``, ``tie_word_embeddings``)
are not stored by HF and are not parameters of their own here either.

No weight is ever transposed for HF files: GPT-2's Conv1D weights are stored ``[in, out]`` and the
GPT-2 module keeps them that way (see ``axon_llm.models.gpt2.CONV1D_WEIGHTS``).

The safetensors reader is our own (a few lines over ``np.memmap``) so that bf16 works without
torch, nothing is read until a tensor is used, and a corrupt header is a ``ModelFormatError``.
"""

from __future__ import annotations

import json
import os
import re
import struct
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from axon_llm.errors import CheckpointError, ModelFormatError, UnsupportedError
from axon_llm.generation_config import GenerationConfig, generation_config_to_dict
from axon_llm.limits import check_count, check_disjoint, inside_folder, read_json_file, read_json_text

__all__ = [
    "read_safetensors", "write_safetensors", "SafetensorsFile", "HFLoader", "map_hf_to_axonml",
    "map_axonml_to_hf", "load_state", "save_pretrained",
    "read_generation_config_json",
]

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "U16": np.uint16, "U32": np.uint32, "U64": np.uint64, "BOOL": np.bool_,
}
_NP_TO_ST = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
             np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.int16): "I16",
             np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8", np.dtype(np.uint16): "U16",
             np.dtype(np.uint32): "U32", np.dtype(np.uint64): "U64", np.dtype(np.bool_): "BOOL"}


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32: the bf16 bits are the high half of the f32 bits."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


class SafetensorsFile:
    """A memory-mapped ``.safetensors`` file; tensors are read (and converted) on access."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise ModelFormatError(f"no safetensors file at {self.path}") from None
        if size < 8:
            raise ModelFormatError(f"{self.path}: corrupt safetensors header (file of {size} bytes)")
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n == 0 or n > size - 8 or n > 100_000_000:
                raise ModelFormatError(f"{self.path}: corrupt safetensors header (header length {n}, file {size} bytes)")
            raw = f.read(n)
        header = read_json_text(raw, f"{self.path}: safetensors header", max_depth=8)
        if not isinstance(header, dict):
            raise ModelFormatError(f"{self.path}: corrupt safetensors header (not a JSON object)")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in metadata.items()):
            raise ModelFormatError(f"{self.path}: safetensors __metadata__ must map strings to strings")
        self.metadata: dict[str, str] = metadata
        self._data_start = 8 + n
        data_len = size - self._data_start
        self._entries = {name: _check_entry(self.path, name, info, data_len) for name, info in header.items()}
        # like the safetensors library: the tensors tile the data section exactly, no overlap, no hole
        spans = sorted((begin, end, name) for name, (_, _, begin, end) in self._entries.items())
        check_disjoint(spans, str(self.path))
        covered = sum(end - begin for begin, end, _ in spans)
        if covered != data_len:     # disjoint ranges inside the section that add up to it tile it
            hole = next((b for (b, _, _), (_, e, _) in zip(spans[1:], spans) if b != e), None)
            raise ModelFormatError(f"{self.path}: corrupt safetensors header: the tensors cover {covered} of the "
                                   f"{data_len} data bytes" + (f" (a gap at byte {hole})" if hole is not None else ""))
        self._mm: np.memmap | None = None

    def keys(self) -> list[str]:
        """Tensor names in file order."""
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of one tensor, from the header alone."""
        return self._entries[name][1]

    def dtype(self, name: str) -> str:
        """safetensors dtype string (``F32``, ``BF16`` ...) of one tensor."""
        return self._entries[name][0]

    def get(self, name: str, *, to_float32: bool = True) -> np.ndarray:
        """One tensor; f16/bf16 become float32 when ``to_float32`` (f32 stays a memory-mapped view)."""
        dtype, shape, begin, end = self._entries[name]
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        raw = self._mm[self._data_start + begin:self._data_start + end]
        arr = raw.view(_DTYPES[dtype]).reshape(shape) if end > begin else np.zeros(shape, _DTYPES[dtype])
        if dtype == "BF16":
            arr = bf16_to_f32(arr) if to_float32 else arr
        elif dtype == "F16" and to_float32:
            arr = arr.astype(np.float32)
        return arr


def _check_entry(path: Path, name: str, info: Any, data_len: int) -> tuple[str, tuple[int, ...], int, int]:
    """One header entry checked: a known dtype, a shape of non-negative integers (Python ints, so a
    ``[2**32, 2**32]`` shape cannot wrap), offsets that are integers inside the data section and
    span exactly the bytes the shape needs."""
    if not isinstance(info, dict) or set(info) - {"dtype", "shape", "data_offsets"} or len(info) != 3:
        raise ModelFormatError(f"{path}: corrupt safetensors header entry for {name!r} (needs exactly "
                               "dtype, shape and data_offsets)")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise ModelFormatError(f"{path}: tensor {name!r} has unsupported dtype {str(dtype)[:40]!r}")
    if not isinstance(shape, list) or len(shape) > 16:
        raise ModelFormatError(f"{path}: tensor {name!r} shape must be a list of at most 16 sizes, got {str(shape)[:60]}")
    if not isinstance(offsets, list) or len(offsets) != 2:
        raise ModelFormatError(f"{path}: tensor {name!r} data_offsets must be [begin, end], got {str(offsets)[:60]}")
    dims = tuple(check_count(s, f"{path}: tensor {name!r} shape[{i}]") for i, s in enumerate(shape))
    begin, end = (check_count(o, f"{path}: tensor {name!r} data_offsets") for o in offsets)
    count = 1
    for d in dims:
        count *= d
    if not begin <= end <= data_len or end - begin != count * np.dtype(_DTYPES[dtype]).itemsize:
        raise ModelFormatError(f"{path}: corrupt safetensors header: tensor {name!r} (dtype {dtype}, shape "
                               f"{list(dims)}, offsets [{begin}, {end}]) does not fit the {data_len}-byte data section")
    return dtype, dims, begin, end


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of one ``.safetensors`` file (f16/bf16 converted to float32)."""
    f = SafetensorsFile(path)
    return {k: f.get(k) for k in f.keys()}


def write_safetensors(path: str | Path, tensors: Mapping[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write tensors as ``.safetensors`` (the format transformers reads); the file appears atomically."""
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset, arrays = 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(np.asarray(tensors[name]))
        if a.dtype not in _NP_TO_ST:
            raise ModelFormatError(f"cannot write tensor {name!r} of dtype {a.dtype} to safetensors")
        header[name] = {"dtype": _NP_TO_ST[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)                              # 8-byte aligned data section
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for a in arrays:
            f.write(a.tobytes())
    os.replace(tmp, path)


class HFLoader:
    """A HuggingFace model folder: ``config.json`` plus ``model.safetensors`` or a sharded index.

    >>> loader = HFLoader("path/to/folder")
    >>> loader.config["model_type"], loader.keys()[:2]
    """

    def __init__(self, path: str | Path):
        from axon_llm.config import read_config_json

        self.path = Path(path)
        if not self.path.is_dir():
            raise ModelFormatError(f"{self.path} is not a model folder")
        self.config: dict[str, Any] = read_config_json(self.path)
        self._files: dict[str, SafetensorsFile] = {}
        self._where: dict[str, str] = {}
        index = self.path / "model.safetensors.index.json"
        single = self.path / "model.safetensors"
        if index.is_file():
            data = read_json_file(index, max_bytes=256 << 20)
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(weight_map, dict):
                raise ModelFormatError(f"{index}: not a valid safetensors index (no weight_map object)")
            for name, shard in weight_map.items():
                inside_folder(self.path, shard, f"{index}: shard of {name!r}")   # never outside the folder
                self._where[name] = shard
        elif single.is_file():
            f = self._open("model.safetensors")
            self._where = {k: "model.safetensors" for k in f.keys()}
        else:
            found = sorted(p.name for p in self.path.glob("*.safetensors"))
            if not found:
                raise ModelFormatError(f"{self.path} has no model.safetensors nor model.safetensors.index.json")
            for shard in found:
                for k in self._open(shard).keys():
                    self._where[k] = shard

    def _open(self, shard: str) -> SafetensorsFile:
        if shard not in self._files:
            path = inside_folder(self.path, shard, "shard")
            if not path.is_file():
                raise ModelFormatError(f"{self.path}: shard {shard} listed in the index is missing")
            self._files[shard] = SafetensorsFile(path)
        return self._files[shard]

    def keys(self) -> list[str]:
        """Every tensor name of the checkpoint."""
        return list(self._where)

    def num_elements(self) -> int:
        """Elements stored in the checkpoint, from the headers alone (to check a config against the file)."""
        total = 0
        for name, shard in self._where.items():
            f = self._open(shard)
            if name in f._entries:
                n = 1
                for d in f.shape(name):
                    n *= d
                total += n
        return total

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of one tensor (header only)."""
        return self._open(self._where[name]).shape(name)

    def get(self, name: str) -> np.ndarray:
        """One tensor as float32 (memory-mapped when stored as f32)."""
        f = self._open(self._where[name])
        if name not in f.keys():
            raise ModelFormatError(f"{self.path}: tensor {name!r} is not in shard {f.path.name}")
        return f.get(name)

    def tensors(self) -> dict[str, np.ndarray]:
        """``{name: array}`` for the whole checkpoint (lazily mapped, converted on access)."""
        return {k: self.get(k) for k in self.keys()}


# ---------------------------------------------------------------------------------------------
# name mapping
# ---------------------------------------------------------------------------------------------
#: keys that are buffers, not parameters, in some checkpoints
_DROPPED = re.compile(r"(\.attn\.bias$|\.attn\.masked_bias$|embeddings\.position_ids$|rotary_emb\.inv_freq$)")
_FUSED_EXPERTS = re.compile(r"^(.*\.layers\.\d+\.)mlp\.experts\.(gate_up_proj|down_proj)$")
_FUSED_ROUTER = re.compile(r"^(.*\.layers\.\d+\.)mlp\.gate\.weight$")


def _param_names(model) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def map_hf_to_axonml(state: Mapping[str, Any], model) -> dict[str, Any]:
    """Rename a HF state dict to ``model``'s parameter names (see the module docstring).

    Values are passed through untouched (arrays stay lazy) except fused Mixtral experts, which
    are split. Keys that match nothing are kept as they are (the caller reports them).
    """
    params = _param_names(model)
    prefixes = sorted({n.split(".", 1)[0] + "." for n in params if "." in n})
    out: dict[str, Any] = {}
    for key, value in state.items():
        if _DROPPED.search(key):
            continue
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        fused = _FUSED_EXPERTS.match(key)
        if fused:
            prefix, kind = fused.groups()
            arr = np.asarray(value)
            for e in range(arr.shape[0]):
                base = f"{prefix}block_sparse_moe.experts.{e}."
                if kind == "gate_up_proj":                     # [E, 2I, d] -> w1 [I, d], w3 [I, d]
                    half = arr.shape[1] // 2
                    out[base + "w1.weight"], out[base + "w3.weight"] = arr[e, :half], arr[e, half:]
                else:                                          # [E, d, I] -> w2 [d, I]
                    out[base + "w2.weight"] = arr[e]
            continue
        router = _FUSED_ROUTER.match(key)
        if router and (router.group(1) + "block_sparse_moe.gate.weight") in params:
            out[router.group(1) + "block_sparse_moe.gate.weight"] = value
            continue
        if key not in params:
            # bare-model checkpoint into a model with a head, or the reverse
            for p in prefixes:
                if p + key in params:
                    key = p + key
                    break
            else:
                head, _, rest = key.partition(".")
                if rest in params:
                    key = rest
        out[key] = value
    return out


def map_axonml_to_hf(state: Mapping[str, Any], model) -> dict[str, Any]:
    """The state dict HF expects in ``model.safetensors`` (tied copies are not stored)."""
    tied = set(getattr(model, "tied_weights", lambda: {})())
    return {k: v for k, v in state.items() if k not in tied}


def load_state(model, tensors: Mapping[str, Any], *, strict: bool = True):
    """Load HF-named ``tensors`` into ``model``; returns the core's ``LoadResult``.

    Raises ``CheckpointError`` listing every missing tensor, or naming the key and both shapes
    of a mismatch. With ``strict`` unexpected tensors are an error too.
    """
    tied = set(getattr(model, "tied_weights", lambda: ())())
    mapped = {k: v for k, v in map_hf_to_axonml(tensors, model).items() if k not in tied}   # HF ignores them too
    params = _param_names(model)
    mismatched = [(k, tuple(np.shape(v)) if not hasattr(v, "shape") else tuple(v.shape), params[k])
                  for k, v in mapped.items() if k in params and tuple(v.shape) != params[k]]
    if mismatched:
        lines = "; ".join(f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in mismatched[:20])
        raise CheckpointError(f"shape mismatch for {len(mismatched)} tensor(s): {lines}")
    missing = sorted(set(params) - set(mapped))
    if missing:
        shown = ", ".join(missing[:30]) + (f" ... ({len(missing)} in all)" if len(missing) > 30 else "")
        raise CheckpointError(f"checkpoint is missing {len(missing)} tensor(s): {shown}")
    unexpected = sorted(set(mapped) - set(params))
    shown = ", ".join(unexpected[:30]) + (f" ... ({len(unexpected)} in all)" if len(unexpected) > 30 else "")
    if unexpected and strict:
        raise CheckpointError(f"checkpoint has {len(unexpected)} tensor(s) the model does not use: {shown}")
    if unexpected:
        # e.g. bert-base-uncased (BertForMaskedLM) also stores the pooler and the NSP head
        warnings.warn(f"ignored {len(unexpected)} checkpoint tensor(s) the model does not use: {shown}", stacklevel=3)
    usable = {k: np.asarray(v, dtype=np.float32) for k, v in mapped.items() if k in params}
    for k, arr in usable.items():   # a NaN/inf weight (or bytes read with the wrong dtype) poisons every output
        if not np.isfinite(arr).all():
            raise CheckpointError(f"tensor {k} holds {int((~np.isfinite(arr)).sum())} NaN/inf value(s)")
    result = model.load_state_dict(usable, strict=False)
    return result._replace(unexpected_keys=unexpected)


def read_generation_config_json(folder: str | Path) -> dict | None:
    """The ``generation_config.json`` of a HF folder as a dict, or None when the folder has none
    (``ModelFormatError`` when it is not a JSON object)."""
    path = Path(folder) / "generation_config.json"
    if not path.is_file():
        return None
    data = read_json_file(path, max_bytes=16 << 20)
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path}: must hold a JSON object, got {type(data).__name__}")
    return data


def save_pretrained(model, directory: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (float32) that transformers loads back, and
    ``generation_config.json`` when ``model.generation_config`` differs from what ``config.json``
    implies (as transformers writes the model's generation settings beside its weights)."""
    if not hasattr(getattr(model, "config", None), "to_dict"):
        raise UnsupportedError(f"{type(model).__name__} has no HuggingFace config to save")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    arch = getattr(model, "hf_architecture", None)
    if arch:
        config["architectures"] = [arch]
    config["dtype"] = "float32"                       # the file holds float32, whatever was loaded
    if "torch_dtype" in config:
        config["torch_dtype"] = "float32"
    state = {k: np.asarray(v.detach().numpy() if hasattr(v, "detach") else v, dtype=np.float32)
             for k, v in model.state_dict().items()}
    state = map_axonml_to_hf(state, model)
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    write_safetensors(directory / "model.safetensors", state, {"format": "pt"})
    gen_path = directory / "generation_config.json"
    generation = _generation_config_dict(model)
    if generation:
        gen_path.write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    else:
        gen_path.unlink(missing_ok=True)      # a stale file from an earlier save would override config.json
    return directory


def _generation_config_dict(model) -> dict:
    """What ``generation_config.json`` must say for ``model`` (``{}``: nothing beyond config.json)."""
    cfg = getattr(model, "generation_config", None)
    if not isinstance(cfg, GenerationConfig):
        return {}
    return generation_config_to_dict(cfg, model.config)
