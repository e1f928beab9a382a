"""Every code block of README.md runs.

Python blocks are executed one by one, each in a fresh namespace. In bash blocks, each
``axon-llm ...`` command is run (the ``pip install`` steps before it are what set up this very
test run; the test command itself is not run again from inside the tests), and a comment line
right after a command is the text its stdout must contain. The hub block downloads from a
local mirror on 127.0.0.1 (CI has no internet), pointed at with ``AXON_HUB_ENDPOINT``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.axon_llm.hub_server import HubServer, Route

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def _blocks(lang: str) -> list[str]:
    """The bodies of the README's ``lang`` blocks, each padded with newlines so that line numbers in a
    traceback are README line numbers."""
    text = README.read_text()
    return ["\n" * text.count("\n", 0, m.start(2)) + m.group(2) for m in BLOCK.finditer(text) if m.group(1) == lang]


def _block_id(body: str) -> str:
    first = next(line for line in body.splitlines() if line.strip() and not line.startswith("import"))
    return first.strip()[:50]


def test_readme_opens_with_the_two_commands():
    bash = _blocks("bash")
    assert "axon-llm generate" in bash[0] and "pip install -e ." in bash[0]
    assert "pip install -e \".[test]\"" in bash[1] and "pytest" in bash[1]
    ci = (README.parent / ".ci" / "run").read_text()
    assert bash[1].strip() in ci.splitlines(), ".ci/run must run the README's test command as written"


def _cli_commands() -> list[tuple[str, str | None, str | None]]:
    """(command, its stdin or None, expected stdout text or None) for every axon-llm command in the bash blocks."""
    found = []
    for body in _blocks("bash"):
        lines = body.strip().splitlines()
        for i, line in enumerate(lines):
            cmd = line.split("&&")[-1].strip()
            stdin = None
            if cmd.startswith("echo ") and "| axon-llm" in cmd:           # echo "TEXT" | axon-llm ...
                piped, cmd = (part.strip() for part in cmd.split("|", 1))
                stdin = shlex.split(piped)[1] + "\n"
            if not cmd.startswith("axon-llm"):
                continue
            nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
            expect = nxt[1:].strip() if nxt.startswith("#") else None
            found.append((cmd, stdin, expect))
    return found


@pytest.mark.realmodel
@pytest.mark.parametrize("command, stdin, expect", _cli_commands(), ids=lambda c: str(c)[:60])
def test_readme_cli_command(command, stdin, expect):
    argv = shlex.split(command)
    proc = subprocess.run([sys.executable, "-m", "axon_llm", *argv[1:]], capture_output=True, text=True,
                          timeout=600, input=stdin if stdin is not None else "")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    if expect is not None:
        assert expect in proc.stdout


@pytest.fixture
def gpt2_mirror(tmp_path, monkeypatch):
    """A local mirror holding openai-community/gpt2's config.json, and an empty cache."""
    config = json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 768,
                         "n_head": 12, "n_layer": 12, "n_positions": 1024, "vocab_size": 50257}).encode()
    monkeypatch.setenv("AXON_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-hf-cache"))
    monkeypatch.delenv("AXON_HUB_OFFLINE", raising=False)
    with HubServer() as server:
        server.add("openai-community/gpt2", "config.json", Route(config))
        monkeypatch.setenv("AXON_HUB_ENDPOINT", server.url)
        yield


@pytest.mark.realmodel
@pytest.mark.parametrize("body", _blocks("python"), ids=_block_id)
def test_readme_python_block(body, gpt2_mirror, tmp_path, capsys):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(body, str(README), "exec"), {"__name__": "__readme__"})
    finally:
        os.chdir(cwd)
