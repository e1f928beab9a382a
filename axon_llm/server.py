"""``axon-llm serve``: an OpenAI-compatible HTTP server on the standard library.

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions`` and
``POST /v1/completions`` (streamed as server-sent events when ``"stream": true``) and
``POST /v1/embeddings``. Every request runs on its own thread of a ``ThreadingHTTPServer``; the
generating ones hand a :class:`~axon_llm.batching.SequenceRequest` to the one
:class:`~axon_llm.batching.BatchScheduler`, which owns the model, and read its tokens back.
Embeddings run on the request's thread under a lock (a separate, small encoder).

Errors are ``{"error": {"message", "type", "code"}}`` with a 4xx status (401 bad API key,
404 unknown model or path, 413 body too large, 400 everything else a client can get wrong);
an unexpected failure is a 500 with the same body, and the server keeps serving.
"""

from __future__ import annotations

import base64
import hmac
import json
import math
import queue
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from axon_llm.batching import BatchScheduler, SequenceRequest
from axon_llm.chat import eos_token_ids, max_context
from axon_llm.errors import LLMError
from axon_llm.generation_config import GenerationConfig
from axon_llm.pooling import embed_texts

__all__ = ["APIError", "ServerApp", "make_server", "serve"]

MAX_BODY_BYTES = 4 << 20                  # a request body larger than this is refused with 413
DEFAULT_MAX_TOKENS = 512                  # when a request names no max_tokens (capped by the context)
DEFAULT_TIMEOUT_S = 300.0                 # server-side deadline of one generation
MAX_STOP_STRINGS = 4


class APIError(Exception):
    """An error answered to the client: HTTP ``status`` and OpenAI's ``type`` / ``code``."""

    def __init__(self, status: int, message: str, code: str | None = None, type_: str = "invalid_request_error",
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.type, self.param = status, message, code, type_, param

    def body(self) -> dict:
        """The JSON error body."""
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


def _bad(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, code, param=param)


# ------------------------------------------------------------------------------------------------
# request fields
# ------------------------------------------------------------------------------------------------
def _field(body: dict, name: str, kinds, default=None, required: bool = False):
    """``body[name]`` checked against ``kinds`` ("int", "number", "bool", "str", "list", "dict")."""
    if name not in body or body[name] is None:
        if required:
            raise _bad(f"missing required field '{name}'", name, "missing_field")
        return default
    value = body[name]
    ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
          "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str),
          "list": lambda v: isinstance(v, list), "dict": lambda v: isinstance(v, dict)}
    kinds = (kinds,) if isinstance(kinds, str) else kinds
    if not any(ok[k](value) for k in kinds):
        raise _bad(f"'{name}' must be {' or '.join(kinds)}, got {json.dumps(value)[:40]}", name, "invalid_type")
    return value


def _in_range(body: dict, name: str, lo: float, hi: float, default, lo_open: bool = False):
    v = _field(body, name, "number", default)
    if v is not None and not ((v > lo if lo_open else v >= lo) and v <= hi):
        raise _bad(f"'{name}' must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}", name)
    return v


def _message_text(content, i: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(f"messages[{i}].content parts must be {{'type': 'text', 'text': str}}", "messages")
            parts.append(part["text"])
        return "".join(parts)
    raise _bad(f"messages[{i}].content must be a string or a list of text parts", "messages", "invalid_type")


def parse_messages(body: dict) -> list[dict]:
    """The ``messages`` of a chat request as template input (content flattened to text)."""
    messages = _field(body, "messages", "list", required=True)
    if not messages:
        raise _bad("'messages' must not be empty", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _bad(f"messages[{i}] must be an object with a string 'role'", "messages", "invalid_type")
        msg = {k: v for k, v in m.items() if k not in ("content",)}
        msg["content"] = _message_text(m.get("content"), i)
        out.append(msg)
    return out


# ------------------------------------------------------------------------------------------------
# the application (everything but HTTP)
# ------------------------------------------------------------------------------------------------
class ServerApp:
    """The models, the scheduler and the endpoint logic; :class:`_Handler` only speaks HTTP."""

    def __init__(self, model, tokenizer, model_name: str, embed_model=None, embed_tokenizer=None,
                 embed_name: str | None = None, api_key: str | None = None, max_batch: int = 8,
                 timeout_s: float = DEFAULT_TIMEOUT_S, max_body: int = MAX_BODY_BYTES, log=None):
        self.model, self.tokenizer, self.model_name = model, tokenizer, model_name
        self.embed_model, self.embed_tokenizer, self.embed_name = embed_model, embed_tokenizer, embed_name
        self.api_key, self.timeout_s, self.max_body = api_key, timeout_s, max_body
        self.context = max_context(model) or 2048
        self.eos = tuple(eos_token_ids(tokenizer, model))
        self.scheduler = BatchScheduler(model, max_batch=max_batch, max_length=self.context).start()
        self.embed_lock = threading.Lock()
        self.created = int(time.time())
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))

    def close(self) -> None:
        """Stop the scheduler thread."""
        self.scheduler.close()

    # -- helpers ----------------------------------------------------------------------------------
    def check_auth(self, header: str | None) -> None:
        """401 unless ``Authorization: Bearer <api key>`` (when the server has a key)."""
        if self.api_key is None:
            return
        given = header[7:].strip() if header and header.startswith("Bearer ") else ""
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise APIError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                           "invalid_api_key")

    def _check_model(self, body: dict, names: list) -> str:
        name = _field(body, "model", "str", required=True)
        if name not in [n for n in names if n]:
            raise APIError(404, f"model '{name}' does not exist; this server has {', '.join(n for n in names if n)}",
                           "model_not_found")
        return name

    def models(self) -> dict:
        """``GET /v1/models``."""
        names = [self.model_name] + ([self.embed_name] if self.embed_name else [])
        return {"object": "list", "data": [{"id": n, "object": "model", "created": self.created,
                                            "owned_by": "axon-llm"} for n in names]}

    def _generation_request(self, body: dict, prompt_ids: list[int], logprobs_top: int | None):
        """A SequenceRequest (and its stop strings) from the sampling fields of ``body``."""
        from axon_llm.constrained import JsonConstraint, compile_schema, schema_from_response_format, token_index

        n = _field(body, "n", "int", 1)
        if n != 1:
            raise _bad("only n=1 is supported", "n")
        max_tokens = _field(body, "max_completion_tokens", "int", None)
        if max_tokens is None:
            max_tokens = _field(body, "max_tokens", "int", None)
        p = len(prompt_ids)
        if p >= self.context:
            raise _bad(f"the prompt is {p} tokens; the model's context is {self.context}", "messages",
                       "context_length_exceeded")
        if max_tokens is None:
            max_tokens = min(DEFAULT_MAX_TOKENS, self.context - p)
        if max_tokens <= 0:
            raise _bad(f"max_tokens must be >= 1, got {max_tokens}", "max_tokens")
        if p + max_tokens > self.context:
            raise _bad(f"{p} prompt tokens + max_tokens {max_tokens} exceed the model's context of {self.context}",
                       "max_tokens", "context_length_exceeded")
        temperature = _in_range(body, "temperature", 0.0, 2.0, 1.0)
        top_p = _in_range(body, "top_p", 0.0, 1.0, 1.0, lo_open=True)
        freq = _in_range(body, "frequency_penalty", -2.0, 2.0, 0.0)
        pres = _in_range(body, "presence_penalty", -2.0, 2.0, 0.0)
        seed = _field(body, "seed", "int", None)
        stop = _field(body, "stop", ("str", "list"), None)
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOP_STRINGS or any(not isinstance(s, str) or not s for s in stops):
            raise _bad(f"'stop' must be a non-empty string or a list of at most {MAX_STOP_STRINGS} of them", "stop")
        ignore_eos = _field(body, "ignore_eos", "bool", False)          # vLLM's extension (benchmarks)
        cfg = GenerationConfig(max_new_tokens=max_tokens, do_sample=temperature > 0, temperature=temperature,
                               top_p=None if top_p >= 1.0 else top_p, seed=seed,
                               eos_token_ids=() if ignore_eos else self.eos,
                               frequency_penalty=freq, presence_penalty=pres)
        constraint = None
        schema = schema_from_response_format(_field(body, "response_format", "dict", None))
        if schema is not None:
            node = compile_schema(schema)
            constraint = JsonConstraint(token_index(self.tokenizer, self.eos), node)
            if constraint.min_tokens > max_tokens:
                raise _bad(f"max_tokens {max_tokens} cannot hold the shortest JSON the schema allows "
                           f"({constraint.min_tokens} tokens)", "max_tokens")
        req = SequenceRequest(prompt_ids, cfg, constraint, logprobs_top, time.monotonic() + self.timeout_s)
        return req, stops

    def _render_chat(self, body: dict) -> list[int]:
        messages = parse_messages(body)
        tools = _field(body, "tools", "list", None)
        extra = {"tools": tools} if tools else {}
        try:
            return [int(t) for t in self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                                       tokenize=True, **extra)]
        except LLMError as e:
            raise _bad(str(e), "messages") from None

    def prepare(self, path: str, body: dict):
        """Validate a generation request -> (kind, model name, request, stops, stream, logprobs top)."""
        name = self._check_model(body, [self.model_name])
        stream = _field(body, "stream", "bool", False)
        if path == "/v1/chat/completions":
            ids = self._render_chat(body)
            want = _field(body, "logprobs", "bool", False)
            top = _field(body, "top_logprobs", "int", None)
            if top is not None and (top < 0 or top > 20):
                raise _bad("'top_logprobs' must be in [0, 20]", "top_logprobs")
            if top is not None and not want:
                raise _bad("'top_logprobs' needs 'logprobs': true", "top_logprobs")
            top = (top or 0) if want else None
            kind = "chat"
        else:
            prompt = _field(body, "prompt", ("str", "list"), required=True)
            if isinstance(prompt, list):
                if len(prompt) == 1 and isinstance(prompt[0], str):
                    prompt = prompt[0]
                elif prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
                    if any(t < 0 or t >= self.tokenizer.vocab_size for t in prompt):
                        raise _bad("a prompt token id is outside the vocabulary", "prompt")
                else:
                    raise _bad("'prompt' must be a string, a list of one string or a list of token ids", "prompt",
                               "invalid_type")
            ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
            if not ids:
                raise _bad("the prompt encodes to no tokens", "prompt")
            top = _field(body, "logprobs", "int", None)
            if top is not None and not 0 <= top <= 5:
                raise _bad("'logprobs' must be in [0, 5]", "logprobs")
            kind = "text"
        req, stops = self._generation_request(body, ids, top)
        return kind, name, req, stops, stream

    def embeddings(self, body: dict) -> dict:
        """``POST /v1/embeddings``: mean-pooled, L2-normalised vectors (as ``axon-llm embed``)."""
        if self.embed_model is None:
            raise APIError(404, "this server has no embedding model", "model_not_found")
        name = self._check_model(body, [self.embed_name])
        texts = _field(body, "input", ("str", "list"), required=True)
        texts = [texts] if isinstance(texts, str) else texts
        if not texts or any(not isinstance(t, str) for t in texts):
            raise _bad("'input' must be a string or a non-empty list of strings (token ids are not supported)",
                       "input", "invalid_type")
        if any(t == "" for t in texts):
            raise _bad("'input' strings must not be empty", "input")
        fmt = _field(body, "encoding_format", "str", "float")
        if fmt not in ("float", "base64"):
            raise _bad("'encoding_format' must be 'float' or 'base64'", "encoding_format")
        with self.embed_lock:
            try:
                vecs = embed_texts(self.embed_model, self.embed_tokenizer, texts)          # [N, H]
            except LLMError as e:
                raise _bad(str(e), "input") from None
        tokens = sum(len(self.embed_tokenizer.encode(t)) for t in texts)
        data = []
        for i, v in enumerate(vecs.astype(np.float32)):
            emb = base64.b64encode(v.astype("<f4").tobytes()).decode() if fmt == "base64" else [float(x) for x in v]
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return {"object": "list", "data": data, "model": name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


# ------------------------------------------------------------------------------------------------
# following one generation: detokenise, stop strings, logprobs
# ------------------------------------------------------------------------------------------------
class _Follower:
    """Reads a request's events; yields text pieces that are final (a stop string is held back
    until it cannot start in it) and records logprobs."""

    def __init__(self, app: ServerApp, req: SequenceRequest, stops: list[str]):
        self.app, self.req, self.stops = app, req, stops
        self.decoder = app.tokenizer.stream_decoder(skip_special_tokens=True)
        self.text = ""            # all text decoded so far
        self.sent = 0             # characters of text handed out
        self.tokens = 0
        self.finish = None
        self.logprobs: list[dict] = []
        self.hold = max((len(s) for s in stops), default=1) - 1

    def _token_entry(self, tid: int, lp) -> dict:
        tok = self.app.tokenizer

        def one(i, value):
            text = tok.decode([int(i)])
            return {"token": text, "logprob": float(value), "bytes": list(text.encode())}

        entry = one(tid, lp.logprobs[0])
        entry["top_logprobs"] = [one(i, v) for i, v in zip(lp.top_ids[0], lp.top_logprobs[0])]
        return entry

    def pieces(self):
        """Yield new final text until the generation ends (sets ``finish``)."""
        while self.finish is None:
            try:
                ev = self.req.events.get(timeout=self.app.timeout_s + 30)
            except queue.Empty:
                self.req.cancel()
                self.finish = "length"
                break
            if ev[0] == "error":
                raise ev[1]
            if ev[0] == "done":
                self.finish = "length" if ev[1] == "cancelled" else ev[1]
                self.text += self.decoder.finish()
                break
            _, tid, lp = ev
            self.tokens += 1
            if tid in self.app.eos:
                continue
            if lp is not None:
                self.logprobs.append(self._token_entry(tid, lp))
            self.text += self.decoder.step(tid)
            if self._cut_at_stop():
                break
            ready = len(self.text) - self.hold
            if ready > self.sent:
                yield self.text[self.sent:ready]
                self.sent = ready
        self._cut_at_stop()
        if len(self.text) > self.sent:
            yield self.text[self.sent:]
            self.sent = len(self.text)

    def _cut_at_stop(self) -> bool:
        hits = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        if not hits:
            return False
        self.text = self.text[:min(hits)]
        self.sent = min(self.sent, len(self.text))
        if self.finish is None or self.finish == "length":
            self.finish = "stop"
        self.req.cancel()
        return True

    def usage(self) -> dict:
        """OpenAI's ``usage`` block."""
        p = len(self.req.prompt_ids)
        return {"prompt_tokens": p, "completion_tokens": self.tokens, "total_tokens": p + self.tokens}


# ------------------------------------------------------------------------------------------------
# HTTP
# ------------------------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "axon-llm"
    app: ServerApp                                    # set on the subclass made by make_server

    def log_message(self, format, *args):             # noqa: A002 (the base class's name)
        """Silenced: :meth:`_log` writes one line per request instead."""

    def _log(self, status: int, note: str = "") -> None:
        dt = time.perf_counter() - getattr(self, "_t0", time.perf_counter())
        self.app.log(f'{self.client_address[0]} "{self.command} {self.path}" {status} {dt:.2f}s{note}')

    def _send_json(self, status: int, obj: dict, note: str = "") -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self._log(status, note)

    def _error(self, err: APIError) -> None:
        try:
            self._send_json(err.status, err.body(), f" {err.code}")
        except OSError:
            pass

    def _read_body(self) -> dict:
        length = self.headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            self.close_connection = True
            raise APIError(411 if length is None else 400, "a request body needs a valid Content-Length", "invalid_body")
        n = int(length)
        if n > self.app.max_body:
            self.close_connection = True                  # the unread body is not drained
            raise APIError(413, f"the request body is {n} bytes; the limit is {self.app.max_body}", "body_too_large")
        raw = self.rfile.read(n)
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _bad(f"the body is not valid JSON: {e}", None, "invalid_json") from None
        if not isinstance(body, dict):
            raise _bad("the body must be a JSON object", None, "invalid_json")
        return body

    def do_GET(self):                                 # noqa: N802 (http.server's name)
        """``/health`` and ``/v1/models``."""
        self._t0 = time.perf_counter()
        try:
            path = self.path.split("?")[0]
            if path == "/health":
                return self._send_json(200, {"status": "ok"})
            self.app.check_auth(self.headers.get("Authorization"))
            if path in ("/v1/models", "/models"):
                return self._send_json(200, self.app.models())
            raise APIError(404, f"no such endpoint: GET {path}", "not_found")
        except APIError as e:
            self._error(e)

    def do_POST(self):                                # noqa: N802
        """The three generating / embedding endpoints."""
        self._t0 = time.perf_counter()
        path = self.path.split("?")[0]
        if path in ("/chat/completions", "/completions", "/embeddings"):
            path = "/v1" + path
        try:
            self.app.check_auth(self.headers.get("Authorization"))
            if path not in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
                self.close_connection = True
                raise APIError(404, f"no such endpoint: POST {path}", "not_found")
            body = self._read_body()
            if path == "/v1/embeddings":
                return self._send_json(200, self.app.embeddings(body))
            try:
                kind, name, req, stops, stream = self.app.prepare(path, body)
            except LLMError as e:                     # e.g. an invalid schema or generation setting
                raise _bad(str(e)) from None
            try:
                self.app.scheduler.submit(req)
            except LLMError as e:
                raise _bad(str(e), None, "context_length_exceeded") from None
            follow = _Follower(self.app, req, stops)
            if stream:
                self._stream(kind, name, follow, body)
            else:
                self._complete(kind, name, follow)
        except APIError as e:
            self._error(e)
        except Exception as e:                        # a bug or a model failure: 500, the server stays up
            self._error(APIError(500, f"internal error: {type(e).__name__}: {e}", "internal_error", "server_error"))

    # -- responses --------------------------------------------------------------------------------
    def _logprobs_block(self, kind: str, follow: _Follower):
        if follow.req.top_logprobs is None:
            return None
        if kind == "chat":
            return {"content": follow.logprobs}
        return {"tokens": [e["token"] for e in follow.logprobs],
                "token_logprobs": [e["logprob"] for e in follow.logprobs],
                "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in follow.logprobs],
                "text_offset": list(np.cumsum([0] + [len(e["token"]) for e in follow.logprobs])[:-1].tolist())}

    def _complete(self, kind: str, name: str, follow: _Follower) -> None:
        text = "".join(follow.pieces())
        created, rid = int(time.time()), uuid.uuid4().hex[:24]
        if kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": self._logprobs_block(kind, follow), "finish_reason": follow.finish}
            obj = {"id": f"chatcmpl-{rid}", "object": "chat.completion", "created": created, "model": name,
                   "choices": [choice], "usage": follow.usage()}
        else:
            choice = {"index": 0, "text": text, "logprobs": self._logprobs_block(kind, follow),
                      "finish_reason": follow.finish}
            obj = {"id": f"cmpl-{rid}", "object": "text_completion", "created": created, "model": name,
                   "choices": [choice], "usage": follow.usage()}
        self._send_json(200, obj, f" {follow.tokens} tokens {follow.finish}")

    def _stream(self, kind: str, name: str, follow: _Follower, body: dict) -> None:
        created, rid = int(time.time()), uuid.uuid4().hex[:24]
        opts = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
        include_usage = opts.get("include_usage") is True
        obj_name = "chat.completion.chunk" if kind == "chat" else "text_completion"
        prefix = "chatcmpl-" if kind == "chat" else "cmpl-"

        def chunk(delta_text: str | None, finish=None, first=False, usage=None) -> dict:
            out = {"id": prefix + rid, "object": obj_name, "created": created, "model": name}
            if usage is not None:
                out["choices"], out["usage"] = [], usage
                return out
            if kind == "chat":
                delta = {"role": "assistant", "content": ""} if first else \
                    ({"content": delta_text} if delta_text is not None else {})
                out["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
            else:
                out["choices"] = [{"index": 0, "text": delta_text or "", "logprobs": None, "finish_reason": finish}]
            return out

        def send(obj) -> None:
            self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
            self.wfile.flush()

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            if kind == "chat":
                send(chunk(None, first=True))
            for piece in follow.pieces():
                send(chunk(piece))
            final = chunk(None, finish=follow.finish)
            if follow.req.top_logprobs is not None:
                final["choices"][0]["logprobs"] = self._logprobs_block(kind, follow)
            send(final)
            if include_usage:
                send(chunk(None, usage=follow.usage()))
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self._log(200, f" stream {follow.tokens} tokens {follow.finish}")
        except OSError:                               # the client went away: free its row
            follow.req.cancel()
            self._log(200, " client disconnected")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def make_server(app: ServerApp, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """An HTTP server for ``app`` bound to ``host:port`` (port 0 picks a free one); call
    ``serve_forever()`` on it, ``shutdown()`` to stop."""
    handler = type("Handler", (_Handler,), {"app": app})
    return _Server((host, port), handler)


def serve(app: ServerApp, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``app`` until interrupted."""
    server = make_server(app, host, port)
    app.log(f"axon-llm serve: http://{server.server_address[0]}:{server.server_address[1]}/v1 "
            f"(model {app.model_name}{', embeddings ' + app.embed_name if app.embed_name else ''})")
    try:
        server.serve_forever()
    finally:
        server.server_close()
        app.close()
