"""download_file against a misbehaving local server: the right file is cached or a clear error is
raised, and nothing partial or wrong is ever left where a later call would trust it."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from axon_llm.errors import (
    ChecksumError, DownloadError, GatedModelError, LLMError, ModelNotFoundError, OfflineError,
)
from axon_llm.hub import DownloadSettings, HubInputError, download_file, scan_cache
from tests.axon_llm.hub_server import COMMIT, FAST, Route, isolated_hub

REPO = "org/model"
CONTENT = bytes(range(256)) * 2048          # 512 KiB: several chunks
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with isolated_hub(tmp_path, monkeypatch) as server:
        yield server


def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "models--org--model"


def leftovers(tmp_path: Path) -> list[Path]:
    """Files a later call could mistake for the download: anything in snapshots, blobs or temp files."""
    folder = cache_dir(tmp_path)
    found = []
    for sub in ("snapshots", "blobs"):
        if (folder / sub).is_dir():
            found += [p for p in (folder / sub).rglob("*") if p.is_file() or p.is_symlink()]
    return found


def assert_cached(path: Path, tmp_path: Path, content: bytes = CONTENT) -> None:
    assert path.read_bytes() == content
    sha = hashlib.sha256(content).hexdigest()
    assert path == cache_dir(tmp_path) / "snapshots" / COMMIT / path.name
    assert path.is_symlink() and Path(os.path.realpath(path)) == cache_dir(tmp_path) / "blobs" / sha
    assert not list(cache_dir(tmp_path).glob("blobs/*.incomplete"))


def test_download_then_cache_hit_without_network(hub, tmp_path):
    hub.add(REPO, "model.safetensors", Route(CONTENT))
    path = download_file(REPO, "model.safetensors", settings=FAST)
    assert_cached(path, tmp_path)
    assert (cache_dir(tmp_path) / "refs" / "main").read_text() == COMMIT
    n = len(hub.log)
    assert download_file(REPO, "model.safetensors", settings=FAST) == path
    assert download_file(REPO, "model.safetensors", revision=COMMIT, settings=FAST) == path
    assert len(hub.log) == n, "a cached file must be served without asking the server"


def test_nested_filename_and_force_redownloads(hub, tmp_path):
    hub.add(REPO, "1_Pooling/config.json", Route(b'{"pooling": "mean"}', etag=False))
    path = download_file(REPO, "1_Pooling/config.json", settings=FAST)
    assert path.read_bytes() == b'{"pooling": "mean"}'
    assert path.relative_to(cache_dir(tmp_path)).parts == ("snapshots", COMMIT, "1_Pooling", "config.json")
    assert download_file(REPO, "1_Pooling/config.json", force=True, settings=FAST).read_bytes() == \
        b'{"pooling": "mean"}'
    assert hub.bodies["1_Pooling/config.json"] == 2


def test_cut_connection_resumes_with_range(hub, tmp_path):
    hub.add(REPO, "model.safetensors", Route(CONTENT, cut_after=100_000, cuts=2))
    path = download_file(REPO, "model.safetensors", settings=FAST)
    assert_cached(path, tmp_path)
    ranges = [r.headers.get("Range") for r in hub.requests_for("model.safetensors")]
    assert len(ranges) == 3 and ranges[0] is None, ranges
    # each resume starts at the bytes already written (a chunk may be lost with the connection)
    offsets = [int(r.split("=")[1].rstrip("-")) for r in ranges[1:]]
    assert 0 < offsets[0] <= 100_000 < offsets[1] <= offsets[0] + 100_000, ranges


def test_server_ignoring_range_restarts_cleanly(hub, tmp_path):
    hub.add(REPO, "model.safetensors", Route(CONTENT, cut_after=200_000, cuts=1, ignore_range=True))
    path = download_file(REPO, "model.safetensors", settings=FAST)
    assert_cached(path, tmp_path)   # not 200k of the start + the whole file again
    logged = hub.requests_for("model.safetensors")
    assert logged[1].headers.get("Range", "").startswith("bytes=") and logged[1].status == 200


def test_503_then_success_honours_retry_after(hub, tmp_path):
    hub.add(REPO, "model.safetensors", Route(CONTENT, fail_first=[503], retry_after="1"))
    start = time.monotonic()
    path = download_file(REPO, "model.safetensors", settings=FAST)
    assert time.monotonic() - start >= 0.95, "Retry-After: 1 was not honoured"
    assert_cached(path, tmp_path)


def test_429_and_408_are_retried_with_backoff(hub, tmp_path):
    hub.add(REPO, "model.safetensors", Route(CONTENT, fail_first=[429, 408, 502]))
    assert_cached(download_file(REPO, "model.safetensors", settings=FAST), tmp_path)
    assert [r.status for r in hub.requests_for("model.safetensors")] == [429, 408, 502, 200]


def test_persistent_503_gives_up_and_leaves_nothing(hub, tmp_path):
    hub.add(REPO, "model.safetensors", Route(CONTENT, status=503))
    with pytest.raises(DownloadError, match="after 3 retries"):
        download_file(REPO, "model.safetensors", settings=FAST)
    assert len(hub.requests_for("model.safetensors")) == 4
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("redirect", [False, True], ids=["direct", "lfs-redirect"])
def test_wrong_bytes_against_server_etag_are_discarded(hub, tmp_path, redirect):
    corrupt = bytearray(CONTENT)
    corrupt[1234] ^= 0xFF
    hub.add(REPO, "model.safetensors", Route(CONTENT, body=bytes(corrupt), redirect=redirect))
    with pytest.raises(ChecksumError, match="sha256"):
        download_file(REPO, "model.safetensors", settings=FAST)
    assert leftovers(tmp_path) == []
    # the server is fixed: the next call downloads the right file, nothing stale is trusted
    hub.routes[(REPO, "model.safetensors")].body = None
    assert_cached(download_file(REPO, "model.safetensors", settings=FAST), tmp_path)


def test_wrong_bytes_against_pinned_sha256(hub, tmp_path):
    hub.add(REPO, "model.safetensors", Route(b"x" * len(CONTENT), etag=False))
    with pytest.raises(ChecksumError, match="expected " + hashlib.sha256(CONTENT).hexdigest()):
        download_file(REPO, "model.safetensors", sha256=hashlib.sha256(CONTENT).hexdigest(), settings=FAST)
    assert leftovers(tmp_path) == []


def test_pinned_sha_that_the_server_contradicts_fails_before_downloading(hub, tmp_path):
    hub.add(REPO, "model.safetensors", Route(CONTENT))
    with pytest.raises(ChecksumError, match="server's file has sha256"):
        download_file(REPO, "model.safetensors", sha256="0" * 64, settings=FAST)
    assert leftovers(tmp_path) == []


def test_wrong_size_is_refused(hub, tmp_path):
    hub.add(REPO, "model.safetensors", Route(CONTENT, etag=False))
    with pytest.raises(ChecksumError, match="bytes"):
        download_file(REPO, "model.safetensors", size=len(CONTENT) + 1, settings=FAST)
    assert leftovers(tmp_path) == []


def test_cached_file_with_a_different_pinned_sha_is_not_trusted(hub, tmp_path):
    hub.add(REPO, "model.safetensors", Route(b"old version", etag=False))
    download_file(REPO, "model.safetensors", settings=FAST)
    hub.routes[(REPO, "model.safetensors")] = Route(CONTENT)
    path = download_file(REPO, "model.safetensors", sha256=hashlib.sha256(CONTENT).hexdigest(), settings=FAST)
    assert path.read_bytes() == CONTENT


def test_stall_past_read_timeout_resumes(hub, tmp_path):
    hub.add(REPO, "model.safetensors", Route(CONTENT, stall_after=150_000, stalls=1, stall_seconds=1.5))
    start = time.monotonic()
    path = download_file(REPO, "model.safetensors", settings=FAST)
    assert time.monotonic() - start < 5
    assert_cached(path, tmp_path)
    resumed = hub.requests_for("model.safetensors")[1].headers.get("Range")
    assert resumed is not None and 0 < int(resumed.split("=")[1].rstrip("-")) <= 150_000


def test_stall_before_the_response_is_a_retried_timeout(hub, tmp_path):
    # FAST's 0.5 s read timeout can expire on a healthy request when the machine is loaded; the
    # exact request count needs a timeout well above scheduling noise and a stall well above it
    patient = dataclasses.replace(FAST, read_timeout=2.0)
    hub.add(REPO, "model.safetensors", Route(CONTENT, stall_headers=1, stall_seconds=4.0))
    path = download_file(REPO, "model.safetensors", settings=patient)
    assert_cached(path, tmp_path)
    assert len(hub.requests_for("model.safetensors")) == 2


def test_server_that_always_stalls_gives_a_clear_error(hub, tmp_path):
    hub.add(REPO, "model.safetensors", Route(CONTENT, stall_after=0, stalls=100, stall_seconds=1.0))
    settings = DownloadSettings(read_timeout=0.3, max_retries=1, backoff=0.01, progress=False)
    start = time.monotonic()
    with pytest.raises(DownloadError, match="could not download org/model/model.safetensors"):
        download_file(REPO, "model.safetensors", settings=settings)
    assert time.monotonic() - start < 5
    assert leftovers(tmp_path) == []


def test_404_names_repo_and_file(hub, tmp_path):
    with pytest.raises(ModelNotFoundError) as err:
        download_file(REPO, "missing.safetensors", settings=FAST)
    assert "org/model/missing.safetensors" in str(err.value) and "404" in str(err.value)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("status", [401, 403])
def test_gated_model_says_to_set_hf_token(hub, tmp_path, status):
    hub.add(REPO, "model.safetensors", Route(CONTENT, status=status))
    with pytest.raises(GatedModelError, match="gated.*HF_TOKEN"):
        download_file(REPO, "model.safetensors", settings=FAST)
    assert len(hub.requests_for("model.safetensors")) == 1, "an auth failure must not be retried"
    assert leftovers(tmp_path) == []


def test_hf_token_is_sent_as_bearer(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    hub.add(REPO, "config.json", Route(b"{}"))
    download_file(REPO, "config.json", settings=FAST)
    assert hub.requests_for("config.json")[0].headers["Authorization"] == "Bearer hf_secret"


def test_offline(hub, tmp_path, monkeypatch):
    hub.add(REPO, "config.json", Route(b"{}"))
    monkeypatch.setenv("AXON_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="AXON_HUB_OFFLINE.*not in the cache"):
        download_file(REPO, "config.json", settings=FAST)
    assert hub.log == []
    monkeypatch.delenv("AXON_HUB_OFFLINE")
    path = download_file(REPO, "config.json", settings=FAST)
    monkeypatch.setenv("AXON_HUB_OFFLINE", "1")
    assert download_file(REPO, "config.json", settings=FAST) == path
    with pytest.raises(OfflineError):
        download_file(REPO, "config.json", force=True, settings=FAST)


def test_environment_is_read_at_call_time(hub, tmp_path, monkeypatch):
    hub.add(REPO, "config.json", Route(b"{}"))
    first = download_file(REPO, "config.json", settings=FAST)
    monkeypatch.setenv("AXON_HUB_CACHE", str(tmp_path / "other"))
    second = download_file(REPO, "config.json", settings=FAST)
    assert first != second and str(second).startswith(str(tmp_path / "other"))


def test_bad_endpoint_is_one_clear_error(hub, monkeypatch):
    monkeypatch.setenv("AXON_HUB_ENDPOINT", "notascheme://nowhere")
    with pytest.raises(DownloadError, match="AXON_HUB_ENDPOINT"):
        download_file(REPO, "config.json", settings=FAST)


@pytest.mark.parametrize("repo_id, filename, revision", [
    ("../../etc", "passwd", "main"),
    ("org/../x", "a", "main"),
    ("a--b/c", "a", "main"),
    ("org/model/extra", "a", "main"),
    ("/abs", "a", "main"),
    (REPO, "../../outside", "main"),
    (REPO, "/etc/passwd", "main"),
    (REPO, "a//b", "main"),
    (REPO, "a\\b", "main"),
    (REPO, "", "main"),
    (REPO, "config.json", "../../x"),
    (REPO, "config.json", "/main"),
])
def test_path_traversal_is_refused_before_any_request(hub, tmp_path, repo_id, filename, revision):
    with pytest.raises(HubInputError):
        download_file(repo_id, filename, revision=revision, settings=FAST)
    assert hub.log == []
    assert not (tmp_path / "cache").exists()


def test_invalid_sha256_is_refused(hub):
    with pytest.raises(HubInputError, match="64 hex"):
        download_file(REPO, "config.json", sha256="abc", settings=FAST)


def test_symlink_failure_falls_back_to_a_link_or_copy(hub, tmp_path, monkeypatch):
    def no_symlinks(*args, **kwargs):
        raise OSError("symlinks not supported here")
    monkeypatch.setattr(os, "symlink", no_symlinks)
    hub.add(REPO, "model.safetensors", Route(CONTENT))
    path = download_file(REPO, "model.safetensors", settings=FAST)
    assert not path.is_symlink() and path.read_bytes() == CONTENT
    [cached] = scan_cache()
    assert cached.repo_id == REPO and cached.size_bytes == len(CONTENT), "a hard link is counted once"
    n = len(hub.log)
    assert download_file(REPO, "model.safetensors", sha256=hashlib.sha256(CONTENT).hexdigest(),
                         settings=FAST) == path
    assert len(hub.log) == n


def test_existing_huggingface_hub_cache_is_used_without_downloading(hub, tmp_path, monkeypatch):
    hf = tmp_path / "hf"
    repo = hf / "models--org--model"
    sha = hashlib.sha256(CONTENT).hexdigest()
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / sha).write_bytes(CONTENT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    os.symlink(f"../../blobs/{sha}", repo / "snapshots" / COMMIT / "model.safetensors")
    monkeypatch.setenv("HF_HUB_CACHE", str(hf))
    path = download_file(REPO, "model.safetensors", sha256=sha, settings=FAST)
    assert hub.log == []
    assert path.read_bytes() == CONTENT
    assert path == cache_dir(tmp_path) / "snapshots" / COMMIT / "model.safetensors"
    # a pinned sha that does not match the huggingface_hub copy means: download ours
    hub.add(REPO, "model.safetensors", Route(b"new", etag=False))
    newer = download_file(REPO, "model.safetensors", sha256=hashlib.sha256(b"new").hexdigest(), settings=FAST)
    assert newer.read_bytes() == b"new" and (repo / "blobs" / sha).read_bytes() == CONTENT


def test_server_without_commit_header_uses_the_revision_folder(hub, tmp_path):
    hub.add(REPO, "config.json", Route(b"{}", commit=None, etag=False))
    path = download_file(REPO, "config.json", revision="v1.0", settings=FAST)
    assert path.relative_to(cache_dir(tmp_path)).parts == ("snapshots", "v1.0", "config.json")
    n = len(hub.log)
    assert download_file(REPO, "config.json", revision="v1.0", settings=FAST) == path
    assert len(hub.log) == n


def test_hub_errors_are_llm_errors():
    for cls in (ChecksumError, DownloadError, GatedModelError, ModelNotFoundError, OfflineError, HubInputError):
        assert issubclass(cls, LLMError)


# -- several processes -------------------------------------------------------------------------

_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from axon_llm.hub import DownloadSettings, download_file
    go, ready = Path(sys.argv[1]), Path(sys.argv[2])
    ready.touch()                       # imported: tell the parent, then wait for the start signal
    deadline = time.monotonic() + 30
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    settings = DownloadSettings(read_timeout=5, backoff=0.01, max_backoff=0.05, chunk_size=16384, progress=False)
    print(download_file("org/model", "model.safetensors", settings=settings))
""")


def _child_env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_concurrent_processes_download_once(hub, tmp_path):
    # slow enough (about 1 s) that every process asks while the first is still downloading
    hub.add(REPO, "model.safetensors", Route(CONTENT, chunk=32 * 1024, chunk_delay=0.06))
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(4)]
    children = [subprocess.Popen([sys.executable, "-c", _CHILD, str(go), str(r)], env=_child_env(tmp_path),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in ready]
    deadline = time.monotonic() + 30
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.01)   # every child has imported and waits on the go file: they start together
    go.touch()
    outputs = [c.communicate(timeout=60) for c in children]
    assert all(c.returncode == 0 for c in children), [err for _, err in outputs]
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1
    assert_cached(Path(paths.pop()), tmp_path)
    assert hub.bodies["model.safetensors"] == 1, "concurrent processes must download the file once"
    assert len(hub.requests_for("model.safetensors")) == 1


_KILLABLE = textwrap.dedent("""
    from axon_llm.hub import DownloadSettings, download_file
    download_file("org/model", "model.safetensors",
                  settings=DownloadSettings(read_timeout=5, chunk_size=16384, progress=False))
""")


def test_killed_download_leaves_nothing_trusted_and_rerun_succeeds(hub, tmp_path):
    big = os.urandom(1 << 20)
    hub.add(REPO, "model.safetensors", Route(big, chunk=16 * 1024, chunk_delay=0.05))   # about 3 s
    child = subprocess.Popen([sys.executable, "-c", _KILLABLE], env=_child_env(tmp_path),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    blobs = cache_dir(tmp_path) / "blobs"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:   # wait until it has written part of the file
        partial = list(blobs.glob("*.incomplete")) if blobs.is_dir() else []
        if partial and partial[0].stat().st_size > 100_000:
            break
        time.sleep(0.02)
    else:
        child.kill()
        pytest.fail("the child never started writing")
    child.kill()
    child.wait(timeout=10)
    assert not (cache_dir(tmp_path) / "snapshots").exists(), "a killed download must not reach snapshots/"
    assert [p.suffix for p in blobs.iterdir()] == [".incomplete"]
    hub.routes[(REPO, "model.safetensors")].chunk_delay = 0.0
    path = download_file(REPO, "model.safetensors", settings=FAST)
    assert path.read_bytes() == big
    assert not list(blobs.glob("*.incomplete")), "the stale temp file of the killed process is cleaned up"


def test_unwritable_cache_is_a_clear_error(hub, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("AXON_HUB_CACHE", str(blocker / "cache"))
    hub.add(REPO, "config.json", Route(b"{}"))
    with pytest.raises(DownloadError, match="could not store org/model/config.json"):
        download_file(REPO, "config.json", settings=FAST)


def test_progress_bar_goes_to_stderr(hub, capsys):
    hub.add(REPO, "model.safetensors", Route(CONTENT))
    settings = DownloadSettings(read_timeout=2, chunk_size=16 * 1024, progress=True)
    download_file(REPO, "model.safetensors", settings=settings)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "model.safetensors" in captured.err and "512k" in captured.err.lower()


def test_retry_after_forms_and_backoff_caps():
    import email.utils

    from axon_llm.hub.download import _retry_delay

    class Resp:
        def __init__(self, value):
            self.headers = {"Retry-After": value} if value is not None else {}

    settings = DownloadSettings(backoff=1.0, max_backoff=4.0, max_retry_after=10.0)
    assert _retry_delay(Resp("3"), 1, settings) == 3.0
    assert _retry_delay(Resp("999"), 1, settings) == 10.0                  # capped
    soon = email.utils.formatdate(time.time() + 5, usegmt=True)           # an HTTP date
    assert 3.0 <= _retry_delay(Resp(soon), 1, settings) <= 5.5
    assert _retry_delay(Resp("garbage"), 1, settings) <= 1.25            # falls back to backoff
    assert 4.0 <= _retry_delay(Resp(None), 10, settings) <= 5.0            # doubling stops at max_backoff
