"""The fuzzing harness (axon_llm.fuzz) in CI: a few hundred hypothesis-mutated inputs across the
five kinds, each a clean library error or a load with a finite forward pass, each run in a worker
under RLIMIT_AS and a time limit. ``FUZZ_EXAMPLES=N`` runs N per kind (``FUZZ_SEED`` varies them)."""

from __future__ import annotations

import os

import pytest

from axon_llm.fuzz import KINDS, FuzzFailure, Worker, check_input, fuzz, tiny_gguf

#: examples per kind in CI (five kinds: ~250 in all, well under a minute)
CI_EXAMPLES = {"gguf": 60, "safetensors": 50, "config": 50, "tokenizer": 45, "template": 45}


@pytest.fixture(scope="module")
def worker():
    with Worker(memory_mb=6144, seconds=60.0) as w:
        yield w


@pytest.mark.parametrize("kind", KINDS)
def test_fuzz(kind, worker):
    n = int(os.environ["FUZZ_EXAMPLES"]) if os.environ.get("FUZZ_EXAMPLES") else CI_EXAMPLES[kind]
    counts = fuzz(kind, n, worker=worker)
    assert sum(counts.values()) == n
    assert set(counts) - {"ok"}, "the mutations must reach the library's checks"


def test_the_harness_catches_a_non_finite_forward(tmp_path, monkeypatch):
    import axon_llm.fuzz as fz

    path = tiny_gguf(tmp_path / "ok.gguf")
    assert check_input("gguf", path) == "ok"

    def nan_forward(model):
        raise FuzzFailure("the model loaded but its forward pass is not finite")

    monkeypatch.setattr(fz, "_forward_is_finite", nan_forward)
    with pytest.raises(FuzzFailure):
        check_input("gguf", path)


def test_the_worker_reports_a_crash_and_a_hang(tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text("{{ x }}")
    fifo = tmp_path / "never.jinja"
    os.mkfifo(fifo)                                     # reading it blocks forever: a hang
    with Worker(memory_mb=6144, seconds=3.0) as w:
        assert w.check("template", template) == {"status": "ok", "detail": "ok"}
        w.proc.kill()                                   # a crash: the next answer says so
        w.proc.wait()
        assert w._ask("template", str(template), 5.0)["status"] == "fail"
        assert w.check("template", template)["status"] == "ok"   # a new worker takes over
        hang = w.check("template", fifo)
        assert hang["status"] == "fail" and "hang" in hang["detail"] and w.proc is None
