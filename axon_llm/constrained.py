"""JSON-schema constrained decoding: a token mask per step so that the output is valid JSON.

Three layers, each testable alone:

1. :func:`compile_schema` turns a JSON schema (a dict) into :class:`SchemaNode` objects
   (supported: ``type`` — one or a list — ``object`` with ``properties`` / ``required`` /
   ``additionalProperties``, ``array`` with ``items`` / ``minItems`` / ``maxItems``, ``string``,
   ``number``, ``integer``, ``boolean``, ``null``, ``enum``, ``const``, ``anyOf`` / ``oneOf`` of
   branches of different types, non-recursive ``$ref`` into ``$defs``; annotations such as
   ``title`` are ignored). Anything else raises :class:`~axon_llm.errors.InputError`.
2. A byte-level pushdown recogniser: a state is an immutable tuple of frames (bottom first),
   :func:`step` feeds one byte and returns the next state or None (the byte cannot come next).
   :func:`min_completion` counts the bytes still needed to close the document.
3. :class:`JsonTokenIndex` walks a trie of the tokenizer's vocabulary (token -> bytes) from a
   state to find every token that keeps the output a valid prefix, cached per state. Inside a
   string (most of the work) every "plain" token — no quote, backslash or control byte — keeps
   the state as it is, so only the few thousand tokens holding such a byte are walked.

:class:`JsonConstraint` is one sequence's state: ``allowed(remaining)`` is the mask of the next
token, ``advance(token)`` moves on. Termination: a token is allowed only if the document can
still be closed within the remaining token budget (``min_completion(next state) <= remaining -
1``; every byte has a one-byte token, checked when the index is built), so a constrained
generation of ``max_new_tokens`` always ends in a complete, valid document; EOS is allowed
only when the document is complete. Whitespace: one optional space before a value (after
``:``, ``,``, ``[`` or at the start) and before a key after ``,`` (as models write it), none
elsewhere. Object keys may not contain ``"``, ``\\`` or
control characters.

Reference: :func:`allowed_tokens_ref` (every token fed byte by byte, no trie, no cache).
"""

from __future__ import annotations

import json
import math
import weakref
from collections import OrderedDict

import numpy as np

from axon_llm.errors import InputError

__all__ = ["SchemaNode", "compile_schema", "schema_from_response_format", "initial_state", "step",
           "feed", "min_completion", "can_finish", "is_done", "token_bytes", "JsonTokenIndex",
           "JsonConstraint", "allowed_tokens_ref", "token_index"]

_KINDS = ("object", "array", "string", "number", "integer", "boolean", "null")
_ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "strict",
                "deprecated", "readOnly", "writeOnly", "$defs", "definitions"}
_KEYWORDS = {"type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
             "enum", "const", "anyOf", "oneOf", "$ref"}
_INF = math.inf
_QUOTE, _BSLASH, _SPACE = 0x22, 0x5C, 0x20
_DIGITS = frozenset(range(0x30, 0x3A))
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = frozenset(b'"\\/bfnrt')


class SchemaNode:
    """One compiled schema: the value ``kinds`` it allows (or fixed ``literals``, JSON-encoded
    bytes, for ``enum``/``const``) and, per kind, the sub-schemas. ``min_len`` is the length in
    bytes of the shortest valid value."""

    def __init__(self):
        self.kinds: frozenset = frozenset()
        self.literals: tuple[bytes, ...] | None = None
        self.properties: dict[bytes, SchemaNode] = {}
        self.required: frozenset = frozenset()
        self.additional: SchemaNode | None = None       # None = additionalProperties false
        self.items: SchemaNode | None = None
        self.min_items, self.max_items = 0, None
        self.min_len = 1

    @property
    def free_keys(self) -> bool:
        """Any key allowed and none named: the key text is not tracked (any string)."""
        return not self.properties and self.additional is not None

    def child(self, key: bytes) -> "SchemaNode | None":
        """Schema of the value under ``key`` (None when the key is not allowed)."""
        return self.properties.get(key, self.additional)


def _any_node() -> SchemaNode:
    node = SchemaNode()
    node.kinds = frozenset(_KINDS) - {"integer"}
    node.additional = node.items = node
    node.min_len = 1
    return node


ANY = _any_node()


def _key_cost(name: bytes, node: SchemaNode) -> int:
    return len(name) + 2 + 1 + node.min_len        # "name" : value


def _min_len(node: SchemaNode) -> float:
    if node.literals is not None:
        return min(len(x) for x in node.literals)
    best = _INF
    for kind in node.kinds:
        if kind == "string":
            best = min(best, 2)
        elif kind in ("number", "integer"):
            best = min(best, 1)
        elif kind in ("boolean", "null"):
            best = min(best, 4)
        elif kind == "object":
            req = [_key_cost(k, node.properties[k]) for k in node.required]
            best = min(best, 2 + sum(req) + max(0, len(req) - 1))
        elif kind == "array":
            best = min(best, 2 + node.min_items * node.items.min_len + max(0, node.min_items - 1))
    return best


def _bad(msg: str):
    raise InputError(f"invalid or unsupported JSON schema: {msg}")


def compile_schema(schema) -> SchemaNode:
    """A JSON schema (dict, or ``True`` / ``{}`` for any value) -> :class:`SchemaNode`."""
    if schema is True or schema == {}:
        return ANY
    if not isinstance(schema, dict):
        _bad(f"a schema must be a JSON object, got {type(schema).__name__}")
    defs = {}
    for key in ("$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            defs.update({f"#/{key}/{name}": s for name, s in schema[key].items()})
    return _compile(schema, defs, (), "#")


def _compile(schema, defs: dict, refs: tuple, where: str) -> SchemaNode:
    if schema is True or schema == {}:
        return ANY
    if not isinstance(schema, dict):
        _bad(f"{where} must be an object, got {json.dumps(schema)[:60]}")
    unknown = sorted(set(schema) - _KEYWORDS - _ANNOTATIONS)
    if unknown:
        _bad(f"{where}: keyword {unknown[0]!r} is not supported (supported: {', '.join(sorted(_KEYWORDS))})")
    if "$ref" in schema:
        ref = schema["$ref"]
        if ref not in defs:
            _bad(f"{where}: $ref {ref!r} does not point into $defs")
        if ref in refs:
            _bad(f"{where}: recursive $ref {ref!r} is not supported")
        return _compile(defs[ref], defs, refs + (ref,), ref)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return _union(schema[key], defs, refs, f"{where}/{key}")
    node = SchemaNode()
    if "enum" in schema or "const" in schema:
        values = [schema["const"]] if "const" in schema else schema["enum"]
        if not isinstance(values, list) or not values:
            _bad(f"{where}: enum must be a non-empty list")
        node.literals = tuple(dict.fromkeys(json.dumps(v, ensure_ascii=False, separators=(",", ":")).encode()
                                            for v in values))
        node.min_len = _min_len(node)
        return node
    kinds = schema.get("type", list(_KINDS))
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if not isinstance(kinds, list) or not kinds or any(k not in _KINDS for k in kinds):
        _bad(f"{where}: type must be one of {', '.join(_KINDS)} (or a list of them), got {kinds!r}")
    if "number" in kinds and "integer" in kinds:
        kinds = [k for k in kinds if k != "integer"]
    node.kinds = frozenset(kinds)
    props = schema.get("properties", {})
    if not isinstance(props, dict):
        _bad(f"{where}: properties must be an object")
    for name, sub in props.items():
        if any(c in name for c in '"\\') or any(ord(c) < 0x20 for c in name):
            _bad(f"{where}: property name {name!r} holds a quote, backslash or control character")
        node.properties[name.encode()] = _compile(sub, defs, refs, f"{where}/properties/{name}")
    required = schema.get("required", [])
    if not isinstance(required, list) or any(not isinstance(r, str) for r in required):
        _bad(f"{where}: required must be a list of strings")
    extra = schema.get("additionalProperties", True)
    node.additional = None if extra is False else _compile(extra, defs, refs, f"{where}/additionalProperties")
    for r in required:
        if r.encode() not in node.properties:
            if node.additional is None:
                _bad(f"{where}: required property {r!r} is not in properties and additionalProperties is false")
            node.properties[r.encode()] = node.additional
    node.required = frozenset(r.encode() for r in required)
    node.items = _compile(schema.get("items", True), defs, refs, f"{where}/items")
    node.min_items, node.max_items = schema.get("minItems", 0), schema.get("maxItems")
    for v in (node.min_items, node.max_items):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            _bad(f"{where}: minItems/maxItems must be integers >= 0")
    if node.max_items is not None and node.max_items < node.min_items:
        _bad(f"{where}: maxItems < minItems")
    node.min_len = _min_len(node)
    if node.min_len == _INF:
        _bad(f"{where}: no value can satisfy it")
    return node


def _union(branches, defs, refs, where) -> SchemaNode:
    """anyOf/oneOf whose branches start with different characters: merged into one node."""
    if not isinstance(branches, list) or not branches:
        _bad(f"{where} must be a non-empty list")
    parts = [_compile(b, defs, refs, f"{where}/{i}") for i, b in enumerate(branches)]
    if len(parts) == 1:
        return parts[0]
    node = SchemaNode()
    for p in parts:
        if p.literals is not None or p is ANY:
            _bad(f"{where}: enum/const or unconstrained branches in anyOf/oneOf are not supported")
        for kind in p.kinds:
            group = "number" if kind == "integer" else kind
            if any(("number" if k == "integer" else k) == group for k in node.kinds):
                _bad(f"{where}: two branches allow {group}s (branches must have different types)")
        node.kinds |= p.kinds
        if "object" in p.kinds:
            node.properties, node.required, node.additional = p.properties, p.required, p.additional
        if "array" in p.kinds:
            node.items, node.min_items, node.max_items = p.items, p.min_items, p.max_items
    node.items = node.items or ANY
    node.min_len = _min_len(node)
    return node


def schema_from_response_format(response_format) -> dict | None:
    """OpenAI's ``response_format`` -> a schema (None for ``{"type": "text"}``).
    ``{"type": "json_object"}`` is any JSON object; ``{"type": "json_schema", "json_schema":
    {"schema": ...}}`` the given one."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict) or not isinstance(response_format.get("type"), str):
        raise InputError("response_format must be an object with a string 'type'")
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise InputError("response_format json_schema needs {'json_schema': {'schema': {...}}}")
        return spec["schema"]
    raise InputError(f"response_format type must be text, json_object or json_schema, got {kind!r}")


# ------------------------------------------------------------------------------------------------
# the recogniser: frames are tuples; a state is a tuple of frames, bottom first
#   ("R",)                                   the document (done when it is the only frame)
#   ("V", node, spaced)                      a value of `node` must start here
#   ("O", node, phase, used, key)            object: 0 after '{', 1 in a key (key = bytes so far,
#                                            None when free_keys), 2 after the key, 3 after a value,
#                                            4 after ',', 5 after ', '
#   ("A", node, phase, count)                array: 0 after '[', 3 after an item, 4 after ','
#   ("S", phase)                             string body: 0, 1 after '\', 2..5 in '\uXXXX'
#   ("N", integer, phase)                    number, phase one of - 0 I . F E S X
#   ("L", options, text)                     a literal (true/false/null/enum), `text` matched so far
# ------------------------------------------------------------------------------------------------
def initial_state(node: SchemaNode) -> tuple:
    """The state before the first byte of a document of ``node``."""
    return (("R",), ("V", node, False))


_NUM_DONE = frozenset("0IFX")


def _object_can_add(node: SchemaNode, used: frozenset) -> bool:
    return node.additional is not None or any(k not in used for k in node.properties)


def _frame_step(f: tuple, c: int):
    """(action, frames): action 'set' replaces the frame by `frames` (the byte is consumed),
    'feed' replaces it and feeds the byte to the new top, 'close' removes the frame (consumed),
    'pop' removes it and feeds the byte to the parent; None rejects the byte."""
    kind = f[0]
    if kind == "S":
        phase = f[1]
        if phase == 0:
            if c == _QUOTE:
                return "close", ()
            if c == _BSLASH:
                return "set", (("S", 1),)
            return None if c < 0x20 else ("set", (f,))
        if phase == 1:
            if c in _ESCAPES:
                return "set", (("S", 0),)
            return ("set", (("S", 2),)) if c == 0x75 else None
        if c in _HEX:
            return "set", (("S", 0 if phase == 5 else phase + 1),)
        return None
    if kind == "V":
        node, spaced = f[1], f[2]
        if c == _SPACE:
            return None if spaced else ("set", (("V", node, True),))
        if node.literals is not None:
            return "feed", (("L", node.literals, b""),)
        k = node.kinds
        if c == _QUOTE and "string" in k:
            return "set", (("S", 0),)
        if c == 0x7B and "object" in k:
            return "set", (("O", node, 0, frozenset(), None),)
        if c == 0x5B and "array" in k:
            return "set", (("A", node, 0, 0),)
        if (c == 0x2D or c in _DIGITS) and ("number" in k or "integer" in k):
            return "feed", (("N", "number" not in k, ""),)
        if c in (0x74, 0x66) and "boolean" in k:
            return "feed", (("L", (b"true", b"false"), b""),)
        if c == 0x6E and "null" in k:
            return "feed", (("L", (b"null",), b""),)
        return None
    if kind == "N":
        integer, phase = f[1], f[2]
        digit = c in _DIGITS
        nxt = None
        if phase == "":
            nxt = "-" if c == 0x2D else "0" if c == 0x30 else "I" if digit else None
        elif phase == "-":
            nxt = "0" if c == 0x30 else "I" if digit else None
        elif phase in ("0", "I", "F") and not integer and c in (0x65, 0x45):
            nxt = "E"
        elif phase in ("0", "I") and not integer and c == 0x2E:
            nxt = "."
        elif phase in ("I", "F", "X") and digit:
            nxt = phase
        elif phase == "." and digit:
            nxt = "F"
        elif phase == "E":
            nxt = "S" if c in (0x2B, 0x2D) else "X" if digit else None
        elif phase == "S" and digit:
            nxt = "X"
        if nxt is not None:
            return "set", (("N", integer, nxt),)
        if phase in _NUM_DONE and not (phase == "0" and digit):
            return "pop", ()
        return None
    if kind == "L":
        options, text = f[1], f[2]
        new = text + bytes((c,))
        longer = [o for o in options if o.startswith(new)]
        if longer:
            if new in options and len(longer) == 1:
                return "close", ()
            return "set", (("L", options, new),)
        return ("pop", ()) if text in options else None
    if kind == "O":
        node, phase, used, key = f[1], f[2], f[3], f[4]
        if phase == 1:
            if c == _QUOTE:
                if key is None:
                    return "set", (("O", node, 2, used, None),)
                if key in used or node.child(key) is None:
                    return None
                return "set", (("O", node, 2, used, key),)
            if c == _BSLASH or c < 0x20:
                return None
            if key is None:
                return "set", (f,)
            new = key + bytes((c,))
            if node.additional is None and not any(k.startswith(new) and k not in used for k in node.properties):
                return None
            return "set", (("O", node, 1, used, new),)
        if phase == 2:
            if c != 0x3A:
                return None
            child = node.additional if key is None else node.child(key)
            used = used if key is None else used | {key}
            return "set", (("O", node, 3, used, None), ("V", child, False))
        if phase in (0, 4, 5) and c == _QUOTE:
            if not _object_can_add(node, used):
                return None
            return "set", (("O", node, 1, used, None if node.free_keys else b""),)
        if phase == 4 and c == _SPACE:
            return "set", (("O", node, 5, used, None),)
        if phase in (0, 3) and c == 0x7D:
            return ("close", ()) if node.required <= used else None
        if phase == 3 and c == 0x2C:
            return ("set", (("O", node, 4, used, None),)) if _object_can_add(node, used) else None
        return None
    if kind == "A":
        node, phase, count = f[1], f[2], f[3]
        if phase in (0, 3) and c == 0x5D:
            return ("close", ()) if count >= node.min_items else None
        if phase == 3:
            if c == 0x2C and (node.max_items is None or count < node.max_items):
                return "set", (("A", node, 4, count),)
            return None
        if node.max_items is not None and count >= node.max_items:
            return None
        return "feed", (("A", node, 3, count + 1), ("V", node.items, False))
    return None                                                   # "R": nothing after the document


def step(state: tuple, c: int):
    """The state after byte ``c`` (an int 0..255), or None when ``c`` cannot come next."""
    while True:
        if not state:
            return None
        res = _frame_step(state[-1], c)
        if res is None:
            return None
        action, frames = res
        base = state[:-1]
        if action == "set":
            return base + frames
        if action == "close":
            return base
        state = base + frames if action == "feed" else base   # feed: the new top gets it; pop: the parent


def feed(state: tuple, data: bytes):
    """``step`` over every byte of ``data`` (None as soon as one is rejected)."""
    for c in data:
        state = step(state, c)
        if state is None:
            return None
    return state


def _object_rest(node: SchemaNode, used: frozenset, after_value: bool) -> float:
    """Bytes to close an object whose keys ``used`` are written (after a value when ``after_value``)."""
    missing = [_key_cost(k, node.properties[k]) for k in node.required if k not in used]
    commas = len(missing) if after_value else max(0, len(missing) - 1)
    return sum(missing) + commas + 1


def _frame_cost(f: tuple) -> float:
    kind = f[0]
    if kind == "R":
        return 0
    if kind == "V":
        return f[1].min_len
    if kind == "S":
        return 1 if f[1] == 0 else 2 if f[1] == 1 else 7 - f[1]     # quote; escape + quote; hex left + quote
    if kind == "N":
        return 1 if f[2] in ("", "-", ".", "E", "S") else 0
    if kind == "L":
        return min(len(o) - len(f[2]) for o in f[1] if o.startswith(f[2]))
    if kind == "A":
        node, phase, count = f[1], f[2], f[3]
        if phase == 0:
            k = node.min_items
            return k * node.items.min_len + max(0, k - 1) + 1
        if phase == 3:
            k = max(0, node.min_items - count)
            return k * (1 + node.items.min_len) + 1
        k = max(1, node.min_items - count)
        return k * node.items.min_len + (k - 1) + 1
    node, phase, used, key = f[1], f[2], f[3], f[4]                 # "O"
    if phase == 0:
        return _object_rest(node, used, False)
    if phase == 3:
        return _object_rest(node, used, True)
    if phase in (1, 2):
        if key is None:                                            # free key: close it
            close = (1 if phase == 1 else 0) + 1 + node.additional.min_len
            return close + _object_rest(node, used, True)
        options = []
        for name, child in node.properties.items():
            if name.startswith(key) and name not in used and (phase == 1 or name == key):
                options.append((len(name) - len(key), child, name))
        if node.additional is not None and key not in node.properties and key not in used:
            options.append((0, node.additional, key))
        best = _INF
        for extra, child, name in options:
            cost = extra + (1 if phase == 1 else 0) + 1 + child.min_len + _object_rest(node, used | {name}, True)
            best = min(best, cost)
        return best
    missing = [k for k in node.required if k not in used]            # phase 4/5: a key must follow
    if missing:
        return _object_rest(node, used, False)
    if node.additional is not None:
        return 2 + 1 + node.additional.min_len + 1
    free = [_key_cost(k, c) for k, c in node.properties.items() if k not in used]
    return min(free) + 1 if free else _INF


def min_completion(state: tuple) -> float:
    """Fewest bytes that complete the document from ``state`` (inf for a dead end)."""
    return sum(_frame_cost(f) for f in state)


def _settle(state: tuple) -> tuple:
    """Pop the frames that are complete without another byte (a number, a literal)."""
    while state and len(state) > 1:
        f = state[-1]
        if f[0] == "N" and f[2] in _NUM_DONE or f[0] == "L" and f[2] in f[1]:
            state = state[:-1]
        else:
            break
    return state


def can_finish(state: tuple) -> bool:
    """True when the bytes so far are a complete document."""
    return _settle(state) == (("R",),)


def is_done(state: tuple) -> bool:
    """True when the document is complete and no byte can follow."""
    return state == (("R",),)


# ------------------------------------------------------------------------------------------------
# the vocabulary
# ------------------------------------------------------------------------------------------------
def _byte_level_inverse() -> dict[str, int]:
    """Byte-level BPE's character -> byte table (GPT-2's: printable bytes stand for themselves,
    the other 68 bytes, in order, for the characters U+0100 onwards)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(others)}}


def token_bytes(tokenizer) -> list[bytes | None]:
    """The bytes each token id writes (None for special / added tokens, which JSON never uses)."""
    backend = getattr(tokenizer, "backend", None)
    n = tokenizer.vocab_size
    special = set()
    if backend is not None:
        special = set(backend.get_added_tokens_decoder().keys())
    decoder = type(getattr(backend, "decoder", None)).__name__
    inverse = _byte_level_inverse()
    out: list[bytes | None] = []
    for tid in range(n):
        if tid in special:
            out.append(None)
            continue
        piece = tokenizer.id_to_token(tid)
        if piece is None:
            out.append(None)
        elif decoder == "ByteLevel":
            out.append(bytes(inverse[ch] for ch in piece) if all(ch in inverse for ch in piece) else None)
        elif piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            out.append(bytes([int(piece[3:5], 16)]))
        elif decoder in ("Metaspace", "Sequence"):
            out.append(piece.replace("\u2581", " ").encode())
        else:
            text = tokenizer.decode([tid])
            out.append(text.encode() if "\ufffd" not in text else None)
    return out


class _Trie:
    """Byte trie of tokens: ``children[byte] -> _Trie``, ``ids`` ending here."""

    __slots__ = ("children", "ids")

    def __init__(self):
        self.children: dict[int, _Trie] = {}
        self.ids: list[int] = []

    def add(self, data: bytes, tid: int) -> None:
        node = self
        for c in data:
            nxt = node.children.get(c)
            if nxt is None:
                nxt = node.children[c] = _Trie()
            node = nxt
        node.ids.append(tid)


def _is_plain(data: bytes) -> bool:
    return all(c >= 0x20 and c != _QUOTE and c != _BSLASH for c in data)


def _string_like(state: tuple) -> bool:
    """A state that every plain token keeps unchanged (inside a string or a free key)."""
    top = state[-1]
    return top == ("S", 0) or (top[0] == "O" and top[2] == 1 and top[4] is None)


class JsonTokenIndex:
    """The vocabulary as bytes, a trie of it, and a per-state cache of allowed tokens.

    ``allowed(state)`` -> ``(ids [n], cost [n])``: the tokens that may come next and the
    :func:`min_completion` of the state each one leads to. Build once per tokenizer."""

    CACHE_STATES = 4096

    def __init__(self, pieces: list[bytes | None], eos_token_ids=()):
        self.pieces = pieces
        self.vocab_size = len(pieces)
        self.eos_token_ids = tuple(int(e) for e in eos_token_ids)
        self.trie, self.special_trie = _Trie(), _Trie()
        plain = np.zeros(len(pieces), dtype=bool)
        singles = set()
        for tid, data in enumerate(pieces):
            if not data:
                continue
            if len(data) == 1:
                singles.add(data[0])
            self.trie.add(data, tid)
            if _is_plain(data):
                plain[tid] = True
            else:
                self.special_trie.add(data, tid)
        missing = [chr(c) for c in b'{}[]:,"-0123456789.eE+truefalsn ' if c not in singles]
        if missing:
            raise InputError(f"the tokenizer has no one-byte token for {''.join(missing)!r}; "
                             "JSON-constrained decoding needs them")
        self.plain_ids = np.flatnonzero(plain)
        self._cache: OrderedDict = OrderedDict()

    @classmethod
    def from_tokenizer(cls, tokenizer, eos_token_ids=None) -> "JsonTokenIndex":
        """The index of ``tokenizer``'s vocabulary (EOS ids default to the tokenizer's)."""
        if eos_token_ids is None:
            eos_token_ids = getattr(getattr(tokenizer, "special_tokens", None), "eos_token_ids", ()) or ()
        return cls(token_bytes(tokenizer), eos_token_ids)

    def allowed(self, state: tuple) -> tuple[np.ndarray, np.ndarray]:
        """Tokens that keep ``state`` a valid prefix and the completion cost after each."""
        hit = self._cache.get(state)
        if hit is not None:
            self._cache.move_to_end(state)
            return hit
        ids, costs = [], []
        root = self.trie
        if _string_like(state):
            root = self.special_trie
        todo = [(root, state)]
        while todo:
            node, st = todo.pop()
            for c, child in node.children.items():
                nxt = step(st, c)
                if nxt is None:
                    continue
                if child.ids:
                    cost = min_completion(nxt)
                    ids.extend(child.ids)
                    costs.extend([cost] * len(child.ids))
                if child.children:
                    todo.append((child, nxt))
        ids_arr = np.asarray(ids, dtype=np.int64)
        cost_arr = np.asarray(costs, dtype=np.float64)
        if root is self.special_trie:
            ids_arr = np.concatenate([self.plain_ids, ids_arr])
            cost_arr = np.concatenate([np.full(self.plain_ids.size, min_completion(state)), cost_arr])
        result = (ids_arr, cost_arr)
        self._cache[state] = result
        if len(self._cache) > self.CACHE_STATES:
            self._cache.popitem(last=False)
        return result


def allowed_tokens_ref(pieces: list[bytes | None], state: tuple) -> dict[int, float]:
    """Reference for :meth:`JsonTokenIndex.allowed`: each token fed byte by byte -> {id: cost}."""
    out = {}
    for tid, data in enumerate(pieces):
        if data:
            nxt = feed(state, data)
            if nxt is not None:
                out[tid] = min_completion(nxt)
    return out


_INDEXES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def token_index(tokenizer, eos_token_ids=()) -> JsonTokenIndex:
    """The :class:`JsonTokenIndex` of ``tokenizer`` with these EOS ids, built once and kept."""
    per_tok = _INDEXES.setdefault(tokenizer, {})
    key = tuple(int(e) for e in eos_token_ids)
    if key not in per_tok:
        base = next(iter(per_tok.values()), None)
        per_tok[key] = (JsonTokenIndex(base.pieces, key) if base is not None
                        else JsonTokenIndex.from_tokenizer(tokenizer, key))
    return per_tok[key]


class JsonConstraint:
    """One sequence's constraint: the mask of allowed next tokens and the state it moves through."""

    def __init__(self, index: JsonTokenIndex, schema):
        self.index = index
        self.node = schema if isinstance(schema, SchemaNode) else compile_schema(schema)
        self.state = initial_state(self.node)
        self.text = b""

    @property
    def min_tokens(self) -> float:
        """Tokens needed at least to write a complete document from here (one byte per token)."""
        return min_completion(self.state)

    @property
    def done(self) -> bool:
        """The document is complete and nothing can follow."""
        return is_done(self.state)

    def allowed(self, remaining: int) -> np.ndarray:
        """Boolean mask ``[V]`` of tokens allowed next when ``remaining`` tokens (this one
        included) may still be generated; EOS only once the document is complete."""
        mask = np.zeros(self.index.vocab_size, dtype=bool)
        if not self.done:
            ids, cost = self.index.allowed(self.state)
            mask[ids[cost <= remaining - 1]] = True
        if can_finish(self.state):
            mask[list(self.index.eos_token_ids)] = True
        return mask

    def advance(self, token_id: int) -> None:
        """Move past ``token_id`` (EOS and ids outside the grammar leave the state as it is)."""
        tid = int(token_id)
        if tid in self.index.eos_token_ids or not 0 <= tid < self.index.vocab_size:
            return
        data = self.index.pieces[tid]
        nxt = feed(self.state, data) if data else None
        if nxt is None:
            raise InputError(f"token {tid} ({data!r}) does not continue the JSON document {self.text[-40:]!r}")
        self.state = nxt
        self.text += data
