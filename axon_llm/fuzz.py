"""A fuzzing harness for everything axon_llm reads from a file: mutate, load, demand a clean outcome.

Five kinds of input are fuzzed, each starting from a small valid one this module builds:

======================  ======================================================================
``gguf``                a 2-layer llama GGUF (F32 and Q8_0 tensors, a byte-level BPE tokenizer,
                        a ChatML template), written by :func:`tiny_gguf`
``safetensors``         a HF folder: ``config.json`` + ``model.safetensors`` (the header is mutated)
``config``              the same folder with its ``config.json`` mutated
``tokenizer``           a folder with ``tokenizer.json`` + ``tokenizer_config.json`` (both mutated)
``template``            a chat template (hostile snippets spliced in) rendered with a conversation
======================  ======================================================================

Mutations are driven by `hypothesis <https://hypothesis.readthedocs.io>`_: typed changes of
GGUF metadata values and tensor fields (huge counts, NaN/inf, wrong types, nested arrays,
overlapping offsets), JSON values replaced at any path (``10**30``, ``NaN``, ``"../../etc/passwd"``,
``[2**32, 2**32]``, 200-deep nesting ...), bytes overwritten with extreme integers, truncation.
Only the structure is mutated, never tensor payload bytes: other weights are still a valid model.

Each example must end in one of two ways: a clean :class:`~axon_llm.errors.LLMError`, or a
successful load whose forward pass is finite (for tokenizers: encode/decode work; for
templates: a string). Anything else -- another exception, a crash, a hang, running out of
memory -- is a failure. Examples run in a worker process under ``RLIMIT_AS`` (``memory_mb``)
and a per-example wall-clock limit (``seconds``); a worker that dies or hangs is a failure
and is replaced.

    from axon_llm.fuzz import fuzz
    report = fuzz("gguf", examples=200)          # raises FuzzFailure with the input that failed
    print(report)                                # {"ok": 12, "LLMError subclasses": ...}

``python -m axon_llm.fuzz [KIND ...] [--examples N]`` runs it from the shell; the test suite runs a
few hundred examples, ``FUZZ_EXAMPLES=N`` runs N per kind. ``hypothesis`` is needed (the ``test``
extra), nothing else.
"""

from __future__ import annotations

import json
import math
import os
import select
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("gguf", "safetensors", "config", "tokenizer", "template")

__all__ = ["KINDS", "FuzzFailure", "fuzz", "tiny_gguf", "tiny_hf_folder", "check_input", "Worker",
           "write_gguf", "HOSTILE_VALUES", "TEMPLATE_SNIPPETS"]


class FuzzFailure(AssertionError):
    """An input that neither failed cleanly nor loaded into a model with a finite forward pass."""


# -- a tiny valid GGUF ----------------------------------------------------------------------------
_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def _value_bytes(vtype: int, value: Any) -> bytes:
    if vtype == _STRING:
        raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)
        return struct.pack("<Q", len(raw)) + raw
    if vtype == _ARRAY:
        etype, items = value
        return struct.pack("<IQ", etype, len(items)) + b"".join(_value_bytes(etype, x) for x in items)
    return struct.pack(_FMT[vtype], value)


def write_gguf(kvs: list[tuple[str, int, Any]], tensors: list[tuple[str, list[int], int, int, bytes]],
               alignment: int = 32) -> bytes:
    """GGUF v3 bytes from ``(key, value_type, value)`` metadata (arrays as ``(elem_type, items)``)
    and ``(name, ne, ggml_type, offset, data)`` tensors (``ne`` in GGML order, ``offset`` relative
    to the data section; ``data`` is placed at that offset)."""
    out = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(kvs))]
    for key, vtype, value in kvs:
        out += [_value_bytes(_STRING, key), struct.pack("<I", vtype), _value_bytes(vtype, value)]
    for name, ne, gtype, offset, _ in tensors:
        out += [_value_bytes(_STRING, name), struct.pack("<I", len(ne)), struct.pack(f"<{len(ne)}Q", *ne),
                struct.pack("<IQ", gtype, offset)]
    head = b"".join(out)
    head += b"\0" * (-len(head) % alignment)
    size = max((off + len(data) for _, _, _, off, data in tensors), default=0)
    body = bytearray(size + (-size % alignment))
    for _, _, _, off, data in tensors:
        body[off:off + len(data)] = data
    return head + bytes(body)


def _q8_0(w: np.ndarray) -> bytes:
    """Q8_0 blocks of a float32 matrix (32 values: an f16 scale and 32 int8)."""
    blocks = w.reshape(-1, 32).astype(np.float32)
    d = np.abs(blocks).max(axis=1) / 127.0
    q = np.round(blocks / np.where(d == 0, 1, d)[:, None]).astype(np.int8)
    return b"".join(np.float16(s).tobytes() + row.tobytes() for s, row in zip(d, q))


_CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
           "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _byte_vocab() -> list[str]:
    from axon_llm.tokenizer import _bytes_to_unicode

    return list(_bytes_to_unicode().values())


def tiny_gguf_parts(seed: int = 0) -> tuple[list, list]:
    """The metadata and tensors of :func:`tiny_gguf` (mutations start from these)."""
    rng = np.random.default_rng(seed)
    hidden, heads, kv, ffn, layers = 32, 2, 1, 64, 2
    tokens = _byte_vocab() + ["he", "ll", "<|im_start|>", "<|im_end|>"]
    types = [1] * (len(tokens) - 2) + [3, 3]
    vocab = len(tokens)
    kvs = [
        ("general.architecture", _STRING, "llama"), ("general.alignment", 4, 32),
        ("llama.block_count", 4, layers), ("llama.context_length", 4, 64), ("llama.embedding_length", 4, hidden),
        ("llama.feed_forward_length", 4, ffn), ("llama.attention.head_count", 4, heads),
        ("llama.attention.head_count_kv", 4, kv), ("llama.rope.freq_base", 6, 10000.0),
        ("llama.attention.layer_norm_rms_epsilon", 6, 1e-5), ("llama.vocab_size", 4, vocab),
        ("tokenizer.ggml.model", _STRING, "gpt2"), ("tokenizer.ggml.pre", _STRING, "smollm"),
        ("tokenizer.ggml.tokens", _ARRAY, (_STRING, tokens)), ("tokenizer.ggml.token_type", _ARRAY, (5, types)),
        ("tokenizer.ggml.merges", _ARRAY, (_STRING, ["h e", "l l"])),
        ("tokenizer.ggml.bos_token_id", 4, vocab - 2), ("tokenizer.ggml.eos_token_id", 4, vocab - 1),
        ("tokenizer.chat_template", _STRING, _CHATML),
    ]
    shapes = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,)}
    for i in range(layers):
        shapes.update({f"blk.{i}.attn_norm.weight": (hidden,), f"blk.{i}.ffn_norm.weight": (hidden,),
                       f"blk.{i}.attn_q.weight": (hidden, hidden), f"blk.{i}.attn_k.weight": (kv * 16, hidden),
                       f"blk.{i}.attn_v.weight": (kv * 16, hidden), f"blk.{i}.attn_output.weight": (hidden, hidden),
                       f"blk.{i}.ffn_gate.weight": (ffn, hidden), f"blk.{i}.ffn_up.weight": (ffn, hidden),
                       f"blk.{i}.ffn_down.weight": (hidden, ffn)})
    tensors, offset = [], 0
    for name, shape in shapes.items():
        w = (rng.standard_normal(shape) * (1.0 if len(shape) == 1 else 0.1)).astype(np.float32)
        if len(shape) == 1:
            w = 1.0 + 0.1 * w
        quantised = name.endswith("ffn_down.weight")
        data = _q8_0(w) if quantised else w.tobytes()
        tensors.append((name, list(shape[::-1]), 8 if quantised else 0, offset, data))
        offset += len(data) + (-len(data) % 32)
    return kvs, tensors


def tiny_gguf(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write the small valid llama GGUF the ``gguf`` fuzzing starts from; returns the path."""
    path = Path(path)
    path.write_bytes(write_gguf(*tiny_gguf_parts(seed)))
    return path


def tiny_hf_folder(folder: str | os.PathLike, seed: int = 0) -> Path:
    """A HF folder (config.json, model.safetensors, tokenizer.json, tokenizer_config.json) holding
    the same model as :func:`tiny_gguf`, converted through the library itself."""
    from axon_llm.loaders.safetensors import save_pretrained
    from axon_llm.tokenizer import HFTokenizer
    from axon_llm.training import dequantized_gguf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = tiny_gguf(Path(tmp) / "tiny.gguf", seed)
        save_pretrained(dequantized_gguf(src), folder)
        tok = HFTokenizer.from_pretrained(src)
    tok.backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|im_end|>", "bos_token": {"content": "<|im_start|>"}, "chat_template": _CHATML,
         "model_max_length": 64, "padding_side": "left"}))
    return folder


# -- checking one input ---------------------------------------------------------------------------
_MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"},
             {"role": "assistant", "content": "hi"}, {"role": "user", "content": "again"}]


def _forward_is_finite(model) -> None:
    import axon

    ids = np.array([[1, 2, 3, 4]], dtype=np.int64) % model.config.vocab_size
    with axon.no_grad():
        out = model(ids)
    logits = np.asarray(out.numpy() if hasattr(out, "numpy") else out)
    if not np.all(np.isfinite(logits)):
        raise FuzzFailure(f"the model loaded but its forward pass is not finite ({logits.ravel()[:4]})")


def _use_tokenizer(tok) -> None:
    ids = tok.encode("hello world")
    tok.decode(ids)
    if tok.chat_template:
        tok.apply_chat_template(_MESSAGES, tokenize=True)


def check_input(kind: str, path: str | os.PathLike) -> str:
    """Load one (possibly mutated) input of ``kind`` the way a user would. Returns ``"ok"`` or the
    name of the library error raised; raises :class:`FuzzFailure` for any other outcome."""
    from axon_llm.errors import LLMError

    path = Path(path)
    try:
        if kind in ("gguf", "safetensors", "config"):
            from axon_llm.auto import from_pretrained

            model = from_pretrained(path)
            _forward_is_finite(model)
            if kind == "gguf":
                from axon_llm.tokenizer import HFTokenizer

                _use_tokenizer(HFTokenizer.from_pretrained(path))
        elif kind == "tokenizer":
            from axon_llm.tokenizer import HFTokenizer

            _use_tokenizer(HFTokenizer.from_pretrained(path))
        elif kind == "template":
            from axon_llm.template import render_template

            source = path.read_bytes().decode("utf-8", "surrogateescape")
            out = render_template(source, messages=_MESSAGES, add_generation_prompt=True, bos_token="<s>",
                                  eos_token="</s>")
            if not isinstance(out, str):
                raise FuzzFailure(f"a template rendered to {type(out).__name__}")
        else:
            raise ValueError(f"unknown fuzz kind {kind!r}; one of {KINDS}")
    except LLMError as e:
        return type(e).__name__
    except FuzzFailure:
        raise
    except BaseException as e:   # noqa: BLE001 - exactly what the harness looks for
        raise FuzzFailure(f"{kind}: {type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}") from None
    return "ok"


# -- the worker process ---------------------------------------------------------------------------
class Worker:
    """A child process that checks inputs under ``RLIMIT_AS`` (``memory_mb``); each check must
    answer within ``seconds`` or the worker is killed and the input reported as a hang."""

    def __init__(self, memory_mb: int = 6144, seconds: float = 60.0):
        self.memory_mb, self.seconds = memory_mb, seconds
        self.proc: subprocess.Popen | None = None

    def _start(self) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join([root, str(Path(root) / "kernels"), env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen([sys.executable, "-m", "axon_llm.fuzz", "--worker", str(self.memory_mb)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=env, text=True, bufsize=1)
        ready = self._ask("ping", "", max(self.seconds * 4, 300.0))   # imports and JIT warm-up, not in an example
        if ready["status"] != "ok":
            raise FuzzFailure(f"the fuzz worker did not start: {ready['detail']}")

    def _ask(self, kind: str, path: str, seconds: float) -> dict:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps({"kind": kind, "path": path}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return self._died("the worker was gone")
        ready, _, _ = select.select([self.proc.stdout], [], [], seconds)
        if not ready:
            self.close()
            return {"status": "fail", "detail": f"no answer within {seconds:g} s (a hang)"}
        line = self.proc.stdout.readline()
        if not line:
            return self._died("the worker died (crash or out of memory)")
        return json.loads(line)

    def _died(self, why: str) -> dict:
        code = self.proc.wait() if self.proc else None
        self.proc = None
        return {"status": "fail", "detail": f"{why}; exit code {code}"}

    def check(self, kind: str, path: str | os.PathLike) -> dict:
        """``{"status": "ok" | "error" | "fail", "detail": ...}`` for one input."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        return self._ask(kind, str(path), self.seconds)

    def close(self) -> None:
        """Stop the worker process."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _worker_main(memory_mb: int) -> None:
    import resource

    limit = memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = sys.stdout
    sys.stdout = sys.stderr       # nothing the library prints may corrupt the answers
    for line in sys.stdin:
        request = json.loads(line)
        if request["kind"] == "ping":
            with tempfile.TemporaryDirectory() as tmp:   # warm-up: a valid model, loaded and run once
                check_input("gguf", tiny_gguf(Path(tmp) / "warm.gguf"))
            answer = {"status": "ok", "detail": "ready"}
        else:
            try:
                result = check_input(request["kind"], request["path"])
                answer = {"status": "ok" if result == "ok" else "error", "detail": result}
            except FuzzFailure as e:
                answer = {"status": "fail", "detail": str(e)}
            except MemoryError:
                answer = {"status": "fail", "detail": "MemoryError escaped"}
        out.write(json.dumps(answer) + "\n")
        out.flush()


# -- mutations ------------------------------------------------------------------------------------
#: values a hostile file puts where a count, a float, a string or a path belongs
HOSTILE_VALUES: list[Any] = [
    0, -1, 1, 2, 3, 7, 2**31, 2**32, 2**63 - 1, 2**64 - 1, 10**30, -(2**63), 1e-300, 1e308, -0.0, 0.5, 128.9,
    math.inf, -math.inf, math.nan, True, False, None, "", "abc", "\udcff", "../../../../etc/passwd",
    "/etc/passwd", "model.safetensors", [], [1, 2], [2**32, 2**32], [[1]], [[["x"]]], {}, {"content": 5},
    {"a": {"b": {"c": [1, [2, [3]]]}}}, "x" * 5000, [0] * 300,
]
_INTS = [0, 1, 2, 3, 31, 32, 33, 255, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1]

#: pieces of hostile Jinja spliced into chat templates
TEMPLATE_SNIPPETS = [
    "{{ (9 ** 99999999) % 7 }}", "{% for i in range(99999) %}{% for j in range(99999) %}x{% endfor %}{% endfor %}",
    "{{ 'a' * 10**9 }}", "{{ 'a'|center(10**9) }}", "{{ messages.__class__.__mro__ }}", "{{ ''.__class__ }}",
    "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "{{ raise_exception('stop') }}", "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "{{ 2 << 10**8 }}",
    "{{ range(10**12)|list }}", "{{ messages[10**20] }}", "{{ 1 / 0 }}", "{{ lipsum(10**6) }}",
    "{% for m in messages %}{% for a in messages %}{% for b in messages %}{{ a }}{% endfor %}{% endfor %}{% endfor %}",
    "{{ strftime_now('%Y' * 10**6) }}", "{{ messages|tojson(indent=10**8) }}", "{%", "{{", "{% endfor %}",
    "{{ x.y.z }}", "{{ -(10 ** 5000) }}", "{{ (2 ** 4000) * (2 ** 4000) }}", "{{ '%0999999999d' % 1 }}",
]


def _strategies():
    from hypothesis import strategies as st

    return st


def _json_paths(doc: Any, prefix: tuple = (), limit: int = 400) -> list[tuple]:
    paths, stack = [], [(prefix, doc)]
    while stack and len(paths) < limit:
        p, node = stack.pop()
        paths.append(p)
        if isinstance(node, dict):
            stack += [(p + (k,), v) for k, v in node.items()]
        elif isinstance(node, list):
            stack += [(p + (i,), v) for i, v in enumerate(node[:20])]
    return paths


def _set_path(doc: Any, path: tuple, value: Any, delete: bool) -> Any:
    if not path:
        return value
    node = doc
    for key in path[:-1]:
        node = node[key]
    if delete and isinstance(node, dict):
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return doc


def _deep(n: int) -> str:
    return "[" * n + "]" * n


def json_mutation(draw, text: str) -> bytes:
    """One hostile change of a JSON document (a value replaced, deleted or added at any path,
    deep nesting, invalid UTF-8, truncation); returns the new bytes."""
    st = _strategies()
    how = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add", "deep", "bytes", "truncate"]))
    if how == "bytes":
        raw = bytearray(text.encode())
        for _ in range(draw(st.integers(1, 4))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        return bytes(raw)
    if how == "truncate":
        return text.encode()[:draw(st.integers(0, len(text) - 1))]
    doc = json.loads(text)
    paths = _json_paths(doc)
    path = draw(st.sampled_from(paths))
    if how == "deep":
        raw = json.dumps(_set_path(doc, path, "@@DEEP@@", False))
        return raw.replace('"@@DEEP@@"', _deep(draw(st.sampled_from([65, 1000, 100_000])))).encode()
    if how == "add":
        parents = [p for p in paths if isinstance(_get(doc, p), dict)]
        path = draw(st.sampled_from(parents)) + (draw(st.sampled_from(
            ["num_local_experts", "rope_scaling", "head_dim", "weight_map", "__metadata__", "added_tokens", "x"])),)
    value = draw(st.sampled_from(HOSTILE_VALUES))
    doc = _set_path(doc, path, value, how == "delete")
    return json.dumps(doc).encode("utf-8", "surrogatepass")


def _get(doc: Any, path: tuple) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def gguf_mutation(draw, kvs: list, tensors: list) -> bytes:
    """One hostile change of the tiny GGUF: a metadata value (another type, a huge count, NaN,
    a nested array), a tensor's shape / type / offset, extreme bytes in the header, or a cut."""
    st = _strategies()
    kvs, tensors = list(kvs), [list(t) for t in tensors]
    how = draw(st.sampled_from(["value", "value", "value", "retype", "drop", "tensor", "tensor", "bytes", "truncate"]))
    if how in ("value", "retype", "drop"):
        i = draw(st.integers(0, len(kvs) - 1))
        key, vtype, value = kvs[i]
        if how == "drop":
            del kvs[i]
        elif how == "retype":
            kvs[i] = (key, *draw(st.sampled_from([
                (_STRING, "abc"), (4, 7), (6, math.nan), (7, True), (12, math.inf), (_ARRAY, (4, [1, 2])),
                (_ARRAY, (_ARRAY, [(4, [1])])), (_ARRAY, (_STRING, ["a", "b"])), (_ARRAY, (6, [0.5] * 3))])))
        elif vtype in (4, 5, 10, 11, 0, 1, 2, 3):
            kvs[i] = (key, 10, draw(st.sampled_from(_INTS)))
        elif vtype in (6, 12):
            kvs[i] = (key, 12, draw(st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.0, 1e-45, 1e300])))
        elif vtype == _STRING:
            kvs[i] = (key, _STRING, draw(st.sampled_from(["", "llama", "gpt2", "mistral", "x" * 70000,
                                                          "{{ (9 ** 99999999) % 7 }}", "\udcff"])))
        else:
            etype, items = value
            mode = draw(st.sampled_from(["short", "empty", "nested", "mixed", "long-item", "bad-merge"]))
            if mode == "short":
                items = items[: len(items) // 2]
            elif mode == "empty":
                items = []
            elif mode == "nested":
                etype, items = _ARRAY, [(etype, items[:3])] * 3
            elif mode == "mixed" and etype == _STRING:
                etype, items = 4, list(range(len(items)))
            elif mode == "long-item" and etype == _STRING:
                items = [items[0] * 70000] + items[1:]
            elif mode == "bad-merge" and etype == _STRING:
                items = items + ["zz qq", "nospace", " a"]
            kvs[i] = (key, _ARRAY, (etype, items))
    elif how == "tensor":
        j = draw(st.integers(0, len(tensors) - 1))
        field = draw(st.sampled_from(["ne", "type", "offset", "name", "overlap"]))
        name, ne, gtype, offset, data = tensors[j]
        if field == "ne":
            ne = draw(st.sampled_from([[2**32, 2**32], [0, 4], [ne[0]], ne + [1], [ne[0] * 2] + ne[1:], [1] * 5,
                                       [2**63, 2]]))
        elif field == "type":
            gtype = draw(st.sampled_from([1, 2, 8, 12, 14, 99, 30, 2**31]))
        elif field == "offset":
            offset = draw(st.sampled_from([1, 2**40, 2**64 - 32, 0, offset + 32]))
        elif field == "name":
            name = draw(st.sampled_from(["blk.9.attn_q.weight", "blk.0.attn_q.weight", "output.weight", "x", ""]))
        else:
            offset = tensors[0][3]
        tensors[j] = [name, ne, gtype, offset, data]
    blob = write_gguf_lenient(kvs, tensors)
    if how == "bytes":
        raw = bytearray(blob)
        end = min(len(raw), 4096)
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(4, end - 8))
            raw[at:at + 8] = struct.pack("<Q", draw(st.sampled_from(_INTS)))
        return bytes(raw)
    if how == "truncate":
        return blob[:draw(st.integers(0, len(blob) - 1))]
    return blob


def write_gguf_lenient(kvs: list, tensors: list) -> bytes:
    """:func:`write_gguf` that also writes tensors whose offsets are out of range (only the header
    says so: the data is placed where it fits)."""
    safe, data_end = [], 0
    for name, ne, gtype, offset, data in tensors:
        safe.append((name, ne, gtype, offset, data))
        data_end = max(data_end, min(offset, 1 << 20) + len(data))
    out = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(kvs))]
    for key, vtype, value in kvs:
        out += [_value_bytes(_STRING, key), struct.pack("<I", vtype), _value_bytes(vtype, value)]
    for name, ne, gtype, offset, _ in safe:
        out += [_value_bytes(_STRING, name), struct.pack("<I", len(ne)), struct.pack(f"<{len(ne)}Q", *ne),
                struct.pack("<IQ", gtype % 2**32, offset % 2**64)]
    head = b"".join(out)
    head += b"\0" * (-len(head) % 32)
    body = bytearray(data_end + (-data_end % 32))
    for _, _, _, offset, data in safe:
        if offset < 1 << 20:
            body[offset:offset + len(data)] = data
    return head + bytes(body)


def safetensors_mutation(draw, raw: bytes) -> bytes:
    """One hostile change of a safetensors file's header (the payload stays), or of its length field."""
    st = _strategies()
    (n,) = struct.unpack("<Q", raw[:8])
    header, payload = raw[8:8 + n].decode(), raw[8 + n:]
    if draw(st.integers(0, 9)) == 0:
        return struct.pack("<Q", draw(st.sampled_from(_INTS))) + raw[8:]
    new = json_mutation(draw, header)
    return struct.pack("<Q", len(new)) + new + payload


def template_mutation(draw, source: str) -> bytes:
    """A chat template with hostile snippets spliced in (or invalid UTF-8, or cut)."""
    st = _strategies()
    out = source
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(out)))
        out = out[:at] + draw(st.sampled_from(TEMPLATE_SNIPPETS)) + out[at:]
    raw = out.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:
        raw = raw[:draw(st.integers(0, len(raw)))] + b"\xff\xfe"
    return raw


# -- the driver -----------------------------------------------------------------------------------
def _write_example(kind: str, draw, base: Path, work: Path) -> Path:
    """Write one mutated input of ``kind`` under ``work``; returns what check_input opens."""
    import shutil

    if kind == "gguf":
        path = work / "model.gguf"
        path.write_bytes(gguf_mutation(draw, *tiny_gguf_parts()))
        return path
    if kind == "template":
        path = work / "chat_template.jinja"
        path.write_bytes(template_mutation(draw, _CHATML))
        return path
    folder = work / "model"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(base, folder)
    if kind == "safetensors":
        f = folder / "model.safetensors"
        f.write_bytes(safetensors_mutation(draw, f.read_bytes()))
    elif kind == "config":
        f = folder / "config.json"
        f.write_bytes(json_mutation(draw, f.read_text()))
    else:
        name = _strategies().sampled_from(["tokenizer.json", "tokenizer.json", "tokenizer_config.json"])
        f = folder / draw(name)
        f.write_bytes(json_mutation(draw, f.read_text()))
    return folder


def fuzz(kind: str, examples: int | None = None, *, seed: int | None = None, worker: Worker | None = None,
         seconds: float = 60.0, memory_mb: int = 6144) -> dict[str, int]:
    """Run ``examples`` hypothesis-mutated inputs of ``kind`` (one of :data:`KINDS`) through
    :func:`check_input` in a bounded worker process. Returns how many ended in each outcome
    (``"ok"`` or the library error's name); raises :class:`FuzzFailure` naming the first input
    that did neither. ``examples`` defaults to ``$FUZZ_EXAMPLES`` or 50; runs are reproducible
    unless ``seed`` (or ``$FUZZ_SEED``) is given."""
    from hypothesis import HealthCheck, given, settings, strategies as st

    if kind not in KINDS:
        raise ValueError(f"unknown fuzz kind {kind!r}; one of {KINDS}")
    n = examples if examples is not None else int(os.environ.get("FUZZ_EXAMPLES", "50"))
    seed = seed if seed is not None else (int(os.environ["FUZZ_SEED"]) if os.environ.get("FUZZ_SEED") else None)
    counts: dict[str, int] = {}
    own = worker is None
    worker = worker or Worker(memory_mb=memory_mb, seconds=seconds)
    with tempfile.TemporaryDirectory(prefix=f"axon-fuzz-{kind}-") as tmp:
        tmp = Path(tmp)
        base = tiny_hf_folder(tmp / "base") if kind in ("safetensors", "config", "tokenizer") else tmp

        @settings(max_examples=n, deadline=None, database=None, derandomize=seed is None,
                  suppress_health_check=list(HealthCheck), phases=[p for p in __import__("hypothesis").Phase
                                                                   if p.name != "shrink"])
        @given(st.data())
        def one(data):
            work = tmp / "work"
            work.mkdir(exist_ok=True)
            path = _write_example(kind, data.draw, base, work)
            t0 = time.monotonic()
            answer = worker.check(kind, path)
            if answer["status"] == "fail":
                keep = Path(tempfile.mkdtemp(prefix=f"axon-fuzz-failure-{kind}-"))
                import shutil

                (shutil.copytree if path.is_dir() else shutil.copy)(path, keep / path.name)
                raise FuzzFailure(f"{kind} input kept in {keep / path.name}: {answer['detail']} "
                                  f"({time.monotonic() - t0:.1f} s)")
            counts[answer["detail"] if answer["status"] == "error" else "ok"] = \
                counts.get(answer["detail"] if answer["status"] == "error" else "ok", 0) + 1

        if seed is not None:
            one = __import__("hypothesis").seed(seed)(one)
        try:
            one()
        finally:
            if own:
                worker.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    """``python -m axon_llm.fuzz [KIND ...] [--examples N]`` (and the worker's entry point)."""
    import argparse

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        _worker_main(int(argv[1]))
        return 0
    p = argparse.ArgumentParser(prog="python -m axon_llm.fuzz", description="Fuzz axon_llm's loaders.")
    p.add_argument("kinds", nargs="*", metavar="KIND", help=f"what to fuzz: {', '.join(KINDS)} (default: all)")
    p.add_argument("--examples", type=int, default=None, help="examples per kind (default $FUZZ_EXAMPLES or 50)")
    p.add_argument("--seed", type=int, default=None, help="a random seed (default: reproducible)")
    args = p.parse_args(argv)
    unknown = sorted(set(args.kinds) - set(KINDS))
    if unknown:
        p.error(f"unknown kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    with Worker() as w:
        for kind in args.kinds or KINDS:
            try:
                print(kind, fuzz(kind, args.examples, seed=args.seed, worker=w), flush=True)
            except FuzzFailure as e:
                print(f"{kind}: FAILURE {e}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
