"""Every GGUF tensor type in one file: a tiny llama whose tensors each use a different type
(as Q4_K_M files mix Q4_K, Q6_K, Q5_0 and Q8_0) loads with each quantised weight kept in its
own type, and gives the logits of the same model with the weights dequantised."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from axon_kernels.quant_formats import dequantize_ref

from axon_llm.errors import ModelFormatError, UnsupportedError
from axon_llm.loaders.gguf import GGUFFile, unpermute_qk_rows
from tests.kernels.test_quant import random_raw

gguf = pytest.importorskip("gguf")
from gguf.constants import GGMLQuantizationType as T  # noqa: E402

HIDDEN, FFN, HEADS, KV, VOCAB = 256, 512, 4, 2, 40

# GGUF tensor -> (shape [out, in], type): one type per tensor, every type this project reads
MIXED = {
    "token_embd.weight": ((VOCAB, HIDDEN), "Q6_K"),
    "blk.0.attn_q.weight": ((HIDDEN, HIDDEN), "Q4_K"),
    "blk.0.attn_k.weight": ((HIDDEN // 2, HIDDEN), "Q5_K"),
    "blk.0.attn_v.weight": ((HIDDEN // 2, HIDDEN), "Q3_K"),
    "blk.0.attn_output.weight": ((HIDDEN, HIDDEN), "Q2_K"),
    "blk.0.ffn_gate.weight": ((FFN, HIDDEN), "Q5_0"),
    "blk.0.ffn_up.weight": ((FFN, HIDDEN), "Q5_1"),
    "blk.0.ffn_down.weight": ((HIDDEN, FFN), "IQ4_NL"),
    "blk.1.attn_q.weight": ((HIDDEN, HIDDEN), "Q8_0"),
    "blk.1.attn_k.weight": ((HIDDEN // 2, HIDDEN), "Q4_0"),
    "blk.1.attn_v.weight": ((HIDDEN // 2, HIDDEN), "Q4_1"),
    "blk.1.attn_output.weight": ((HIDDEN, HIDDEN), "BF16"),
    "blk.1.ffn_gate.weight": ((FFN, HIDDEN), "F16"),
    "blk.1.ffn_up.weight": ((FFN, HIDDEN), "Q8_K"),
    "blk.1.ffn_down.weight": ((HIDDEN, FFN), "F32"),
}


def write_mixed_llama(path: Path) -> dict[str, np.ndarray]:
    """Write the 2-layer MIXED llama; returns GGUF name -> the float32 weight as stored."""
    rng = np.random.default_rng(7)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_context_length(64)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(VOCAB)
    stored = {}
    for layer in range(2):
        for norm in ("attn_norm", "ffn_norm"):
            name = f"blk.{layer}.{norm}.weight"
            stored[name] = (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)
            w.add_tensor(name, stored[name])
    stored["output_norm.weight"] = np.ones(HIDDEN, np.float32)
    w.add_tensor("output_norm.weight", stored["output_norm.weight"])
    for i, (name, (shape, qtype)) in enumerate(MIXED.items()):
        if qtype in ("F32", "F16", "BF16"):
            x = (0.05 * rng.standard_normal(shape)).astype(np.float32)
            if qtype == "BF16":
                raw = gguf.quants.quantize(x, T.BF16)
                w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=T.BF16)
                stored[name] = gguf.quants.dequantize(raw, T.BF16)
            else:
                w.add_tensor(name, x.astype(np.float16) if qtype == "F16" else x)
                stored[name] = x.astype(np.float16).astype(np.float32) if qtype == "F16" else x
            continue
        raw = random_raw(qtype, shape[0], shape[1], seed=i)
        w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=T[qtype])
        stored[name] = dequantize_ref(qtype, raw, shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def test_mixed_types_load_kept_in_their_types_with_dequantised_logits(tmp_path):
    import axon
    from axon_llm.auto import from_pretrained
    from axon_llm.quantized import QuantizedEmbedding, QuantizedLinear, dequantize_model
    path = tmp_path / "mixed.gguf"
    stored = write_mixed_llama(path)
    with GGUFFile(path) as g:
        assert {t.type_name for t in g.tensors.values()} >= {q for _, q in MIXED.values()}
    m = from_pretrained(path)
    layer0, layer1 = m.model.layers
    kept = {"Q4_K": layer0.self_attn.q_proj, "Q5_K": layer0.self_attn.k_proj, "Q3_K": layer0.self_attn.v_proj,
            "Q2_K": layer0.self_attn.o_proj, "Q5_0": layer0.mlp.gate_proj, "Q5_1": layer0.mlp.up_proj,
            "IQ4_NL": layer0.mlp.down_proj, "Q8_0": layer1.self_attn.q_proj, "Q4_0": layer1.self_attn.k_proj,
            "Q4_1": layer1.self_attn.v_proj, "Q8_K": layer1.mlp.up_proj}
    for qtype, mod in kept.items():
        assert isinstance(mod, QuantizedLinear) and mod.qtype == qtype
    assert isinstance(m.model.embed_tokens, QuantizedEmbedding) and m.model.embed_tokens.qtype == "Q6_K"
    assert isinstance(m.lm_head, QuantizedLinear) and m.lm_head.qweight is m.model.embed_tokens.qweight
    # the weights are the stored ones (Q/K rows un-permuted once)
    np.testing.assert_array_equal(layer0.self_attn.q_proj.dequantize().weight.numpy(),
                                  unpermute_qk_rows(stored["blk.0.attn_q.weight"], HEADS))
    np.testing.assert_array_equal(layer0.self_attn.k_proj.dequantize().weight.numpy(),
                                  unpermute_qk_rows(stored["blk.0.attn_k.weight"], KV))
    np.testing.assert_array_equal(layer0.mlp.down_proj.dequantize().weight.numpy(), stored["blk.0.ffn_down.weight"])
    np.testing.assert_array_equal(layer1.self_attn.o_proj.weight.numpy(), stored["blk.1.attn_output.weight"])
    np.testing.assert_array_equal(layer1.mlp.gate_proj.weight.numpy(), stored["blk.1.ffn_gate.weight"])
    ids = np.array([[1, 5, 7, 39, 2, 11]])
    with axon.no_grad():
        quantised = m(ids).numpy()
        dense = dequantize_model(m)(ids).numpy()
    assert np.isfinite(quantised).all()
    np.testing.assert_allclose(quantised, dense, rtol=1e-4, atol=1e-4 * np.abs(dense).max())


def test_unknown_type_in_a_model_names_it(tmp_path):
    from axon_llm.auto import from_pretrained
    path = tmp_path / "iq2.gguf"
    raw = np.zeros((HIDDEN, FFN // 256 * 66), np.uint8)                  # IQ2_XXS: 66 bytes per 256 weights
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_context_length(64)
    w.add_tensor("token_embd.weight", np.zeros((VOCAB, HIDDEN), np.float32))
    w.add_tensor("blk.0.ffn_down.weight", raw, raw_shape=raw.shape, raw_dtype=T.IQ2_XXS)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedError, match="IQ2_XXS"):
        from_pretrained(path)


def test_row_not_a_multiple_of_the_block_size_is_a_format_error(tmp_path):
    """A Q4_K tensor (256-weight blocks) whose rows hold 32 weights: the header alone shows it."""
    import struct
    name = b"blk.0.ffn_down.weight"
    head = (b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + struct.pack("<Q", len(name)) + name
            + struct.pack("<IQQ", 2, 32, 8) + struct.pack("<IQ", 12, 0))
    path = tmp_path / "bad.gguf"
    path.write_bytes(head + b"\0" * ((-len(head)) % 32) + b"\0" * 144)
    with pytest.raises(ModelFormatError, match="Q4_K.*block size 256"):
        GGUFFile(path)
