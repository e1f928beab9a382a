"""Our kernels package is `axon_kernels`; the import name `kernels` belongs to a PyPI package
that transformers depends on. Both must work in one process, also from the repository root
(where `python -m pytest` and a user's `python` put the root on sys.path)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BOTH = """
import axon_kernels, kernels
assert axon_kernels.__file__.endswith("axon_kernels/__init__.py"), axon_kernels.__file__
assert "axon_kernels" not in kernels.__name__
assert hasattr(kernels, "CUDAProperties") and not hasattr(kernels, "flash_attention")
import numpy as np
a = np.ones((2, 3), np.float32)
assert np.allclose(axon_kernels.matmul(a, a.T), 3.0)
print("ok")
"""


@pytest.mark.parametrize("cwd", ["repo_root", "elsewhere"])
def test_pypi_kernels_and_axon_kernels_in_one_process(cwd, tmp_path):
    pytest.importorskip("kernels", reason="the test extra installs PyPI's `kernels` (pip install -e '.[test]')")
    where = ROOT if cwd == "repo_root" else tmp_path
    out = subprocess.run([sys.executable, "-c", BOTH], cwd=where, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_no_package_of_ours_is_named_kernels():
    """The folder kernels/ has no __init__.py: it is only the home of kernels/axon_kernels/."""
    assert not (ROOT / "kernels" / "__init__.py").exists()
    assert (ROOT / "kernels" / "axon_kernels" / "__init__.py").exists()
    include = next(line for line in (ROOT / "pyproject.toml").read_text().splitlines() if line.startswith("include"))
    assert "axon_kernels" in include and '"kernels' not in include
