"""Downloads that never leave a corrupt file where a later call would trust it.

One file is fetched like this (``download_file``):

1. Look in the cache (ours, then any huggingface_hub cache); a hit costs no network.
2. Take a per-file ``fcntl`` lock, and look again: another process may have finished the
   same file while we waited, in which case we use its copy (so N processes download once).
3. Stream the body into a unique ``.incomplete`` temp file in ``blobs/`` while hashing it.
   A cut connection or a read timeout resumes from the bytes already written with an
   HTTP ``Range`` request; a server that answers ``200`` to a ``Range`` request (it ignored
   it) makes us start the file over. 408/429/5xx are retried with exponential backoff,
   honouring ``Retry-After``.
4. Check the size (pinned, or announced by the server) and the sha256 (pinned, or the
   server's LFS ETag when that is a sha256). On mismatch the temp file is deleted and
   :class:`~axon_llm.errors.ChecksumError` raised.
5. ``os.replace`` the temp file to ``blobs/<sha256>`` and link ``snapshots/<commit>/<filename>``
   to it, also atomically.

Anything that fails deletes its temp file; a killed process leaves one, which the next
download of that file removes while holding the lock.
"""

from __future__ import annotations

import email.utils
import hashlib
import importlib.util
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from axon_llm.errors import (
    ChecksumError, DownloadError, GatedModelError, HubError, ModelNotFoundError, OfflineError,
)
from axon_llm.hub.cache import RepoCache, cache_root, cached_sha256, hf_cache_roots, place_file
from axon_llm.hub.names import (
    is_commit, is_sha256, validate_filename, validate_repo_id, validate_revision, validate_sha256,
)
from axon_llm.hub.registry import PretrainedLLM, get_model

if TYPE_CHECKING:
    import requests

__all__ = [
    "DownloadSettings", "default_size_cap", "download_file", "download_llm_weights", "resolve_local", "resolve_model_path",
    "hub_endpoint", "hub_offline",
]

DEFAULT_ENDPOINT = "https://huggingface.co"
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def _network_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(fatal, transient) exception types of ``requests``. It is imported here, on the first
    download, not with the package: loading a model from disk never pays its ~14 MB."""
    import requests
    import urllib3

    fatal = (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema, requests.exceptions.MissingSchema)
    return fatal, (requests.RequestException, urllib3.exceptions.HTTPError)


@dataclass(frozen=True)
class DownloadSettings:
    """Timeouts, retries and backoff of a download (tests pass short ones).

    ``max_retries`` bounds consecutive failed attempts that received no bytes; an attempt
    that made progress before the connection was cut resets the count (the file is finite,
    so this still ends). Delays double from ``backoff`` up to ``max_backoff``; a server's
    ``Retry-After`` is honoured up to ``max_retry_after`` seconds each and ``max_total_wait``
    seconds in all. ``progress=None`` shows the tqdm bar on stderr only when stderr is a terminal.

    Bounds against a mirror that never finishes: one file must arrive within ``total_timeout``
    seconds plus one second per ``min_speed`` bytes of its size (a server trickling a byte every
    few seconds is cut off, however it resets the read timeout); a file whose size and sha256
    are not pinned may have at most ``max_unpinned_bytes`` (None: ``$AXON_HUB_MAX_UNPINNED_BYTES``,
    else :func:`default_size_cap` of its name: 256 MiB for text files such as config.json).
    """

    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_retries: int = 5
    backoff: float = 1.0
    max_backoff: float = 30.0
    max_retry_after: float = 120.0
    max_total_wait: float = 300.0
    total_timeout: float = 600.0
    min_speed: float = 64 * 1024
    max_unpinned_bytes: int | None = None
    chunk_size: int = 1 << 20
    progress: bool | None = None


_TEXT_SUFFIXES = (".json", ".txt", ".jinja", ".md", ".model", ".py", ".yaml", ".yml", ".tiktoken", ".vocab")


def default_size_cap(filename: str) -> int:
    """The largest unpinned file accepted by default: 256 MiB for text files (config.json,
    tokenizer.json, templates ...), 1 TiB for weights."""
    return 256 << 20 if filename.lower().endswith(_TEXT_SUFFIXES) else 1 << 40


def _size_cap(filename: str, settings: DownloadSettings) -> int:
    if settings.max_unpinned_bytes is not None:
        return settings.max_unpinned_bytes
    env = os.environ.get("AXON_HUB_MAX_UNPINNED_BYTES", "").strip()
    if env.isdigit():
        return int(env)
    return default_size_cap(filename)


def hub_endpoint() -> str:
    """``$AXON_HUB_ENDPOINT`` without a trailing slash, default https://huggingface.co."""
    return (os.environ.get("AXON_HUB_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_offline() -> bool:
    """True when ``AXON_HUB_OFFLINE`` (or huggingface_hub's ``HF_HUB_OFFLINE``) is set to a true value."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("AXON_HUB_OFFLINE", "HF_HUB_OFFLINE"))


def _hub_token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def file_url(repo_id: str, filename: str, revision: str = "main", endpoint: str | None = None) -> str:
    """``{endpoint}/{repo_id}/resolve/{revision}/{filename}``, each part URL-quoted.

    ``endpoint`` defaults to :func:`hub_endpoint` (``$AXON_HUB_ENDPOINT``)."""
    base = endpoint.rstrip("/") if endpoint else hub_endpoint()
    return f"{base}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(filename)}"


# -- the cache side ---------------------------------------------------------------------------


def _trusted(path: Path | None, sha256: str | None, size: int | None) -> bool:
    if path is None:
        return False
    if size is not None and path.stat().st_size != size:
        return False
    return sha256 is None or cached_sha256(path) == sha256


def _from_cache(repo: RepoCache, revision: str, filename: str, sha256: str | None, size: int | None) -> Path | None:
    """A trusted cached copy, from our cache or adopted (linked) from a huggingface_hub cache."""
    ours = repo.find(revision, filename)
    if _trusted(ours, sha256, size):
        return ours
    here = os.path.realpath(repo.root)
    for hf_root in hf_cache_roots():
        if os.path.realpath(hf_root) == here:
            continue
        theirs = RepoCache(hf_root, repo.repo_id).find(revision, filename)
        if _trusted(theirs, sha256, size):
            folder = repo.snapshot_folder(revision) or RepoCache(hf_root, repo.repo_id).snapshot_folder(revision)
            target = repo.snapshot_path(folder, filename)
            place_file(target, Path(os.path.realpath(theirs)))
            repo.set_ref(revision, folder)
            return target
    return None


class _FileLock:
    """An exclusive ``fcntl.flock`` on a lock file, released when the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def __enter__(self) -> "_FileLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl
        except ImportError:    # no fcntl (Windows): downloads stay correct, only not deduplicated
            return self
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)   # closing the descriptor releases the flock
            self._fd = None


# -- the network side -------------------------------------------------------------------------


def _retry_delay(resp: requests.Response | None, failures: int, settings: DownloadSettings) -> float:
    """Seconds to wait before the next attempt: ``Retry-After`` if the server sent one, else backoff."""
    header = resp.headers.get("Retry-After") if resp is not None else None
    if header:
        try:
            delay = float(header)
        except ValueError:
            try:
                delay = email.utils.parsedate_to_datetime(header).timestamp() - time.time()
            except (TypeError, ValueError, IndexError, OverflowError):
                delay = None
        if delay is not None:
            return min(max(delay, 0.0), settings.max_retry_after)
    delay = min(settings.backoff * 2 ** max(failures - 1, 0), settings.max_backoff)
    return delay * (1.0 + 0.25 * random.random())   # jitter, so many clients do not retry in step


def _header(resp: requests.Response, name: str) -> str | None:
    """A header from the final response or any redirect before it (HF puts LFS metadata on the redirect)."""
    for r in (resp, *reversed(resp.history)):
        value = r.headers.get(name)
        if value:
            return value
    return None


def _etag_sha256(resp: requests.Response) -> str | None:
    """The sha256 the server vouches for: ``X-Linked-Etag`` or ``ETag`` when it is 64 hex digits."""
    for name in ("X-Linked-Etag", "ETag"):
        value = _header(resp, name)
        if value:
            value = value.strip()
            if value.startswith("W/"):
                value = value[2:]
            value = value.strip('"').lower()
            if is_sha256(value):
                return value
    return None


def _content_range(resp: requests.Response) -> tuple[int, int | None] | None:
    """(first byte, total size or None) from ``Content-Range: bytes a-b/total``."""
    value = resp.headers.get("Content-Range", "")
    try:
        _unit, spec = value.split(" ", 1)
        span, total = spec.split("/", 1)
        first = int(span.split("-", 1)[0])
        return first, (None if total.strip() == "*" else int(total))
    except ValueError:
        return None


@dataclass
class _Fetched:
    sha256: str
    size: int
    commit: str | None


class _PartialFile:
    """The temp file being written, the running sha256 of its bytes and the progress bar."""

    def __init__(self, out, bar) -> None:
        self.out, self.bar = out, bar
        self.restart()

    def restart(self) -> None:
        """Forget everything written so far (the server ignored our Range, or it no longer fits)."""
        self.out.seek(0)
        self.out.truncate()
        self.hasher = hashlib.sha256()
        self.written = 0
        self.bar.reset(total=self.bar.total)

    def write(self, chunk: bytes) -> None:
        self.out.write(chunk)
        self.hasher.update(chunk)
        self.written += len(chunk)
        self.bar.update(len(chunk))


@dataclass
class _Expected:
    """What the file must be: pinned by the caller, completed by what the server announces."""

    what: str
    sha256: str | None
    size: int | None
    server_sha256: str | None = None
    commit: str | None = None
    cap: int | None = None          # the most bytes an unpinned file may have

    def check_cap(self, nbytes: int) -> None:
        """An unpinned file larger than the cap fails (before its body when the size is announced)."""
        if self.cap is not None and nbytes > self.cap:
            raise DownloadError(f"{self.what}: the server's file has (at least) {nbytes} bytes, more than the "
                                f"{self.cap} allowed for a file whose size is not pinned "
                                "(DownloadSettings.max_unpinned_bytes / AXON_HUB_MAX_UNPINNED_BYTES)")

    def learn(self, resp: requests.Response, announced_size: int | None, bar) -> None:
        """Take the commit, LFS sha256 and size from a response; a contradiction with a pin fails now."""
        self.commit = self.commit or _header(resp, "X-Repo-Commit")
        self.server_sha256 = self.server_sha256 or _etag_sha256(resp)
        if self.sha256 and self.server_sha256 and self.server_sha256 != self.sha256:
            raise ChecksumError(f"{self.what}: the server's file has sha256 {self.server_sha256}, expected "
                                f"{self.sha256} (the repository changed, or the pinned checksum is wrong)")
        linked = _header(resp, "X-Linked-Size")
        if announced_size is None and linked and linked.isdigit():
            announced_size = int(linked)
        if announced_size is None:
            return
        self.check_cap(announced_size)
        if self.size is not None and announced_size != self.size:
            raise ChecksumError(f"{self.what}: the server's file has {announced_size} bytes, expected {self.size}")
        if self.size is None:
            self.size = announced_size
            bar.total = announced_size
            bar.refresh()


def _check_status(status: int, what: str, url: str) -> None:
    """Raise the error a final (non-retryable) status means; return for 200/206/retryable ones."""
    if status == 404:
        raise ModelNotFoundError(f"{what} was not found on the hub ({url} answered 404): "
                                 "check the repository id, the filename and the revision")
    if status in (401, 403):
        raise GatedModelError(
            f"{what} is gated or private ({url} answered {status}): accept its license on the "
            "model page and set HF_TOKEN to an access token (it is sent as a bearer token)")
    if status not in (200, 206, 416) and status not in _RETRY_STATUS:
        raise DownloadError(f"could not download {what}: {url} answered HTTP {status}")


class _Deadline:
    """The time by which one file must have arrived; :meth:`watch` cuts a response's connection
    when it passes, so a read that a trickling server keeps alive ends too."""

    def __init__(self, settings: DownloadSettings, what: str):
        self.start = time.monotonic()
        self.settings = settings
        self.what = what
        self.expired = False

    def at(self, nbytes: int) -> float:
        """The deadline for a file of ``nbytes`` (the larger of its announced size and what arrived)."""
        return self.start + self.settings.total_timeout + nbytes / max(self.settings.min_speed, 1.0)

    def left(self, nbytes: int) -> float:
        return self.at(nbytes) - time.monotonic()

    def error(self) -> DownloadError:
        return DownloadError(f"could not download {self.what}: it did not arrive within the deadline "
                             f"(DownloadSettings.total_timeout={self.settings.total_timeout:g} s plus one second "
                             f"per {self.settings.min_speed:g} bytes)")

    def check(self, nbytes: int) -> None:
        if self.expired or self.left(nbytes) <= 0:
            self.expired = True
            raise self.error()

    def watch(self, resp, nbytes: int):
        """A started timer that shuts the response's socket down at the deadline."""
        import socket
        import threading

        def cut():
            self.expired = True
            sock = getattr(getattr(resp.raw, "connection", None), "sock", None)
            if sock is None:   # a "Connection: close" response is detached from its connection
                sock = getattr(getattr(getattr(getattr(resp.raw, "_fp", None), "fp", None), "raw", None), "_sock", None)
            try:
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        timer = threading.Timer(max(self.left(nbytes), 0.0), cut)
        timer.daemon = True
        timer.start()
        return timer


def _attempt(session: requests.Session, url: str, headers: dict, part: _PartialFile, expected: _Expected,
             settings: DownloadSettings, deadline: _Deadline) -> tuple[str, requests.Response | None] | None:
    """One GET appended to ``part``. None when the file is complete, else (why, response) to retry."""
    if part.written:
        headers = {**headers, "Range": f"bytes={part.written}-"}
    deadline.check(part.written)
    timeout = (min(settings.connect_timeout, max(deadline.left(0), 0.01)), settings.read_timeout)
    with session.get(url, headers=headers, stream=True, timeout=timeout) as resp:
        timer = deadline.watch(resp, max(expected.size or 0, part.written))
        try:
            return _receive(resp, url, part, expected, settings, deadline)
        finally:
            timer.cancel()


def _receive(resp, url: str, part: _PartialFile, expected: _Expected, settings: DownloadSettings,
             deadline: _Deadline) -> tuple[str, requests.Response | None] | None:
    """Read one response into ``part`` (see :func:`_attempt`)."""
    status = resp.status_code
    _check_status(status, expected.what, url)
    if status in _RETRY_STATUS:
        return f"HTTP {status}", resp
    if status == 416:
        if not part.written:
            raise DownloadError(f"could not download {expected.what}: {url} answered HTTP 416")
        part.restart()                  # our Range no longer fits the file: start over
        return "HTTP 416 (range not satisfiable)", None
    if status == 200:
        if part.written:                # the server ignored our Range: the body is the whole file
            part.restart()
        length = resp.headers.get("Content-Length", "")
        announced = int(length) if length.isdigit() else None
    else:
        span = _content_range(resp)
        if span is None or span[0] != part.written:
            part.restart()
            return f"bad Content-Range {resp.headers.get('Content-Range')!r}", None
        announced = span[1]
    encoding = resp.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise DownloadError(f"could not download {expected.what}: {url} sent a compressed body "
                            f"(Content-Encoding: {encoding}) though only identity was accepted")
    expected.learn(resp, announced, part.bar)
    for chunk in resp.raw.stream(settings.chunk_size, decode_content=False):
        part.write(chunk)
        if expected.size is not None and part.written > expected.size:
            raise ChecksumError(f"{expected.what}: the server sent more than the expected "
                                f"{expected.size} bytes")
        expected.check_cap(part.written)
        deadline.check(max(expected.size or 0, part.written))
    if expected.size is not None and part.written < expected.size:
        import requests

        raise requests.ConnectionError(f"connection closed after {part.written} of {expected.size} bytes")
    return None


def _fetch(url: str, dest: Path, *, what: str, sha256: str | None, size: int | None,
           settings: DownloadSettings) -> _Fetched:
    """Stream ``url`` into ``dest`` with resume and retries, then verify size and sha256."""
    import requests
    from tqdm import tqdm

    fatal_errors, transient_errors = _network_errors()
    headers = {"Accept-Encoding": "identity", "User-Agent": "axon-llm"}
    token = _hub_token()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    pinned = sha256 is not None or size is not None
    expected = _Expected(what, sha256, size, cap=None if pinned else _size_cap(url.rsplit("/", 1)[-1], settings))
    deadline = _Deadline(settings, what)
    failures, last_error, waited = 0, None, 0.0
    disable = None if settings.progress is None else not settings.progress
    with requests.Session() as session, open(dest, "wb") as out, \
            tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=what.split(" ")[0].split("/")[-1],
                 file=sys.stderr, disable=disable, leave=False) as bar:
        part = _PartialFile(out, bar)
        while True:
            if failures > settings.max_retries:
                raise DownloadError(f"could not download {what} from {url} after {settings.max_retries} retries: "
                                    f"{last_error}")
            before = part.written
            try:
                retry = _attempt(session, url, headers, part, expected, settings, deadline)
            except fatal_errors as exc:        # a malformed endpoint URL: retrying cannot help
                raise DownloadError(f"could not download {what}: bad URL {url!r} ({exc}); "
                                    "check AXON_HUB_ENDPOINT") from exc
            except transient_errors as exc:    # cut connection, read timeout, refused connection
                if deadline.expired:           # the watchdog cut it
                    raise deadline.error() from None
                retry = (f"{type(exc).__name__}: {exc}", None)
                if part.written > before:    # it made progress: resume from there at once
                    failures, last_error = 0, retry[0]
                    continue
            if retry is None:
                break
            last_error, resp = retry
            failures += 1
            if failures <= settings.max_retries:
                delay = _retry_delay(resp, failures, settings)
                if waited + delay > settings.max_total_wait:
                    raise DownloadError(f"could not download {what}: the server asked to wait {waited + delay:.0f} s "
                                        f"in all, more than DownloadSettings.max_total_wait="
                                        f"{settings.max_total_wait:g} s ({last_error})")
                if delay >= deadline.left(max(expected.size or 0, part.written)):
                    raise deadline.error()
                waited += delay
                time.sleep(delay)
        out.flush()
        os.fsync(out.fileno())
    if part.written == 0 and size != 0:          # only a file pinned to 0 bytes may be empty
        raise DownloadError(f"could not download {what}: {url} sent an empty body")

    digest = part.hasher.hexdigest()
    if expected.size is not None and part.written != expected.size:
        raise ChecksumError(f"{what}: received {part.written} bytes, expected {expected.size}")
    want = expected.sha256 or expected.server_sha256
    if want and digest != want:
        raise ChecksumError(f"{what}: downloaded bytes have sha256 {digest}, expected {want}; "
                            "the file was discarded")
    return _Fetched(digest, part.written, expected.commit)


# -- the public functions ---------------------------------------------------------------------


def download_file(repo_id: str, filename: str, *, revision: str = "main", sha256: str | None = None,
                  force: bool = False, size: int | None = None, endpoint: str | None = None,
                  settings: DownloadSettings | None = None) -> Path:
    """Fetch one file of a hub repository into the cache and return its path.

    The path is ``<cache>/models--org--name/snapshots/<commit>/<filename>``. A cached copy
    (in our cache or a huggingface_hub cache) whose size/sha256 match what is expected is
    returned without any network access; ``force=True`` downloads again. ``sha256`` and
    ``size`` pin the expected content; without them the server's LFS sha256 and announced
    size are checked. ``endpoint`` overrides ``$AXON_HUB_ENDPOINT`` for this file (a model
    hosted elsewhere). Raises ModelNotFoundError (404), GatedModelError (401/403),
    OfflineError (``AXON_HUB_OFFLINE=1`` and not cached), DownloadError (retries exhausted),
    ChecksumError (wrong size or sha256: nothing is kept).
    """
    validate_repo_id(repo_id)
    validate_filename(filename)
    validate_revision(revision)
    sha256 = validate_sha256(sha256)
    repo = RepoCache(cache_root(), repo_id)
    what = f"{repo_id}/{filename} (revision {revision})"
    try:
        return _download_file(repo, filename, revision, sha256, size, force, settings or DownloadSettings(), what,
                              endpoint)
    except HubError:
        repo.remove_if_empty()   # a failed first download leaves no empty repository folder behind
        raise
    except OSError as exc:   # disk full, permissions, read-only cache: say where, never a bare traceback
        repo.remove_if_empty()
        raise DownloadError(f"could not store {what} in the cache {repo.root}: {exc}") from exc


def _download_file(repo: RepoCache, filename: str, revision: str, sha256: str | None, size: int | None,
                   force: bool, settings: DownloadSettings, what: str, endpoint: str | None) -> Path:
    if not force:
        hit = _from_cache(repo, revision, filename, sha256, size)
        if hit is not None:
            return hit
    if hub_offline():
        raise OfflineError(f"AXON_HUB_OFFLINE is set and {what} is not in the cache {repo.root}; "
                           "unset it to download, or copy the file into the cache")

    with _FileLock(repo.lock_path(revision, filename)):
        if not force:   # another process may have fetched it while we waited for the lock
            hit = _from_cache(repo, revision, filename, sha256, size)
            if hit is not None:
                return hit
        repo.blobs.mkdir(parents=True, exist_ok=True)
        repo.remove_stale_temps(revision, filename)
        tmp = repo.temp_path(revision, filename)
        try:
            fetched = _fetch(file_url(repo.repo_id, filename, revision, endpoint), tmp, what=what, sha256=sha256, size=size,
                             settings=settings)
            blob = repo.store_blob(tmp, fetched.sha256)
        finally:
            tmp.unlink(missing_ok=True)   # a failure keeps no partial file (a success already moved it)
        if is_commit(revision):
            folder = revision
        elif fetched.commit and is_commit(fetched.commit.lower()):
            folder = fetched.commit.lower()
        else:   # a server that does not say which commit it served: name the folder after the revision
            folder = repo.snapshot_folder(revision) or revision.replace("/", "--")
        target = repo.snapshot_path(folder, filename)
        place_file(target, blob)
        repo.set_ref(revision, folder)
        return target


def resolve_local(name: str | PretrainedLLM) -> Path | None:
    """The model's files inside its installed PyPI package, found without importing it; else None.

    For ``smollm2-135m-instruct`` this is the package folder holding the ``.gguf``; for
    ``all-minilm-l6-v2`` the package's ``model/`` folder (HF layout).
    """
    model = get_model(name)
    if model.package is None:
        return None
    try:
        spec = importlib.util.find_spec(model.package.module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    if model.package.assemble:
        return _assembled(model)
    for location in spec.submodule_search_locations:
        path = Path(location) / model.package.path
        if path.exists():
            return path if path.is_dir() else path.parent
    return None


def _assembled(model: PretrainedLLM) -> Path:
    """The folder holding the file a chunked package assembles, assembled into the hub cache the
    first time (the package's ``assemble(path)`` writes it and checks its sha256; here it goes to
    a temporary name first, so an interrupted run never leaves a partial file under the real one)."""
    import importlib

    target = cache_root() / "packages" / model.name / model.package.path
    pinned = next((f.size for f in model.files if f.filename == model.package.path), None)
    if target.is_file() and (pinned is None or target.stat().st_size == pinned):
        return target.parent
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".part-{os.getpid()}")
    print(f"assembling {model.package.path} from the {model.package.module} package into {target.parent} "
          "(once)", file=sys.stderr)
    try:
        importlib.import_module(model.package.module).assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    except ValueError as e:
        raise ChecksumError(f"{model.name}: the assembled file failed its check ({e}); reinstall "
                            f"{model.package.pip}") from None
    except (OSError, ImportError, AttributeError) as e:
        raise DownloadError(f"{model.name}: could not assemble {model.package.path} from {model.package.module} "
                            f"({e})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target.parent


def _install_hint(model: PretrainedLLM) -> str:
    if model.package is None:
        return ""
    return f"; or install the model's package to use it offline: {model.package.install_command}"


def download_llm_weights(name: str | PretrainedLLM, force: bool = False, *,
                         settings: DownloadSettings | None = None) -> Path:
    """The folder holding a registry model's files, downloading what is missing.

    A model shipped by an installed package resolves to the package's folder with no
    network (unless ``force=True``, which downloads it from the hub again). Otherwise every
    file listed in the registry is fetched with :func:`download_file`; the first one fixes
    the commit, so all files come from the same snapshot folder, which is returned.
    """
    model = get_model(name)
    if not force:
        local = resolve_local(model)
        if local is not None:
            return local
    repo = RepoCache(cache_root(), model.repo_id)
    revision, folder = model.revision, None
    try:
        for hub_file in model.files:
            if not hub_file.required and folder is not None and not force \
                    and repo.known_absent(folder.name, hub_file.filename):
                continue
            try:
                path = download_file(model.repo_id, hub_file.filename, revision=revision, sha256=hub_file.sha256,
                                     size=hub_file.size, force=force, endpoint=model.endpoint,
                                     settings=settings)
            except (ModelNotFoundError, OfflineError):
                if hub_file.required:
                    raise
                if folder is not None and not hub_offline():
                    try:
                        repo.mark_absent(folder.name, hub_file.filename)
                    except OSError:
                        pass   # only an optimisation: the next call asks the server again
                continue
            if folder is None:   # the first file fixes the commit every other file comes from
                folder = path.parents[len(Path(hub_file.filename).parts) - 1]
                if is_commit(folder.name):
                    revision = folder.name
    except HubError as exc:
        hint = _install_hint(model)
        if hint and not isinstance(exc, ChecksumError):
            raise type(exc)(f"{exc}{hint}") from exc
        raise
    if folder is None:
        raise ModelNotFoundError(f"none of the files of {model.name!r} ({model.repo_id}) exist on the hub")
    return folder


def resolve_model_path(name: str | PretrainedLLM, force: bool = False, *,
                       settings: DownloadSettings | None = None) -> Path:
    """What ``from_pretrained`` should open for a registry name: the ``.gguf`` file of a GGUF model,
    the HF-layout folder otherwise (from the installed package when there is one)."""
    model = get_model(name)
    folder = download_llm_weights(model, force=force, settings=settings)
    if model.weights is not None:
        return folder / model.weights
    return folder
