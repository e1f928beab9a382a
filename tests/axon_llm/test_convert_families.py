"""axon_llm.convert for every family the GGUF loader's table maps (GGUF_ARCHITECTURES): the tiny
random HF fixtures of each family into GGUF (F32, F16, Q8_0, a K-quant) and into HF folders, read
back by our loader, gguf-py's GGUFReader and (recorded, dev-only) llama.cpp."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import axon
from axon_llm.auto import from_pretrained
from axon_llm.convert import convert
from axon_llm.errors import UnsupportedError
from axon_llm.loaders import gguf as gguf_loader

gguf = pytest.importorskip("gguf")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
#: fixtures GGUF cannot express, with what the error names (llama.cpp's qwen2 has no sliding window;
#: GGUF has no dynamic-NTK RoPE)
INEXPRESSIBLE = {"qwen2": "GGUF qwen2 cannot carry.*layer_types", "llama_rope_dynamic": "RoPE scaling 'dynamic'"}


def _cases() -> list[tuple[str, str]]:
    """``(GGUF architecture, fixture case)`` for every table entry and every causal-LM fixture of its class."""
    out = []
    for arch, spec in sorted(gguf_loader.GGUF_ARCHITECTURES.items()):
        for d in sorted((FIXTURES / "hf").iterdir()):
            cfg = json.loads((d / "config.json").read_text()) if (d / "config.json").is_file() else {}
            # (a vocabulary under 256 cannot hold the byte tokenizer the test adds: *_rand1 and a few others)
            if (cfg.get("architectures") or [None])[0] == spec.hf_architecture and d.name not in INEXPRESSIBLE \
                    and cfg.get("vocab_size", 0) >= 256 \
                    and (d / "expected.npz").is_file():
                out.append((arch, d.name))
    return out


CASES = _cases()


def _with_tokenizer(case: str, tmp_path: Path) -> Path:
    """A copy of fixture ``hf/<case>`` with a byte tokenizer (the fixtures have 256-entry vocabularies
    and no tokenizer; GGUF needs one)."""
    src = tmp_path / case
    shutil.copytree(FIXTURES / "hf" / case, src)
    (src / "tokenizer_byte.json").write_text(json.dumps({"kind": "byte", "with_specials": False}) + "\n")
    return src


def _logits(model, ids) -> np.ndarray:
    with axon.no_grad():
        return model(np.asarray(ids)).numpy()


def _dequantised_model(path: Path):
    """The file's model with every tensor dequantised by our loader into float32 parameters: what a
    quantised model must compute, up to the fused kernels' rounding."""
    from axon_llm.loaders.safetensors import load_state
    from axon_llm.models import ARCHITECTURES
    gm = gguf_loader.load_gguf(path)
    cls = ARCHITECTURES[gm.config["architectures"][0]]
    model = cls(cls.config_class.from_dict(gm.config))
    load_state(model, {k: (v.dequantize() if hasattr(v, "dequantize") else v) for k, v in gm.tensors.items()})
    return model.eval()


def _reader_arch(reader) -> str:
    f = reader.fields["general.architecture"]
    return bytes(f.parts[f.data[0]]).decode()


def test_the_table_has_a_fixture_for_every_family():
    """Every GGUF_ARCHITECTURES entry is exercised below (each has a tiny HF fixture of its class)."""
    assert {arch for arch, _ in CASES} == set(gguf_loader.GGUF_ARCHITECTURES)


@pytest.mark.parametrize("arch, case", CASES)
def test_f32_gguf_gives_transformers_logits_and_greedy_tokens(arch, case, tmp_path):
    """F32: the fixture's logits (hidden states for an encoder) within 1e-4 x scale, the same cached
    greedy tokens, and a file gguf-py reads with the architecture's own tensor names."""
    exp = np.load(FIXTURES / "hf" / case / "expected.npz")
    out = convert(_with_tokenizer(case, tmp_path), tmp_path / "m.gguf")
    model = from_pretrained(out)
    want = exp["logits"]
    np.testing.assert_allclose(_logits(model, exp["input_ids"]), want, rtol=0, atol=1e-4 * np.abs(want).max())
    if "greedy_ids" in exp:
        prompt = exp["prompt_ids"]
        got = model.generate(prompt, max_new_tokens=exp["greedy_ids"].shape[1] - prompt.shape[1], do_sample=False,
                             eos_token_id=None)
        assert np.asarray(got).tolist() == exp["greedy_ids"].tolist()
    reader = gguf.GGUFReader(str(out))
    assert _reader_arch(reader) == arch
    from safetensors.numpy import load_file
    hf_names = {n for n in load_file(str(FIXTURES / "hf" / case / "model.safetensors"))
                if not n.startswith("pooler.")}            # (GGUF bert carries no pooler, as llama.cpp's converter)
    assert {t.name for t in reader.tensors} - {"rope_freqs.weight"} == \
        {gguf_loader.gguf_tensor_name(n, arch) for n in hf_names}
    assert {t.tensor_type.name for t in reader.tensors} == {"F32"}


@pytest.mark.parametrize("quant", ["F16", "Q8_0"])
@pytest.mark.parametrize("arch, case", [c for c in CASES if c[1] in ("qwen2_untied", "gemma3", "llama")])
def test_quantised_gguf_computes_what_its_dequantised_weights_do(arch, case, quant, tmp_path):
    """F16 / Q8_0: the fused kernels on the file give the logits of its own dequantised weights;
    the blocks are gguf-py's (``gguf.quants.quantize``) and dequantise as gguf-py does; and the
    logits stay near transformers' (the quantisation error of N(0, 0.2) weights)."""
    from safetensors.numpy import load_file
    exp = np.load(FIXTURES / "hf" / case / "expected.npz")
    out = convert(_with_tokenizer(case, tmp_path), tmp_path / f"m-{quant}.gguf", quant=quant)
    got = _logits(from_pretrained(out), exp["input_ids"])
    ref = _logits(_dequantised_model(out), exp["input_ids"])
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    want = exp["logits"]
    assert np.abs(got - want).max() < (0.01 if quant == "F16" else 0.15) * np.abs(want).max()
    src = load_file(str(FIXTURES / "hf" / case / "model.safetensors"))
    reader = gguf.GGUFReader(str(out))
    by_name = {t.name: t for t in reader.tensors}
    t = by_name["blk.0.ffn_down.weight"]                     # no permutation or offset: bytes comparable
    assert t.tensor_type.name == quant
    w = src["model.layers.0.mlp.down_proj.weight"]
    qtype = gguf.GGMLQuantizationType[quant]
    assert np.array_equal(np.asarray(t.data).view(np.uint8).reshape(-1),
                          np.asarray(gguf.quants.quantize(w, qtype)).view(np.uint8).reshape(-1))
    with gguf_loader.GGUFFile(out) as g:
        ours = g.tensor_data("blk.0.ffn_down.weight")
        ours = ours.dequantize() if hasattr(ours, "dequantize") else np.asarray(ours, np.float32)
    np.testing.assert_array_equal(ours, gguf.quants.dequantize(np.asarray(t.data), qtype).reshape(w.shape))


def _tiny_256(family: str, folder: Path) -> Path:
    """A random Qwen2 or Gemma 3 whose every row is a multiple of 256 wide (K-quants fit without
    fallback), with non-trivial norms and biases, saved as an HF folder with a byte tokenizer."""
    from axon_llm import Gemma3Config, Gemma3ForCausalLM, Qwen2Config, Qwen2ForCausalLM
    dims = dict(vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=64, max_position_embeddings=64)
    if family == "qwen2":
        cls, cfg = Qwen2ForCausalLM, Qwen2Config(**dims, tie_word_embeddings=False)
    else:
        cls, cfg = Gemma3ForCausalLM, Gemma3Config(**dims, query_pre_attn_scalar=64, sliding_window=4,
                                                   sliding_window_pattern=2)
    axon.manual_seed(0)
    model = cls(cfg)
    rng = np.random.default_rng(1)
    for name, p in model.named_parameters():
        scale = 0.1 if name.endswith(("norm.weight", ".bias")) else 0.2
        p.data[...] = (rng.normal(0, scale, p.shape) + (1.0 if family == "qwen2" and name.endswith("norm.weight") else 0.0))
    model.save_pretrained(folder)
    (folder / "tokenizer_byte.json").write_text(json.dumps({"kind": "byte", "with_specials": False}) + "\n")
    return folder


@pytest.mark.parametrize("family, quant", [("qwen2", "Q4_K"), ("gemma3", "Q6_K")])
def test_k_quant_gguf_of_256_wide_rows(family, quant, tmp_path):
    """Rows that fit 256: every matrix is written as the K-quant itself (no fallback), and the file
    computes what its dequantised weights do."""
    src = _tiny_256(family, tmp_path / family)
    out = convert(src, tmp_path / f"{family}.gguf", quant=quant)
    reader = gguf.GGUFReader(str(out))
    assert {t.tensor_type.name for t in reader.tensors if len(t.shape) == 2} == {quant}
    ids = np.random.default_rng(2).integers(0, 256, (2, 10))
    got, ref = _logits(from_pretrained(out), ids), _logits(_dequantised_model(out), ids)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    # and the blocks hold the source weights to the type's precision (relative RMS error; uniform
    # 4-bit steps over ~6 sigma give ~0.11, 6-bit ~0.03, and the K-quant search does better)
    from safetensors.numpy import load_file
    gm, source = gguf_loader.load_gguf(out), load_file(str(src / "model.safetensors"))
    bound = {"Q4_K": 0.11, "Q6_K": 0.03}[quant]
    for name, t in gm.tensors.items():
        if hasattr(t, "dequantize"):
            w = source[name]
            assert np.linalg.norm(t.dequantize() - w) < bound * np.linalg.norm(w), name


@pytest.mark.parametrize("case, model_type", [("qwen2", "qwen2"), ("qwen2_untied", "qwen2"), ("gemma3", "gemma3_text"),
                                               ("gemma3_softcap", "gemma3_text")])
def test_hf_folder_output_from_safetensors_and_from_gguf(case, model_type, tmp_path):
    """An HF folder, from the HF source and from its F32 GGUF: transformers' tensor names (those of
    the fixture transformers saved), config.json with the family's model_type, the fixture's logits."""
    from safetensors.numpy import load_file
    exp = np.load(FIXTURES / "hf" / case / "expected.npz")
    src = _with_tokenizer(case, tmp_path)
    sources = [src]
    if case != "qwen2":                                     # (GGUF cannot carry qwen2's sliding layers)
        sources.append(convert(src, tmp_path / "m.gguf"))
    names = set(load_file(str(FIXTURES / "hf" / case / "model.safetensors")))
    for i, source in enumerate(sources):
        folder = convert(source, tmp_path / f"hf{i}")
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == model_type and config["architectures"] == \
            json.loads((FIXTURES / "hf" / case / "config.json").read_text())["architectures"]
        assert set(load_file(str(folder / "model.safetensors"))) == names
        want = exp["logits"]
        np.testing.assert_allclose(_logits(from_pretrained(folder), exp["input_ids"]), want, rtol=0,
                                   atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("case", ["qwen2_untied", "gemma3_softcap"])
def test_hf_folder_from_gguf_loads_in_transformers(case, tmp_path):
    """Dev-only check (skipped without torch + transformers): transformers reads the folder written
    from a GGUF file (config.json keys, tensor names) and computes the fixture's logits."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    exp = np.load(FIXTURES / "hf" / case / "expected.npz")
    folder = convert(convert(_with_tokenizer(case, tmp_path), tmp_path / "m.gguf"), tmp_path / "hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        got = model(torch.as_tensor(exp["input_ids"])).logits.numpy()
    np.testing.assert_allclose(got, exp["logits"], rtol=0, atol=1e-4 * np.abs(exp["logits"]).max())


def test_gemma3_score_scale_is_folded_into_q_norm(tmp_path):
    """The fixture's query_pre_attn_scalar (24) differs from head_dim (32), which GGUF implies: the
    file's q_norm multipliers carry sqrt(32 / 24), and the logits are unchanged (the F32 test)."""
    from safetensors.numpy import load_file
    out = convert(_with_tokenizer("gemma3", tmp_path), tmp_path / "g.gguf")
    src = load_file(str(FIXTURES / "hf" / "gemma3" / "model.safetensors"))
    with gguf_loader.GGUFFile(out) as g:
        stored = np.asarray(g.tensor_data("blk.1.attn_q_norm.weight"))
        k_stored = np.asarray(g.tensor_data("blk.1.attn_k_norm.weight"))
    np.testing.assert_allclose(stored, (1 + src["model.layers.1.self_attn.q_norm.weight"]) * np.sqrt(32 / 24), rtol=1e-6)
    np.testing.assert_allclose(k_stored, 1 + src["model.layers.1.self_attn.k_norm.weight"], rtol=1e-6)   # 1 + w
    assert from_pretrained(out).config.query_pre_attn_scalar == 32


@pytest.mark.parametrize("case", sorted(INEXPRESSIBLE))
def test_a_config_gguf_cannot_carry_is_refused_and_nothing_written(case, tmp_path):
    with pytest.raises(UnsupportedError, match=INEXPRESSIBLE[case]):
        convert(_with_tokenizer(case, tmp_path), tmp_path / "q.gguf")
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".gguf" or p.name.startswith(".")]


def test_a_family_outside_the_table_is_named(tmp_path):
    with pytest.raises(UnsupportedError, match="MistralForCausalLM.*has no GGUF mapping"):
        convert(_with_tokenizer("mistral", tmp_path), tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_a_table_transform_convert_cannot_undo_is_refused(tmp_path, monkeypatch):
    """A new GGUFArchitecture field (a transform load_gguf applies) that convert does not reverse:
    UnsupportedError naming it, never a file that loads wrong."""
    base = gguf_loader.GGUFArchitecture

    @dataclasses.dataclass(frozen=True)
    class WithTranspose(base):
        transpose: tuple = ()

    spec = gguf_loader.GGUF_ARCHITECTURES["qwen2"]
    patched = WithTranspose(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(base)}, transpose=("ffn_up",))
    monkeypatch.setitem(gguf_loader.GGUF_ARCHITECTURES, "qwen2", patched)
    with pytest.raises(UnsupportedError, match="GGUFArchitecture.transpose"):
        convert(_with_tokenizer("qwen2_untied", tmp_path), tmp_path / "q.gguf")


@pytest.mark.parametrize("key", ["qwen2_untied-F32", "qwen2_untied-Q8_0", "gemma3-F32", "gemma3-Q8_0"])
def test_llama_cpp_runs_our_files_as_we_do(key, tmp_path):
    """llama.cpp's logits and greedy tokens on our conversion of the fixture (recorded by the dev-only
    tests/fixtures/make_llamacpp_convert.py with llama-cpp-python 0.3.36) against axon's on the same file.

    F32: within 5e-3 x scale (llama.cpp keeps its KV cache in float16; measured 1.8e-3 and 2.3e-3)
    and the same 16 greedy tokens. Q8_0: llama.cpp multiplies Q8_0 weights by activations rounded
    to 8 bits, noise as large as the weights' own rounding on these random N(0, 0.2) models (top-2
    gaps are smaller than it, so greedy tokens are not compared; test_gemma3_real.py and docs/gguf.md
    do that on a trained model). What must hold is that llama.cpp computes with *our* blocks: its
    logits are closer to axon's on the same file than to transformers' float ones (RMS), and within
    8e-2 x scale of axon's (measured 6.0e-2, 5.7e-2)."""
    rec_path = FIXTURES / "convert" / "llama_cpp.npz"
    if not rec_path.exists():
        pytest.skip("no llama.cpp recording (run tests/fixtures/make_llamacpp_convert.py)")
    rec = np.load(rec_path)
    case, quant = key.rsplit("-", 1)
    exp = np.load(FIXTURES / "hf" / case / "expected.npz")
    out = convert(_with_tokenizer(case, tmp_path), tmp_path / "m.gguf", quant=quant)
    model = from_pretrained(out)
    theirs = rec[f"{key}/logits"]
    ours = _logits(model, exp["input_ids"])
    scale = np.abs(theirs).max()
    if quant == "F32":
        assert np.abs(ours - theirs).max() < 5e-3 * scale
        prompt = exp["prompt_ids"]
        got = model.generate(prompt, max_new_tokens=len(rec[f"{key}/greedy"]), do_sample=False, eos_token_id=None)
        assert np.asarray(got)[0, prompt.shape[1]:].tolist() == rec[f"{key}/greedy"].tolist()
    else:
        rms = lambda a, b: float(np.sqrt(np.mean((a - b) ** 2)))      # noqa: E731
        assert rms(theirs, ours) < rms(theirs, exp["logits"])
        assert np.abs(ours - theirs).max() < 8e-2 * scale
