"""A misbehaving hub for the download tests: a threaded HTTP server on 127.0.0.1.

It serves ``/{repo_id}/resolve/{revision}/{filename}`` like huggingface.co, and each file
(a :class:`Route`) can be told to misbehave: answer a status first (503 with
Retry-After), cut the connection mid-body, stall past the client's read timeout, ignore
``Range``, send wrong bytes, redirect to a "CDN" like the real hub does for LFS files,
always answer 404/401/403, send a gzip body nobody asked for, send no Content-Length,
or trickle the body a byte at a time (``chunk=1`` with ``chunk_delay``). Every request is logged so tests can assert what the
client sent (Range, Authorization) and how many bodies were served.
"""

from __future__ import annotations

import gzip
import hashlib
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

from axon_llm.hub import DownloadSettings

COMMIT = "0123456789abcdef0123456789abcdef01234567"

# short timeouts and backoffs so the whole hub suite runs in seconds
FAST = DownloadSettings(connect_timeout=2.0, read_timeout=0.5, max_retries=3, backoff=0.01, max_backoff=0.05,
                        max_retry_after=3.0, chunk_size=16 * 1024, progress=False)


@contextmanager
def isolated_hub(tmp_path, monkeypatch):
    """A fresh server as the endpoint plus an empty cache under ``tmp_path``; no real
    huggingface_hub cache, token or offline flag of the machine leaks into the test."""
    monkeypatch.setenv("AXON_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-hf-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-hf-home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AXON_HUB_OFFLINE", "HF_HUB_OFFLINE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    with HubServer() as server:
        monkeypatch.setenv("AXON_HUB_ENDPOINT", server.url)
        yield server


@dataclass
class Route:
    """How the server answers for one file. Counters (``cuts``, ``stalls``, ``fail_first``) are consumed."""

    content: bytes
    status: int | None = None                 # always answer this status (404, 401, 403)
    fail_first: list[int] = field(default_factory=list)   # answer these statuses first, in order
    retry_after: str | None = None            # Retry-After header sent with fail_first statuses
    cut_after: int | None = None              # bytes of body to send before cutting the connection
    cuts: int = 0                             # how many bodies to cut
    stall_after: int | None = None            # bytes of body to send before stalling
    stalls: int = 0                           # how many bodies stall
    stall_seconds: float = 1.5
    stall_headers: int = 0                    # how many requests get no response at all for stall_seconds
    ignore_range: bool = False                # answer 200 with the whole file to Range requests
    body: bytes | None = None                 # bytes to send instead of ``content`` (corruption)
    etag: bool = True                         # send X-Linked-Etag: sha256(content)
    commit: str | None = COMMIT               # X-Repo-Commit
    redirect: bool = False                    # 302 to /cdn/..., metadata on the redirect (like the hub)
    chunk: int = 64 * 1024
    chunk_delay: float = 0.0                  # seconds between chunks (slow downloads)
    gzip: bool = False                        # send the body gzip-compressed with Content-Encoding: gzip
    no_length: bool = False                   # send no Content-Length (the body ends when the connection closes)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass
class Logged:
    path: str
    method: str
    headers: dict
    status: int


class HubServer:
    """Start with ``with HubServer() as hub:``; ``hub.url`` is the endpoint, ``hub.add(repo, file, Route)``."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.log: list[Logged] = []
        self.bodies: dict[str, int] = {}      # filename -> bodies started (200/206)
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:   # keep test output clean
                pass

            def do_GET(self) -> None:
                server._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def add(self, repo_id: str, filename: str, route: Route) -> Route:
        self.routes[(repo_id, filename)] = route
        return route

    def requests_for(self, filename: str) -> list[Logged]:
        with self.lock:
            return [r for r in self.log if r.path.endswith("/" + filename)]

    # -- request handling -------------------------------------------------------------------

    def _record(self, h: BaseHTTPRequestHandler, status: int) -> None:
        with self.lock:
            self.log.append(Logged(h.path, h.command, dict(h.headers), status))

    def _send_status(self, h: BaseHTTPRequestHandler, status: int, headers: dict | None = None) -> None:
        self._record(h, status)
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _find(self, path: str) -> tuple[Route, str] | None:
        path = unquote(path)
        if path.startswith("/cdn/"):
            repo_id, _, filename = path[len("/cdn/"):].partition("/@/")
            route = self.routes.get((repo_id, filename))
            return (route, filename) if route else None
        if "/resolve/" not in path:
            return None
        repo_id, _, rest = path.lstrip("/").partition("/resolve/")
        _, _, filename = rest.partition("/")
        route = self.routes.get((repo_id, filename))
        return (route, filename) if route else None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        found = self._find(h.path)
        if found is None:
            self._send_status(h, 404)
            return
        route, filename = found
        meta = {}
        if route.etag:
            meta["X-Linked-Etag"] = f'"{route.sha256}"'
        if route.commit:
            meta["X-Repo-Commit"] = route.commit
        with self.lock:
            stall_headers = route.stall_headers > 0
            if stall_headers:
                route.stall_headers -= 1
        if stall_headers:
            self._record(h, 0)
            time.sleep(route.stall_seconds)
            h.close_connection = True
            return
        with self.lock:
            status = route.status
            if status is None and route.fail_first:
                status = route.fail_first.pop(0)
        if status is not None:
            extra = {"Retry-After": route.retry_after} if route.retry_after and status in (429, 503) else {}
            self._send_status(h, status, extra)
            return
        if route.redirect and not h.path.startswith("/cdn/"):
            repo_id = h.path.lstrip("/").partition("/resolve/")[0]
            location = f"/cdn/{repo_id}/@/{filename}"
            self._send_status(h, 302, {"Location": location, "X-Linked-Size": str(len(route.content)), **meta})
            return

        data = route.body if route.body is not None else route.content
        if route.gzip:
            data = gzip.compress(data)
        start = 0
        wanted = h.headers.get("Range")
        if wanted and not route.ignore_range:
            start = int(wanted.split("=", 1)[1].split("-", 1)[0])
            if start >= len(data):
                self._send_status(h, 416, {"Content-Range": f"bytes */{len(data)}"})
                return
        status = 206 if start else 200
        with self.lock:
            self.bodies[filename] = self.bodies.get(filename, 0) + 1
            cut = route.cut_after if route.cuts > 0 else None
            if cut is not None:
                route.cuts -= 1
            stall = route.stall_after if route.stalls > 0 else None
            if stall is not None:
                route.stalls -= 1
        self._record(h, status)
        h.send_response(status)
        if not route.redirect:
            for k, v in meta.items():
                h.send_header(k, v)
        if route.gzip:
            h.send_header("Content-Encoding", "gzip")
        if route.no_length:
            h.close_connection = True
            h.send_header("Connection", "close")
        else:
            h.send_header("Content-Length", str(len(data) - start))
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Accept-Ranges", "bytes")
        h.end_headers()
        try:
            self._send_body(h, route, data[start:], cut, stall)
        except (BrokenPipeError, ConnectionResetError, OSError):
            h.close_connection = True

    def _send_body(self, h, route: Route, body: bytes, cut: int | None, stall: int | None) -> None:
        sent = 0
        while sent < len(body):
            limit = len(body)
            if cut is not None:
                limit = min(limit, cut)
            if stall is not None:
                limit = min(limit, stall)
            piece = body[sent:min(sent + route.chunk, limit)]
            if piece:
                h.wfile.write(piece)
                h.wfile.flush()
                sent += len(piece)
            if cut is not None and sent >= cut:
                h.close_connection = True
                h.connection.shutdown(socket.SHUT_RDWR)
                return
            if stall is not None and sent >= stall:
                time.sleep(route.stall_seconds)
                stall = None
                h.close_connection = True
                return      # the client gave up long ago; end this connection
            if route.chunk_delay:
                time.sleep(route.chunk_delay)
