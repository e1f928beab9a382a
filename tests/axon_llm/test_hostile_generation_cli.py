"""The resource budget (generate, beam search, train check sizes against the context and the memory
before allocating) and the CLI's answers to commands a model cannot do, undecodable text and bad flags."""

from __future__ import annotations

import io
import sys
import time

import numpy as np
import pytest

from axon_llm.auto import from_pretrained
from axon_llm.cli import main
from axon_llm.models import BertConfig, GPT2Config
from axon_llm.errors import GenerationError, InputError
from axon_llm.fuzz import tiny_gguf
from axon_llm.generation import generate
from axon_llm.limits import available_memory, check_memory
from axon_llm.models.gpt2 import GPT2LMHead


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory):
    return tiny_gguf(tmp_path_factory.mktemp("g") / "tiny.gguf")


@pytest.fixture(scope="module")
def llama(gguf_path):
    return from_pretrained(gguf_path)


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    from axon_llm.loaders.safetensors import save_pretrained
    from axon_llm.models.bert import BertModel as Bert

    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16)
    folder = tmp_path_factory.mktemp("b") / "bert"
    save_pretrained(Bert(cfg), folder)
    return folder


def quick(fn, error, match):
    t0 = time.monotonic()
    with pytest.raises(error, match=match):
        fn()
    assert time.monotonic() - t0 < 5.0, "the budget must be checked before anything is allocated"


# -- generate and beam search -------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    ({"max_new_tokens": 10**9}, "max_new_tokens"), ({"max_new_tokens": 2**40}, "max_new_tokens"),
    ({"max_new_tokens": 10**6, "num_beams": 10**6}, "num_beams"), ({"max_new_tokens": 4, "num_beams": 10**8}, "num_beams"),
])
def test_generate_sizes_are_checked_first(llama, kwargs, match):
    quick(lambda: generate(llama, np.array([[1, 2, 3]]), **kwargs), GenerationError, match)


def test_large_batch_is_checked_against_memory(llama):
    ids = np.ones((20_000, 4), dtype=np.int64)
    quick(lambda: generate(llama, ids, max_new_tokens=20_000), GenerationError, "batch size")


@pytest.mark.parametrize("new", [30, 100, 10**5])
def test_learned_positions_bound_max_new_tokens_by_the_context(new):
    model = GPT2LMHead(GPT2Config(vocab_size=30, n_positions=32, n_embd=16, n_layer=1, n_head=2)).eval()
    quick(lambda: model.generate(np.array([[1, 2, 3]]), max_new_tokens=new), GenerationError, "context of 32")


def test_budget_leaves_small_generations_alone(llama):
    out = generate(llama, np.array([[1, 2, 3]]), max_new_tokens=3, num_beams=2)
    assert out.shape[0] == 1 and 3 < out.shape[1] <= 6


def test_check_memory_names_what_and_the_hint():
    avail = available_memory()
    assert avail is not None and avail > 0
    with pytest.raises(InputError, match="the thing .* lower --x"):
        check_memory(avail * 4, "the thing", "lower --x", InputError)
    check_memory(1, "a byte", "", InputError)


# -- the CLI --------------------------------------------------------------------------------------

def run(argv, capsys, stdin: bytes | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:   # argparse usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", [["embed", "--model", "{gguf}", "hello"],
                                     ["embed", "--model", "{gguf}", "a", "b", "--similarity"]])
def test_embed_with_a_causal_lm_names_its_kind(gguf_path, capsys, command):
    code, out, err = run([c.format(gguf=gguf_path) for c in command], capsys)
    assert code == 1 and out == ""
    assert "causal LM" in err and "LLaMAForCausalLM" in err and "encoder" in err and "Traceback" not in err


@pytest.mark.parametrize("command", [["generate", "--model", "{bert}", "--prompt", "hi"],
                                     ["bench", "--model", "{bert}"], ["chat", "--model", "{bert}"]])
def test_generate_with_an_encoder_names_its_kind(bert_folder, capsys, command):
    code, out, err = run([c.format(bert=bert_folder) for c in command], capsys)
    assert code == 1 and "encoder model (Bert" in err and "causal LM" in err and "internal error" not in err


@pytest.mark.parametrize("argv_text", ["\udcff", "ab\udc80c"])
def test_undecodable_prompt_argument(gguf_path, capsys, argv_text):
    code, _, err = run(["generate", "--model", gguf_path, "--prompt", argv_text], capsys)
    assert code == 1 and "--prompt" in err and "UTF-8" in err and "internal error" not in err
    code, _, err = run(["embed", "--model", gguf_path, "fine", argv_text], capsys)
    assert code == 1 and "TEXT #2" in err


@pytest.mark.parametrize("data", [b"\xff\xfe", b"hello \xc3", b"\x80"])
def test_undecodable_prompt_on_stdin(gguf_path, capsys, monkeypatch, data):
    code, _, err = run(["generate", "--model", gguf_path, "--prompt", "-"], capsys, stdin=data, monkeypatch=monkeypatch)
    assert code == 1 and "standard input is not valid UTF-8" in err


def test_valid_prompt_on_stdin_still_works(gguf_path, capsys, monkeypatch):
    code, out, err = run(["generate", "--model", gguf_path, "--prompt", "-", "--max-new-tokens", "2"], capsys,
                         stdin="héllo".encode(), monkeypatch=monkeypatch)
    assert code == 0, err


@pytest.mark.parametrize("argv,flag", [
    (["generate", "--prompt", "x", "--seed", "-1"], "--seed"), (["generate", "--prompt", "x", "--seed", "2**70"], "--seed"),
    (["generate", "--prompt", "x", "--seed", str(2**64)], "--seed"), (["chat", "--seed", "-5"], "--seed"),
    (["embed", "x", "--precision", "1000000000"], "--precision"), (["bench", "--repeats", "0"], "--repeats"),
    (["bench", "--repeats", str(10**9)], "--repeats"), (["generate", "--prompt", "x", "--top-p", "nan"], "--top-p"),
    (["train", "--arch", "llama", "--preset", "tiny", "--data", "x", "--out", "o", "--seed", "-1"], "--seed"),
    (["train", "--arch", "llama", "--preset", "tiny", "--data", "x", "--out", "o", "--batch-size", "0"], "--batch-size"),
])
def test_every_flag_error_names_its_flag(capsys, argv, flag):
    code, _, err = run(argv, capsys)
    assert code == 2 and flag in err and err.count("\n") == 1


@pytest.mark.parametrize("data,match", [("/dev/zero", "not \\(a device"), ("/dev/null", "not \\(a device"),
                                        ("{tmp}", "is a directory"), ("{tmp}/missing.txt", "not found")])
def test_train_data_that_is_not_a_text_file(tmp_path, capsys, data, match):
    code, _, err = run(["train", "--arch", "llama", "--preset", "tiny", "--data", data.format(tmp=tmp_path),
                        "--out", tmp_path / "out"], capsys)
    assert code == 1
    assert __import__("re").search(match, err), err


@pytest.mark.parametrize("extra", [["--batch-size", str(10**9)], ["--batch-size", str(10**7), "--seq-len", "64"]])
def test_train_batch_is_checked_against_memory(tmp_path, capsys, extra):
    (tmp_path / "d.txt").write_text("some text to train on " * 20)
    t0 = time.monotonic()
    code, _, err = run(["train", "--arch", "llama", "--preset", "tiny", "--data", tmp_path / "d.txt",
                        "--out", tmp_path / "out", "--steps", "1", *extra], capsys)
    assert code == 1 and "--batch-size" in err and "memory" in err
    assert time.monotonic() - t0 < 30
