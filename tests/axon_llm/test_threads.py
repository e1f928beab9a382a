"""``--threads`` on the CLI commands that compute, and ``axon_kernels._jit.set_threads``."""

from __future__ import annotations

from pathlib import Path

import numba
import pytest

from axon_kernels._jit import set_threads
from axon_llm.cli import build_parser, main

LLAMA = str(Path(__file__).resolve().parents[1] / "fixtures" / "hf" / "llama")


@pytest.fixture
def restore_threads():
    before = numba.get_num_threads()
    yield
    set_threads(before)


@pytest.mark.parametrize("command", [["generate", "--prompt", "x"], ["chat"], ["embed", "x"], ["bench"],
                                     ["train", "--data", "f.txt", "--arch", "llama", "--out", "o"], ["serve"]])
def test_every_computing_command_takes_threads(command):
    args = build_parser().parse_args(command + ["--threads", "1"])
    assert args.threads == 1


def test_threads_sets_numba_and_blas(restore_threads, capsys):
    assert main(["bench", "--model", LLAMA, "--prompt-tokens", "4", "--new-tokens", "2", "--threads", "1"]) == 0
    assert numba.get_num_threads() == 1
    import os

    assert os.environ["OPENBLAS_NUM_THREADS"] == "1"
    assert "decode:" in capsys.readouterr().out


def test_bad_thread_counts_are_one_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--model", LLAMA, "--threads", "0"])
    assert exc.value.code != 0
    assert "--threads" in capsys.readouterr().err
    with pytest.raises(ValueError, match="positive"):
        set_threads(0)
