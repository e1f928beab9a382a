"""benchmarks/bench_train.py runs end to end at its --smoke size and compares against
transformers' default (SDPA) attention, not eager."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_train.py"


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None or importlib.util.find_spec("torch") is None,
                    reason="torch/transformers (dev-only peers) are not installed")
def test_bench_train_smoke_uses_sdpa_and_prints_round_ratios():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "kernels"), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, str(SCRIPT), "--smoke"], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "attn_implementation='sdpa'" in res.stdout and "not eager" in res.stdout, res.stdout
    assert "round 1:" in res.stdout and "min " in res.stdout and "median " in res.stdout, res.stdout
