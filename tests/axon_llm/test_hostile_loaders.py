"""Hostile model files: every count and size checked before allocating, floats finite, tensor byte
ranges in bounds and disjoint, paths inside the folder, wrong types and deep nesting as library
errors naming the field. Several instances of each kind of defect."""

from __future__ import annotations

import json
import math
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from axon_llm.auto import from_pretrained
from axon_llm.config import read_config_json
from axon_llm.models import BertConfig, GPT2Config, LLaMAConfig, MistralConfig
from axon_llm.errors import ConfigError, LLMError, ModelFormatError, UnsupportedError
from axon_llm.fuzz import _STRING, _ARRAY, tiny_gguf_parts, tiny_hf_folder, write_gguf
from axon_llm.limits import check_disjoint, inside_folder, read_json_text
from axon_llm.loaders.gguf import GGUFFile, load_gguf
from axon_llm.loaders.safetensors import HFLoader, SafetensorsFile, write_safetensors


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return tiny_hf_folder(tmp_path_factory.mktemp("hf") / "model")


def copy_folder(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def gguf_with(tmp_path: Path, kv_changes: dict | None = None, tensor_change=None, drop=()) -> Path:
    kvs, tensors = tiny_gguf_parts()
    kvs = [(k, t, v) for k, t, v in kvs if k not in drop]
    for key, (vtype, value) in (kv_changes or {}).items():
        kvs = [(k, t, v) for k, t, v in kvs if k != key] + [(key, vtype, value)]
    if tensor_change:
        tensors = tensor_change([list(t) for t in tensors])
    path = tmp_path / "m.gguf"
    path.write_bytes(write_gguf(kvs, [tuple(t) for t in tensors]))
    return path


def fails_fast(fn, error=LLMError, match=None, seconds=5.0):
    t0 = time.monotonic()
    with pytest.raises(error, match=match) as info:
        fn()
    assert time.monotonic() - t0 < seconds, "a hostile file must fail before doing the work it asks for"
    return info.value


# -- 1. sizes trusted before they are checked ---------------------------------------------------

@pytest.mark.parametrize("key,value", [
    ("llama.block_count", 2**31), ("llama.block_count", 5000), ("llama.embedding_length", 2**40),
    ("llama.feed_forward_length", 2**33), ("llama.attention.head_count", 2**20), ("llama.vocab_size", 2**40),
    ("llama.context_length", 2**62),
])
def test_gguf_counts_above_their_ceiling_fail_at_once(tmp_path, key, value):
    path = gguf_with(tmp_path, {key: (10, value)})
    err = fails_fast(lambda: from_pretrained(path), ModelFormatError)
    assert key in str(err)


def test_gguf_block_count_must_match_the_tensors_of_the_file(tmp_path):
    for n in (1, 3, 100):
        path = gguf_with(tmp_path, {"llama.block_count": (4, n)})
        fails_fast(lambda: from_pretrained(path), ModelFormatError, match="block_count")


@pytest.mark.parametrize("cls,key,value", [
    (LLaMAConfig, "num_hidden_layers", 10**6), (GPT2Config, "n_layer", 10**7),
    (MistralConfig, "num_local_experts", 10**7), (BertConfig, "num_labels", 10**8),
    (LLaMAConfig, "vocab_size", 10**9), (LLaMAConfig, "intermediate_size", 2**40),
    (GPT2Config, "n_positions", 2**40),
])
def test_config_counts_above_their_ceiling(cls, key, value):
    err = fails_fast(lambda: cls.from_dict({**cls.tiny().to_dict(), key: value}), ConfigError)
    assert key in str(err)


@pytest.mark.parametrize("change", [{"num_hidden_layers": 600}, {"hidden_size": 4096, "num_attention_heads": 32},
                                    {"vocab_size": 1 << 21}, {"intermediate_size": 1 << 19}])
def test_config_declaring_more_than_the_checkpoint_holds(hf_folder, tmp_path, change):
    folder = copy_folder(hf_folder, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **change}))
    fails_fast(lambda: from_pretrained(folder), ModelFormatError, match="declares .* parameters")


# -- 2. values that cannot be right ---------------------------------------------------------------

@pytest.mark.parametrize("key,value", [
    ("llama.attention.layer_norm_rms_epsilon", math.inf), ("llama.attention.layer_norm_rms_epsilon", math.nan),
    ("llama.attention.layer_norm_rms_epsilon", -1e-5), ("llama.rope.freq_base", math.inf),
    ("llama.rope.freq_base", math.nan), ("llama.rope.freq_base", 0.0), ("llama.rope.freq_base", 1e-45),
])
def test_gguf_floats_must_be_finite_and_in_range(tmp_path, key, value):
    path = gguf_with(tmp_path, {key: (12, value)})
    err = fails_fast(lambda: from_pretrained(path), ModelFormatError)
    assert key in str(err)


@pytest.mark.parametrize("key,value", [
    ("rms_norm_eps", math.inf), ("rms_norm_eps", math.nan), ("rms_norm_eps", -1.0), ("rope_theta", math.inf),
    ("rope_theta", -5.0), ("initializer_range", math.nan), ("attention_dropout", 2.0),
    ("rope_scaling", {"rope_type": "linear", "factor": math.nan}),
])
def test_config_floats_must_be_finite_and_in_range(key, value):
    with pytest.raises(ConfigError, match=key.split("_")[0]):
        LLaMAConfig.from_dict({**LLaMAConfig.tiny().to_dict(), key: value})


@pytest.mark.parametrize("victim", [1, 5, 10])
def test_gguf_tensors_that_overlap(tmp_path, victim):
    def overlap(tensors):
        tensors[victim][3] = tensors[victim - 1][3]   # same offset as the previous tensor
        return tensors
    path = gguf_with(tmp_path, tensor_change=overlap)
    fails_fast(lambda: GGUFFile(path), ModelFormatError, match="overlaps")


@pytest.mark.parametrize("name", ["blk.0.attn_norm.weight", "output_norm.weight", "blk.1.ffn_norm.weight"])
def test_gguf_quantised_vector_is_a_format_error(tmp_path, name):
    def quantise_vector(tensors):
        t = next(t for t in tensors if t[0] == name)
        t[2], t[4] = 8, bytes(34)                    # Q8_0, one block of 32 values: shape [32]
        return tensors
    path = gguf_with(tmp_path, tensor_change=quantise_vector)
    fails_fast(lambda: from_pretrained(path), ModelFormatError, match="not a weight matrix")


def _st_file(tmp_path, header: dict, payload: bytes) -> Path:
    raw = json.dumps(header).encode()
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + payload)
    return path


@pytest.mark.parametrize("header", [
    {"a": {"dtype": "F32", "shape": [2**32, 2**32], "data_offsets": [0, 0]}},        # wraps to 0 in int64
    {"a": {"dtype": "F32", "shape": [128.9], "data_offsets": [0, 512]}},             # float size
    {"a": {"dtype": "F32", "shape": [True, 4], "data_offsets": [0, 16]}},            # bool size
    {"a": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}},
    {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
     "b": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},                   # every tensor at offset 0
    {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
     "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}},                   # overlap
    {"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}},                  # a hole before it
    {"a": {"dtype": {"x": 1}, "shape": [4], "data_offsets": [0, 16]}},               # unhashable dtype
    {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16.0]}},
    {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16], "extra": 1}},
    {"__metadata__": {"format": 5}, "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
])
def test_safetensors_headers_that_lie(tmp_path, header):
    fails_fast(lambda: SafetensorsFile(_st_file(tmp_path, header, bytes(16))), ModelFormatError)


def test_safetensors_written_here_tile_their_data(tmp_path):
    path = tmp_path / "ok.safetensors"
    write_safetensors(path, {"a": np.ones(3, np.float32), "b": np.zeros((2, 2), np.float16), "c": np.zeros(0)})
    f = SafetensorsFile(path)
    assert sorted(f.keys()) == ["a", "b", "c"]


# -- 3. paths outside the model folder ------------------------------------------------------------

@pytest.mark.parametrize("shard", ["../../../../etc/passwd", "/etc/passwd", "../model.safetensors",
                                   "sub/../../x.safetensors", "C:\\\\x.safetensors", "a\x00b", "", 5, None, ["x"]])
def test_index_shards_stay_inside_the_folder(hf_folder, tmp_path, shard):
    folder = copy_folder(hf_folder, tmp_path)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"model.norm.weight": shard}}))
    with pytest.raises(ModelFormatError):
        HFLoader(folder)


@pytest.mark.parametrize("index", [{"weight_map": ["model.safetensors"]}, {"weight_map": None}, [], {"x": 1},
                                   {"weight_map": {"a": {"b": 1}}}])
def test_index_maps_of_the_wrong_shape(hf_folder, tmp_path, index):
    folder = copy_folder(hf_folder, tmp_path)
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFormatError):
        HFLoader(folder)


def test_inside_folder_accepts_nested_relative_names(tmp_path):
    assert inside_folder(tmp_path, "sub/model-00001.safetensors", "shard") == tmp_path / "sub" / "model-00001.safetensors"


# -- 4. plain Python errors where a library error belongs ------------------------------------------

@pytest.mark.parametrize("key,value", [
    ("llama.attention.key_length", (_STRING, "16")), ("llama.attention.head_count", (_STRING, "two")),
    ("llama.block_count", (6, 2.0)), ("llama.rope.dimension_count", (_ARRAY, (4, [16, 16]))),
    ("llama.rope.scaling.type", (4, 1)), ("llama.context_length", (7, True)),
])
def test_gguf_metadata_of_the_wrong_type_names_the_key(tmp_path, key, value):
    err = fails_fast(lambda: from_pretrained(gguf_with(tmp_path, {key: value})), ModelFormatError)
    assert key in str(err)


@pytest.mark.parametrize("change", [
    {"architectures": [{}]}, {"architectures": "LlamaForCausalLM"}, {"model_type": 5},
    {"eos_token_id": 10**30}, {"rope_theta": "abc"}, {"hidden_size": "32"}, {"num_attention_heads": 2.5},
    {"tie_word_embeddings": "yes"}, {"rope_scaling": [1, 2]}, {"rope_scaling": {"rope_type": "llama3", "factor": 2.0,
                                                                                "low_freq_factor": "a",
                                                                                "high_freq_factor": 4,
                                                                                "original_max_position_embeddings": 8}},
    {"eos_token_id": [1, "a"]}, {"hidden_act": ["silu"]},
])
def test_config_json_fields_of_the_wrong_type(hf_folder, tmp_path, change):
    folder = copy_folder(hf_folder, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **change}))
    err = fails_fast(lambda: from_pretrained(folder), (ConfigError, ModelFormatError, UnsupportedError))
    assert any(k in str(err) for k in change) or "rope_scaling" in str(err)


@pytest.mark.parametrize("text", ["[" * 100_000, "{\"a\":" * 50_000, '{"a": ' + "[" * 3000 + "]" * 3000 + "}"])
def test_deep_nesting_is_a_clean_error(tmp_path, text):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ModelFormatError, match="deep"):
        read_config_json(tmp_path)
    with pytest.raises(ModelFormatError, match="deep"):
        SafetensorsFile(_st_file_raw(tmp_path, text.encode()))


def _st_file_raw(tmp_path, raw: bytes) -> Path:
    path = tmp_path / "deep.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


@pytest.mark.parametrize("raw", [b"\xff\xfe{}", b'{"a": "\xc3"}', b"\x00" * 10])
def test_config_json_that_is_not_utf8(tmp_path, raw):
    (tmp_path / "config.json").write_bytes(raw)
    with pytest.raises(ModelFormatError):
        read_config_json(tmp_path)


def test_json_helpers_keep_strings_with_brackets():
    assert read_json_text('{"a": "[[[[[[[[", "b": [[[1]]]}', "x", max_depth=4) == {"a": "[[[[[[[[", "b": [[[1]]]}


def test_check_disjoint_allows_touching_and_empty_ranges():
    check_disjoint([(0, 8, "a"), (8, 16, "b"), (8, 8, "empty")], "f")
    with pytest.raises(ModelFormatError):
        check_disjoint([(0, 9, "a"), (8, 16, "b")], "f")


def test_the_valid_inputs_still_load(hf_folder, tmp_path):
    from axon_llm.fuzz import _forward_is_finite, tiny_gguf

    _forward_is_finite(from_pretrained(hf_folder))
    _forward_is_finite(from_pretrained(tiny_gguf(tmp_path / "ok.gguf")))
    assert load_gguf(tmp_path / "ok.gguf").config["num_hidden_layers"] == 2


@pytest.mark.parametrize("n_tensors,n_kv,array_count", [(2**21, 0, 0), (0, 2**17, 0), (0, 1, 2**24), (0, 1, 2**40)])
def test_gguf_counts_of_python_objects_have_a_ceiling(tmp_path, n_tensors, n_kv, array_count):
    head = b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv)
    if array_count:    # one key holding an array of `array_count` strings, in a file of a few bytes
        head += struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", _ARRAY, _STRING, array_count)
    path = tmp_path / "c.gguf"
    path.write_bytes(head + bytes(64))
    fails_fast(lambda: GGUFFile(path), ModelFormatError, match="entries", seconds=1.0)
