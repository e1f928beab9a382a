"""benchmarks/bench_kernels.py runs end to end at its --smoke size and reports every kernel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_kernels.py"


def test_bench_kernels_smoke():
    res = subprocess.run([sys.executable, str(SCRIPT), "--smoke"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    for kernel in ("flash_attention fwd", "flash_attention bwd", "selective_scan fwd", "selective_scan bwd",
                   "ternary_matmul", "matmul float32"):
        assert kernel in res.stdout, res.stdout
    assert "vs torch SDPA" in res.stdout or "torch not installed" in res.stdout, res.stdout
    assert "peer/ours" in res.stdout and "16x less" in res.stdout and "composite / flash" in res.stdout
