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


def test_profile_axon_accounts_for_the_whole_step():
    """``--profile``'s axon half (no torch needed): every Function's forward and backward, the
    optimizer and the rest add up to the whole step, and the timers are removed afterwards."""
    import numpy as np

    import axon.nn._fused as fused

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("bench_train_for_test", SCRIPT)
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    config = bench.SMOKE_CONFIG
    ids = np.random.default_rng(0).integers(0, config["vocab_size"], size=(2, 17))
    trainer = bench.AxonTrainer(config, ids[:, :-1].copy(), ids[:, 1:].copy())
    trainer.step()
    before = fused.Linear.__dict__["forward"]
    rows = bench.profile_axon(trainer, 2)
    names = [r[0] for r in rows]
    assert "Linear.forward" in names and "Linear.backward" in names and "optimizer step" in names
    assert names[-1] == "whole step" and rows[-2][0].startswith("rest")
    assert abs(sum(r[1] for r in rows[:-1]) - rows[-1][1]) < 1e-6 * max(1.0, rows[-1][1])
    assert dict((r[0], r[2]) for r in rows)["Linear.forward"] == 7 * config["num_hidden_layers"] + 1   # q k v o, gate up down; lm_head
    assert fused.Linear.__dict__["forward"] is before                    # the timers are gone
    assert "step" not in trainer.opt.__dict__
