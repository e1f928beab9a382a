"""HF-layout loading and saving: safetensors reader, shards, dtypes, name mapping, errors, round trips."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest

import axon
from axon_llm import CheckpointError, LLMError, ModelFormatError, UnsupportedError
from axon_llm.auto import from_pretrained
from axon_llm.auto import load_llama_from_hf, load_mistral_from_hf
from axon_llm.loaders import HFLoader, read_safetensors, write_safetensors

from tests.axon_llm.model_checks import HF, logits_np

ROUND_TRIP = ["gpt2", "bert", "bert_mlm", "bert_cls", "llama", "mistral", "mixtral", "phi", "phi3"]


def copy_case(case, tmp_path):
    dst = tmp_path / case
    shutil.copytree(HF / case, dst)
    return dst


def rewrite(folder, fn):
    """Rewrite model.safetensors through ``fn(dict) -> dict``."""
    tensors = {k: np.array(v) for k, v in read_safetensors(folder / "model.safetensors").items()}
    write_safetensors(folder / "model.safetensors", fn(tensors))


@pytest.mark.parametrize("case", ROUND_TRIP)
def test_save_pretrained_round_trip(case, tmp_path):
    model = from_pretrained(HF / case)
    e = np.load(HF / case / "expected.npz")
    model.save_pretrained(tmp_path / "out")
    saved = HFLoader(tmp_path / "out")
    assert set(saved.keys()) == set(HFLoader(HF / case).keys())        # what transformers itself writes
    assert saved.config["architectures"] == HFLoader(HF / case).config["architectures"]
    again = from_pretrained(tmp_path / "out")
    np.testing.assert_array_equal(logits_np(again, e["input_ids"]), logits_np(model, e["input_ids"]))


def test_sharded_checkpoint(tmp_path):
    folder = copy_case("llama", tmp_path)
    tensors = read_safetensors(folder / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        write_safetensors(folder / shard, {k: tensors[k] for k in keys})
    (folder / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {k: s for s, ks in shards.items() for k in ks}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    e = np.load(folder / "expected.npz")
    np.testing.assert_allclose(logits_np(from_pretrained(folder), e["input_ids"]), e["logits"], atol=1e-4)


def test_f16_and_bf16_become_float32(tmp_path):
    x = np.array([[1.5, -2.25], [3.0, 0.0078125]], dtype=np.float32)
    bf16 = (x.view(np.uint32) >> 16).astype(np.uint16)
    header = {"a": {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 8]},
              "b": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [8, 16]}}
    raw = json.dumps(header).encode()
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + x.astype(np.float16).tobytes() + bf16.tobytes())
    out = read_safetensors(path)
    assert out["a"].dtype == np.float32 and out["b"].dtype == np.float32
    np.testing.assert_array_equal(out["a"], x)
    np.testing.assert_array_equal(out["b"], x)


@pytest.mark.parametrize("damage", ["empty", "huge_length", "bad_json", "bad_offsets", "bad_dtype"])
def test_corrupt_safetensors_header(damage, tmp_path):
    path = tmp_path / "bad.safetensors"
    good = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    if damage == "empty":
        path.write_bytes(b"\x01\x02")
    elif damage == "huge_length":
        path.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    elif damage == "bad_json":
        path.write_bytes(struct.pack("<Q", 5) + b"{oops" + bytes(8))
    else:
        entry = dict(good["w"])
        if damage == "bad_offsets":
            entry["data_offsets"] = [0, 800]
        else:
            entry["dtype"] = "F128"
        raw = json.dumps({"w": entry}).encode()
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(8))
    with pytest.raises(ModelFormatError):
        read_safetensors(path)


def test_corrupt_checkpoint_in_a_model_folder(tmp_path):
    folder = copy_case("gpt2", tmp_path)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ModelFormatError, match="corrupt safetensors header"):
        from_pretrained(folder)


def test_missing_tensors_are_listed(tmp_path):
    folder = copy_case("llama", tmp_path)
    rewrite(folder, lambda t: {k: v for k, v in t.items() if "layers.1.mlp" not in k})
    with pytest.raises(CheckpointError, match="missing 3 tensor") as err:
        from_pretrained(folder)
    assert "model.layers.1.mlp.down_proj.weight" in str(err.value)


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    folder = copy_case("llama", tmp_path)
    rewrite(folder, lambda t: {**t, "model.norm.weight": np.ones(63, np.float32)})
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight: checkpoint \[63\] vs model \[64\]"):
        from_pretrained(folder)


def test_unknown_architecture_lists_supported(tmp_path):
    folder = copy_case("llama", tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["FalconForCausalLM"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedError, match="FalconForCausalLM.*LlamaForCausalLM"):
        from_pretrained(folder)


def test_bad_config_json(tmp_path):
    folder = copy_case("llama", tmp_path)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        from_pretrained(folder)
    with pytest.raises(LLMError):
        from_pretrained(tmp_path / "does-not-exist-anywhere")


def test_hf_renames_prefixes_gamma_beta_and_buffers(tmp_path):
    """A bare-model checkpoint (no ``bert.``), TF-era gamma/beta names, and stray buffers load."""
    folder = copy_case("bert_cls", tmp_path)

    def legacy(t):
        out = {}
        for k, v in t.items():
            k = k.removeprefix("bert.").replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                                               "LayerNorm.beta")
            out[k] = v
        out["embeddings.position_ids"] = np.arange(64, dtype=np.int64)[None]
        return out

    rewrite(folder, legacy)
    e = np.load(folder / "expected.npz")
    np.testing.assert_allclose(logits_np(from_pretrained(folder), e["input_ids"]), e["logits"], atol=1e-4)


def test_gpt2_hub_style_checkpoint(tmp_path):
    """openai-community/gpt2 stores keys without ``transformer.`` and the causal-mask buffers."""
    folder = copy_case("gpt2", tmp_path)

    def hub_style(t):
        out = {k.removeprefix("transformer."): v for k, v in t.items()}
        out["h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
        return out

    rewrite(folder, hub_style)
    e = np.load(folder / "expected.npz")
    np.testing.assert_allclose(logits_np(from_pretrained(folder), e["input_ids"]), e["logits"], atol=1e-4)


def test_mixtral_fused_expert_layout(tmp_path):
    folder = copy_case("mixtral", tmp_path)

    def fuse(t):
        out = {k: v for k, v in t.items() if "block_sparse_moe" not in k}
        for layer in range(2):
            p = f"model.layers.{layer}."
            experts = range(4)
            out[p + "mlp.experts.gate_up_proj"] = np.stack([np.concatenate(
                [t[f"{p}block_sparse_moe.experts.{e}.w1.weight"], t[f"{p}block_sparse_moe.experts.{e}.w3.weight"]])
                for e in experts])
            out[p + "mlp.experts.down_proj"] = np.stack([t[f"{p}block_sparse_moe.experts.{e}.w2.weight"]
                                                         for e in experts])
            out[p + "mlp.gate.weight"] = t[p + "block_sparse_moe.gate.weight"]
        return out

    rewrite(folder, fuse)
    e = np.load(folder / "expected.npz")
    np.testing.assert_allclose(logits_np(from_pretrained(folder), e["input_ids"]), e["logits"], atol=1e-4)


def test_unused_tensors_are_ignored_with_a_warning(tmp_path):
    """bert-base-uncased is a BertForMaskedLM checkpoint that also stores the pooler and NSP head."""
    folder = copy_case("bert_mlm", tmp_path)
    rewrite(folder, lambda t: {**t, "bert.pooler.dense.bias": np.zeros(48, np.float32),
                               "cls.seq_relationship.weight": np.zeros((2, 48), np.float32)})
    with pytest.warns(UserWarning, match="ignored 2 checkpoint tensor"):
        model = from_pretrained(folder)
    e = np.load(folder / "expected.npz")
    np.testing.assert_allclose(logits_np(model, e["input_ids"]), e["logits"], atol=1e-4)
    from axon_llm.loaders import load_state
    with pytest.raises(CheckpointError, match="does not use: bert.pooler.dense.bias"):
        load_state(model, read_safetensors(folder / "model.safetensors"), strict=True)


def test_tied_copies_in_a_checkpoint_are_ignored(tmp_path):
    folder = copy_case("gpt2", tmp_path)
    rewrite(folder, lambda t: {**t, "lm_head.weight": t["transformer.wte.weight"]})
    e = np.load(folder / "expected.npz")
    np.testing.assert_allclose(logits_np(from_pretrained(folder), e["input_ids"]), e["logits"], atol=1e-4)


def test_named_loaders():
    assert type(load_llama_from_hf(HF / "llama")).__name__ == "LLaMAForCausalLM"
    assert type(load_mistral_from_hf(HF / "mixtral")).__name__ == "MistralForCausalLM"
    with pytest.raises(CheckpointError, match="expected"):
        load_llama_from_hf(HF / "mistral")


def test_loaded_weights_are_float32_and_not_random():
    model = from_pretrained(HF / "llama")
    w = model.model.layers[0].self_attn.q_proj.weight
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w.numpy(), HFLoader(HF / "llama").get("model.layers.0.self_attn.q_proj.weight"))
    assert not model.training
