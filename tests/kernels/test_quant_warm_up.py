"""The first run's quantised kernels: `quant.warm_up` compiles exactly the named ones,
`quant.compiled_on_disk` reads Numba's cache, `_jit.compile_in_background` fills it from a second process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from axon_kernels import quant
from axon_kernels._jit import compile_in_background

ROOT = Path(__file__).resolve().parents[2]


def _env(cache_dir) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir),
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "kernels"), os.environ.get("PYTHONPATH", "")]))
    env.pop("NUMBA_DISABLE_JIT", None)
    return env


def test_warm_up_then_cached():
    quant.warm_up()                                          # compiles or loads, and writes the disk cache
    assert quant.compiled_on_disk() is True
    assert quant.compiled_on_disk(("rows_q8",)) is True


def test_unknown_kernel_names_are_refused():
    with pytest.raises(ValueError, match="unknown kernels"):
        quant.warm_up(("matvec_q5",))


def test_background_compile_fills_an_empty_cache(tmp_path, monkeypatch):
    """After a second process compiled a kernel into an empty cache (compile_in_background), a
    fresh process reads it as cached (test_first_run checks that an empty cache reads as cold)."""
    check = [sys.executable, "-c", "from axon_kernels import quant; print(quant.compiled_on_disk(('rows_q8',)))"]
    for key, value in _env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("NUMBA_DISABLE_JIT", raising=False)
    proc = compile_in_background("axon_kernels.quant", "warm_up", ("rows_q8",))
    if proc is None:                                         # this process runs with NUMBA_DISABLE_JIT=1
        pytest.skip("compile_in_background starts nothing under NUMBA_DISABLE_JIT=1")
    assert proc.wait(timeout=300) == 0
    after = subprocess.run(check, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert after.stdout.strip() == "True", after.stderr
