"""Mirrors that never finish or send what nobody asked for: a size cap for unpinned files, no empty
or compressed bodies, a deadline per file, a cap on total Retry-After, no empty repo folders left."""

from __future__ import annotations

import dataclasses
import time

import pytest

from axon_llm.errors import ChecksumError, DownloadError, HubError
from axon_llm.hub import download_file, scan_cache
from axon_llm.hub.download import DownloadSettings, default_size_cap
from tests.axon_llm.hub_server import FAST, Route, isolated_hub

REPO = "org/model"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with isolated_hub(tmp_path, monkeypatch) as server:
        yield server


def repo_folders(tmp_path):
    root = tmp_path / "cache"
    return sorted(p.name for p in root.glob("models--*")) if root.is_dir() else []


def assert_nothing_kept(tmp_path):
    assert repo_folders(tmp_path) == []
    assert scan_cache() == []


def fails_within(seconds: float, match: str, settings: DownloadSettings, tmp_path) -> None:
    """config.json fails with ``match`` in under ``seconds`` and leaves nothing in the cache."""
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=match):
        download_file(REPO, "config.json", settings=settings)
    assert time.monotonic() - t0 < seconds
    assert_nothing_kept(tmp_path)


# -- size caps on unpinned files ------------------------------------------------------------------

@pytest.mark.parametrize("route", [
    Route(b"{" + b" " * 300_000 + b"}"),                                   # announced too large
    Route(b"{" + b" " * 300_000 + b"}", etag=False, no_length=True),       # not announced: cut while reading
    Route(b"x" * 300_000, redirect=True),                                  # announced on the redirect
])
def test_unpinned_file_larger_than_the_cap_fails(hub, tmp_path, route):
    hub.add(REPO, "config.json", route)
    capped = dataclasses.replace(FAST, max_unpinned_bytes=100_000)
    with pytest.raises(DownloadError, match="more than the 100000 allowed"):
        download_file(REPO, "config.json", settings=capped)
    assert_nothing_kept(tmp_path)


def test_cap_comes_from_the_environment_and_pinned_files_ignore_it(hub, tmp_path, monkeypatch):
    body = b"y" * 50_000
    hub.add(REPO, "tokenizer.json", Route(body))
    monkeypatch.setenv("AXON_HUB_MAX_UNPINNED_BYTES", "1000")
    with pytest.raises(DownloadError, match="1000 allowed"):
        download_file(REPO, "tokenizer.json", settings=FAST)
    path = download_file(REPO, "tokenizer.json", settings=FAST, size=len(body))   # pinned: no cap
    assert path.read_bytes() == body


def test_default_caps_by_kind_of_file():
    assert default_size_cap("config.json") == default_size_cap("chat_template.jinja") == 256 << 20
    assert default_size_cap("model.safetensors") > 1 << 30
    assert DownloadSettings().max_unpinned_bytes is None


# -- bodies nobody asked for ----------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"{}" * 100_000, b"\x00" * 200_000, b"abc"])
def test_gzip_body_is_refused(hub, tmp_path, content):
    hub.add(REPO, "config.json", Route(content, gzip=True, etag=False))
    with pytest.raises(DownloadError, match="Content-Encoding: gzip"):
        download_file(REPO, "config.json", settings=FAST)
    assert_nothing_kept(tmp_path)
    assert all(r.headers.get("Accept-Encoding") == "identity" for r in hub.requests_for("config.json"))


@pytest.mark.parametrize("route", [Route(b"", etag=False), Route(b"", etag=False, redirect=True),
                                   Route(b"", etag=False, no_length=True)])
def test_empty_body_is_refused(hub, tmp_path, route):
    hub.add(REPO, "config.json", route)
    with pytest.raises(DownloadError, match="empty body"):
        download_file(REPO, "config.json", settings=FAST)
    assert_nothing_kept(tmp_path)


# -- deadlines ------------------------------------------------------------------------------------

@pytest.mark.parametrize("route", [
    Route(b"z" * 400, chunk=1, chunk_delay=0.05),                        # a byte every 50 ms, with a length
    Route(b"z" * 400, chunk=1, chunk_delay=0.05, no_length=True, etag=False),
    Route(b"z" * 400, chunk=1, chunk_delay=0.05, redirect=True),
])
def test_trickling_server_hits_the_total_deadline(hub, tmp_path, route):
    hub.add(REPO, "config.json", route)
    fails_within(4.0, "deadline", dataclasses.replace(FAST, total_timeout=1.0, min_speed=1e9), tmp_path)


@pytest.mark.parametrize("retry_after,statuses", [("2", [503] * 5), ("1", [429] * 5), ("3", [503, 429, 503])])
def test_total_retry_after_is_capped(hub, tmp_path, retry_after, statuses):
    hub.add(REPO, "config.json", Route(b"{}", fail_first=list(statuses), retry_after=retry_after))
    fails_within(3.5, "max_total_wait", dataclasses.replace(FAST, max_retries=10, max_total_wait=2.5), tmp_path)


def test_retry_after_within_the_caps_still_succeeds(hub, tmp_path):
    hub.add(REPO, "config.json", Route(b"{}", fail_first=[503], retry_after="1"))
    assert download_file(REPO, "config.json", settings=FAST).read_bytes() == b"{}"


# -- no empty repository folders ------------------------------------------------------------------

@pytest.mark.parametrize("route", [Route(b"x", status=404), Route(b"x", status=500), Route(b"x", status=403),
                                   Route(b"abc", body=b"abd")])
def test_failed_first_download_leaves_no_repo_folder(hub, tmp_path, route):
    hub.add(REPO, "model.safetensors", route)
    with pytest.raises(HubError):
        download_file(REPO, "model.safetensors", settings=FAST)
    assert_nothing_kept(tmp_path)


def test_failed_download_keeps_a_repo_that_has_other_files(hub, tmp_path):
    hub.add(REPO, "config.json", Route(b"{}"))
    download_file(REPO, "config.json", settings=FAST)
    hub.add(REPO, "model.safetensors", Route(b"abc", body=b"abd"))
    with pytest.raises(ChecksumError):
        download_file(REPO, "model.safetensors", settings=FAST)
    assert repo_folders(tmp_path) == ["models--org--model"]
    assert [r.repo_id for r in scan_cache()] == [REPO]
