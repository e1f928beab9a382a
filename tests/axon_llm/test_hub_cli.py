"""``axon-llm download | list | cache ls | cache rm`` (the hub's subcommands)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import axon_llm.hub as hub
from axon_llm.hub.cli import main
from tests.axon_llm.hub_server import Route, isolated_hub

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def hub_server(tmp_path, monkeypatch):
    with isolated_hub(tmp_path, monkeypatch) as server:
        yield server


def test_list_prints_every_model(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in hub.list_models():
        assert name in out
    assert main(["list", "--architecture", "mamba", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["mamba-130m"] and rows[0]["repo_id"] == "state-spaces/mamba-130m-hf"


def test_download_cache_ls_and_rm(hub_server, tmp_path, capsys):
    hub_server.add("org/model", "config.json", Route(b"{}"))
    hub_server.add("org/model", "model.safetensors", Route(b"w" * 100))
    hub.register(hub.PretrainedLLM(name="cli-model", repo_id="org/model", architecture="gpt2",
                                   hf_architecture="GPT2LMHeadModel", num_parameters=1, context_length=8,
                                   files=("config.json", "model.safetensors")))
    try:
        assert main(["download", "cli-model"]) == 0
        folder = Path(capsys.readouterr().out.strip())
        assert (folder / "model.safetensors").read_bytes() == b"w" * 100
        assert main(["cache", "ls"]) == 0
        out = capsys.readouterr().out
        assert "org/model" in out and "2 file(s)" in out
        assert main(["cache", "rm", "cli-model"]) == 0
        assert not folder.exists()
        assert main(["cache", "rm", "org/model"]) == 1
        assert "not in the cache" in capsys.readouterr().err
    finally:
        hub.unregister("cli-model")


def test_errors_are_one_line_without_traceback(hub_server, capsys):
    assert main(["download", "no-such-model"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("axon-llm: error: unknown model 'no-such-model'") and err.count("\n") == 1


def test_gated_download_from_a_subprocess_prints_one_line(hub_server, tmp_path):
    """The real entry point, as a user runs it: exit code 1 and one line, no traceback."""
    hub_server.add("openai-community/gpt2", "config.json", Route(b"{}", status=401))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "axon_llm.hub.cli", "download", "gpt2"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "gated" in proc.stderr and "HF_TOKEN" in proc.stderr


def test_bad_arguments_exit_non_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["cache"])
    assert exit_info.value.code != 0
