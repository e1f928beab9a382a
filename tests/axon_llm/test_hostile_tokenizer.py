"""Hostile tokenizers and chat templates: malformed files and inputs raise library errors naming the
field; templates run under limits on time, output, loop steps and integer size (from a GGUF too)."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from axon_llm.errors import InputError, LLMError, TokenizerError
from axon_llm.fuzz import _ARRAY, _STRING, tiny_gguf_parts, tiny_hf_folder, write_gguf
from axon_llm.template import MAX_OUTPUT_CHARS, render_template
from axon_llm.tokenizer import HFTokenizer

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return tiny_hf_folder(tmp_path_factory.mktemp("tok") / "model")


@pytest.fixture(scope="module")
def tok(hf_folder):
    return HFTokenizer.from_pretrained(hf_folder)


def gguf_with(tmp_path, changes: dict, drop=()):
    kvs, tensors = tiny_gguf_parts()
    kvs = [(k, t, v) for k, t, v in kvs if k not in changes and k not in drop]
    kvs += [(k, t, v) for k, (t, v) in changes.items()]
    path = tmp_path / "t.gguf"
    path.write_bytes(write_gguf(kvs, tensors))
    return path


# -- GGUF tokenizer metadata --------------------------------------------------------------------

@pytest.mark.parametrize("key,value", [
    ("tokenizer.ggml.merges", (_ARRAY, (_STRING, ["h e", "zz qq"]))),          # "Token zz out of vocabulary"
    ("tokenizer.ggml.merges", (_ARRAY, (_STRING, ["nospace"]))),
    ("tokenizer.ggml.merges", (_ARRAY, (4, [1, 2]))),
    ("tokenizer.ggml.tokens", (_ARRAY, (_ARRAY, [(_STRING, ["a"]), (_STRING, ["b"])]))),   # nested arrays
    ("tokenizer.ggml.tokens", (_ARRAY, (4, [1, 2, 3]))),
    ("tokenizer.ggml.tokens", (_ARRAY, (_STRING, []))),
    ("tokenizer.ggml.tokens", (_STRING, "abc")),
    ("tokenizer.ggml.token_type", (_ARRAY, (_STRING, ["1", "1"]))),
    ("tokenizer.ggml.token_type", (_ARRAY, (4, [1, 1]))),
    ("tokenizer.ggml.scores", (_ARRAY, (6, [float("nan")] * 262))),
    ("tokenizer.ggml.pre", (4, 7)),
    ("tokenizer.ggml.eos_token_id", (_STRING, "5")),
    ("tokenizer.ggml.add_bos_token", (_STRING, "yes")),
])
def test_malformed_gguf_tokenizer_metadata(tmp_path, key, value):
    changes = {key: value}
    if key == "tokenizer.ggml.scores":
        changes["tokenizer.ggml.model"] = (_STRING, "llama")
    with pytest.raises(TokenizerError, match=key.rsplit(".", 1)[-1].split("_")[0]):
        HFTokenizer.from_pretrained(gguf_with(tmp_path, changes))


def test_token_longer_than_the_ceiling(tmp_path):
    kvs, _ = tiny_gguf_parts()
    tokens = dict((k, v) for k, _, v in kvs)["tokenizer.ggml.tokens"][1]
    path = gguf_with(tmp_path, {"tokenizer.ggml.tokens": (_ARRAY, (_STRING, ["x" * 70_000] + tokens[1:]))})
    with pytest.raises(TokenizerError, match="characters long"):
        HFTokenizer.from_pretrained(path)


# -- folders ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [{"eos_token": {"content": 5}}, {"eos_token": 5}, {"bos_token": ["<s>"]},
                                    {"chat_template": 5}, {"chat_template": {"a": 1}}, {"unk_token": {"content": []}}])
def test_tokenizer_config_fields_of_the_wrong_type(hf_folder, tmp_path, config):
    folder = tmp_path / "m"
    shutil.copytree(hf_folder, folder)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(TokenizerError, match=next(iter(config))):
        HFTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("raw", [b"\xff{{ messages }}", b"{{ 'caf\xe9' }}", b"\xc3"])
def test_template_file_that_is_not_utf8(hf_folder, tmp_path, raw):
    folder = tmp_path / "m"
    shutil.copytree(hf_folder, folder)
    (folder / "tokenizer_config.json").write_text("{}")
    (folder / "chat_template.jinja").write_bytes(raw)
    with pytest.raises(TokenizerError, match="UTF-8"):
        HFTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("name,text", [("tokenizer.json", "[" * 100_000), ("tokenizer_config.json", "{\"a\":" * 50_000),
                                       ("tokenizer.json", "{\"model\": 5}"), ("tokenizer_config.json", "\xff")])
def test_malformed_tokenizer_files(hf_folder, tmp_path, name, text):
    folder = tmp_path / "m"
    shutil.copytree(hf_folder, folder)
    (folder / name).write_text(text, encoding="latin-1")
    with pytest.raises(TokenizerError):
        HFTokenizer.from_pretrained(folder)


# -- inputs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("token_id", [2**70, -1, 10**6, 2.5, "3", None, True])
def test_id_to_token_outside_the_vocabulary(tok, token_id):
    with pytest.raises(InputError, match="token_id"):
        tok.id_to_token(token_id)


def test_id_to_token_inside_the_vocabulary(tok):
    assert tok.id_to_token(np.int64(tok.token_to_id("he"))) == "he"


@pytest.mark.parametrize("text", ["\udcff", "abc\udc80def", "\ud800"])
def test_text_that_is_not_valid_unicode(tok, text):
    with pytest.raises(InputError, match="UTF-8"):
        tok.encode(text)
    with pytest.raises(InputError, match="texts\\[1\\]"):
        tok.encode_batch(["fine", text])


@pytest.mark.parametrize("ids", [[2**70], [[1, 2], [3]], [1.5], ["a"], [-1]])
def test_decode_of_malformed_ids(tok, ids):
    with pytest.raises(TokenizerError):
        tok.decode(ids)


# -- the template sandbox --------------------------------------------------------------------------

@pytest.mark.parametrize("template,match", [
    ("{{ (9 ** 99999999) % 7 }}", "bits"), ("{{ 2 ** (10 ** 6) }}", "bits"), ("{{ (2 ** 4000) * (2 ** 4000) }}", "bits"),
    ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}", "loop steps"),
    ("{% for i in range(10**9) %}{% endfor %}", "range"), ("{{ range(10**12)|list }}", "range"),
    ("{{ 'a' * 10**9 }}", "size"), ("{{ [1] * 10**9 }}", "size"), ("{{ 'a'|center(10**9) }}", "2\\*\\*20"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "items"),
    ("{% for i in range(5000) %}{{ 'x' * 5000 }}{% endfor %}", "output exceeds"),
    ("{% for m in messages %}{% for a in messages %}{% for b in messages %}{% for c in messages %}"
     "{% for d in messages %}{% for e in messages %}{% endfor %}{% endfor %}{% endfor %}{% endfor %}{% endfor %}"
     "{% endfor %}", "longer than"),
    ("{{ messages.__class__.__mro__[1].__subclasses__() }}", "unsafe"), ("{{ raise_exception('x') }}", "raised"),
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "RecursionError"), ("{{ 1 / 0 }}", "Zero"),
])
def test_templates_that_run_forever_or_grow_without_bound(template, match):
    messages = MESSAGES * 30
    timed = match == "longer than"     # the time limit itself: short; the other limits get room on a busy machine
    t0 = time.monotonic()
    with pytest.raises(TokenizerError, match=match):
        render_template(template, messages=messages, max_seconds=1.0 if timed else 30.0)
    assert time.monotonic() - t0 < (8.0 if timed else 35.0)


def test_template_limits_leave_normal_templates_alone(tok):
    out = tok.apply_chat_template(MESSAGES * 3)
    assert out.count("<|im_start|>user") == 3 and out.endswith("<|im_start|>assistant\n")
    assert render_template("{{ 2 ** 100 }} {{ range(3)|list }} {{ 'ab' * 3 }}") == f"{2 ** 100} [0, 1, 2] ababab"
    assert len(render_template("{{ 'x' * n }}", n=MAX_OUTPUT_CHARS)) == MAX_OUTPUT_CHARS


@pytest.mark.parametrize("template", ["{{ (9 ** 99999999) % 7 }}", "{% for i in range(99999) %}{% for j in range(99999) %}"
                                      "{% endfor %}{% endfor %}", "{{ 'a' * 10**9 }}"])
def test_hostile_template_from_a_gguf_file(tmp_path, template):
    tok = HFTokenizer.from_pretrained(gguf_with(tmp_path, {"tokenizer.chat_template": (_STRING, template)}))
    t0 = time.monotonic()
    with pytest.raises(LLMError):
        tok.apply_chat_template(MESSAGES)
    assert time.monotonic() - t0 < 8.0
