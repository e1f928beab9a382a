"""Llama 3.x GGUF files: llama.cpp stores the llama3 RoPE scaling as a ``rope_freqs`` tensor (one
divisor per rotary frequency); the loader recovers transformers' ``rope_scaling`` from it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import axon_llm
from axon_llm import ModelFormatError, UnsupportedError
from axon_llm.loaders.gguf import llama3_scaling_from_rope_freqs, load_gguf
from axon_llm.loaders.safetensors import SafetensorsFile

from tests.axon_llm.model_checks import logits_np, rel_err
from tests.axon_llm.test_gguf import permute_like_llama_cpp

gguf = pytest.importorskip("gguf")
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "hf" / "llama_rope_llama3"


def llama_cpp_rope_factors(head_dim, theta, factor, low, high, old) -> np.ndarray:
    """What llama.cpp's converter writes as ``rope_freqs`` for a llama3 rope_scaling (its formula)."""
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


@pytest.mark.parametrize("factor, low, high, old", [(8.0, 1.0, 4.0, 8192), (32.0, 1.0, 4.0, 8192), (8.0, 1.0, 4.0, 64)])
def test_scaling_recovered_from_the_factors(factor, low, high, old):
    r = llama_cpp_rope_factors(64, 5e5, factor, low, high, old)
    got = llama3_scaling_from_rope_freqs(r, 64, 5e5)
    assert got["rope_type"] == "llama3" and got["factor"] == pytest.approx(factor)
    assert got["original_max_position_embeddings"] == old and got["high_freq_factor"] == pytest.approx(high)


def test_ones_mean_no_scaling_and_bad_values_are_errors():
    assert llama3_scaling_from_rope_freqs(np.ones(32, np.float32), 64, 5e5) is None
    with pytest.raises(ModelFormatError):
        llama3_scaling_from_rope_freqs(np.full(32, np.nan, np.float32), 64, 5e5)
    with pytest.raises(ModelFormatError):
        llama3_scaling_from_rope_freqs(np.ones(7, np.float32), 64, 5e5)
    with pytest.raises(UnsupportedError, match="rope_freqs"):
        llama3_scaling_from_rope_freqs(np.linspace(1, 5, 32).astype(np.float32)[::-1], 64, 5e5)


def write_llama3_gguf(path: Path) -> dict:
    """The llama_rope_llama3 fixture as a GGUF file, the way llama.cpp's converter writes it."""
    cfg = json.loads((FIXTURE / "config.json").read_text())
    rope = cfg.get("rope_parameters") or {**(cfg.get("rope_scaling") or {}), "rope_theta": cfg.get("rope_theta")}
    heads, kv, hidden = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or hidden // heads
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    blocks = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
              "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(float(rope["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_tensor("rope_freqs.weight", llama_cpp_rope_factors(
        head_dim, float(rope["rope_theta"]), rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"],
        rope["original_max_position_embeddings"]))
    st = SafetensorsFile(FIXTURE / "model.safetensors")
    for name in st.keys():
        arr = np.asarray(st.get(name), dtype=np.float32)
        if name in names:
            gname = names[name]
        else:
            layer, rest = name[len("model.layers."):].split(".", 1)
            module, suffix = rest.rsplit(".", 1)
            gname = f"blk.{layer}.{blocks[module]}.{suffix}"
        if ".attn_q." in gname:
            arr = permute_like_llama_cpp(arr, heads)
        elif ".attn_k." in gname:
            arr = permute_like_llama_cpp(arr, kv)
        w.add_tensor(gname, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return rope


def test_llama3_gguf_gives_transformers_logits(tmp_path):
    path = tmp_path / "llama3.gguf"
    rope = write_llama3_gguf(path)
    scaling = load_gguf(path).config["rope_scaling"]
    assert scaling["factor"] == rope["factor"]
    assert scaling["original_max_position_embeddings"] == rope["original_max_position_embeddings"]
    model = axon_llm.from_pretrained(path)
    e = np.load(FIXTURE / "expected.npz")
    assert rel_err(logits_np(model, e["input_ids"]), e["logits"]) < 1e-4
