"""Limits on untrusted input: the checks every loader, generate and train run before they allocate.

A model file, a config.json, a tokenizer or a download mirror may be hostile. Everything that
reads one goes through the few helpers here, so the promises of ``docs/security.md`` are kept
in one place:

* :data:`CEILINGS` -- the largest count a real model has, with a wide margin (a GGUF declaring
  ``block_count = 2**31`` is rejected before one layer is built);
* :func:`check_count`, :func:`check_float` -- integers in a range, floats finite and in a range,
  with an error naming the field;
* :func:`read_json_text`, :func:`read_json_file` -- JSON whose nesting depth is bounded (a 200 KB
  header of ``[[[[...`` raises the library's error, not ``RecursionError``);
* :func:`inside_folder` -- a relative path from a file (a shard of a safetensors index) that must
  stay inside the model folder;
* :func:`check_disjoint` -- byte ranges of tensors that must not overlap;
* :func:`available_memory`, :func:`check_memory` -- the resource budget: a size that would need
  more memory than the machine has left fails before the allocation, naming the setting to lower.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable

from axon_llm.errors import ConfigError, LLMError, ModelFormatError

#: the largest value of a count that any real model has, with a wide margin; a file that declares more is rejected
CEILINGS: dict[str, int] = {
    "layers": 1024,             # Llama-3.1-405B: 126
    "vocab": 1 << 22,           # Gemma: 262144
    "hidden": 1 << 17,          # Llama-3.1-405B: 16384
    "intermediate": 1 << 20,    # Llama-3.1-405B: 53248
    "heads": 1 << 12,
    "head_dim": 1 << 13,
    "experts": 1 << 12,
    "positions": 1 << 24,       # 16M tokens (RoPE tables grow with the positions used, not up front)
    "labels": 1 << 17,
    "token_id": (1 << 31) - 1,
    "state": 1 << 14,
    "kernel": 1 << 10,
    "token_chars": 1 << 16,     # characters of one vocabulary entry
}

#: nesting deeper than this in a JSON file (config.json, a safetensors header, an index) is rejected
MAX_JSON_DEPTH = 64


def check_count(value: Any, what: str, *, lo: int = 0, hi: int | None = None, error: type[LLMError] = ModelFormatError) -> int:
    """``value`` as a Python int if it is an integer in ``[lo, hi]`` (bools and floats are not), else ``error``."""
    import numpy as np

    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise error(f"{what} must be an integer, got {_short(value)} ({type(value).__name__})")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise error(f"{what} must be an integer in {bound}, got {value}")
    return value


def check_float(value: Any, what: str, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                error: type[LLMError] = ModelFormatError) -> float:
    """``value`` as a float if it is a finite real number (not a bool) in the range, else ``error``."""
    import numpy as np

    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise error(f"{what} must be a number, got {_short(value)} ({type(value).__name__})")
    try:
        x = float(value)
    except OverflowError:
        raise error(f"{what} must be a finite number, got an integer of {int(value).bit_length()} bits") from None
    if not math.isfinite(x):
        raise error(f"{what} must be a finite number, got {x}")
    if lo is not None and (x <= lo if lo_open else x < lo):
        raise error(f"{what} must be {'>' if lo_open else '>='} {lo}, got {x}")
    if hi is not None and x > hi:
        raise error(f"{what} must be <= {hi}, got {x}")
    return x


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")


def _depth_ok(text: str, limit: int) -> bool:
    """True when brackets outside strings nest at most ``limit`` deep (regexes plus a loop over
    the brackets alone: no recursion, linear time)."""
    if text.count("[") + text.count("{") <= limit:
        return True
    depth = 0
    for ch in _NOT_BRACKETS.sub("", _STRINGS.sub("", text)):
        if ch in "[{":
            depth += 1
            if depth > limit:
                return False
        else:
            depth -= 1
    return True


def read_json_text(text: str | bytes, what: str, *, error: type[LLMError] = ModelFormatError,
                   max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON from an untrusted source: invalid UTF-8, invalid JSON and nesting deeper than
    ``max_depth`` raise ``error`` naming ``what`` (never ``UnicodeDecodeError`` or ``RecursionError``)."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise error(f"{what} is not valid UTF-8 ({e})") from None
    if not _depth_ok(text, max_depth):
        raise error(f"{what} nests arrays/objects more than {max_depth} deep")
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError) as e:
        raise error(f"{what} is not valid JSON: {e}") from None
    if _SURROGATE_ESCAPE.search(text) and not _valid_unicode(doc):
        raise error(f"{what} holds a string with a lone surrogate (\\ud800-\\udfff escape): not valid Unicode")
    return doc


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _valid_unicode(doc: Any) -> bool:
    """True when every string (key or value) of a parsed JSON document encodes to UTF-8 (an iterative walk)."""
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(node, dict):
            stack += list(node.keys()) + list(node.values())
        elif isinstance(node, list):
            stack += node
    return True


def read_json_file(path: str | os.PathLike, *, error: type[LLMError] = ModelFormatError,
                   max_bytes: int = 1 << 30) -> Any:
    """:func:`read_json_text` of a file, refusing one larger than ``max_bytes`` before reading it."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise error(f"{path} is not a regular file")
        if size > max_bytes:
            raise error(f"{path} is {size} bytes; a JSON file here may have at most {max_bytes}")
        data = path.read_bytes()
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror or e}") from None
    return read_json_text(data, str(path), error=error)


def read_text_file(path: str | os.PathLike, what: str, *, error: type[LLMError] = ModelFormatError,
                   max_bytes: int = 1 << 26) -> str:
    """A UTF-8 text file (a chat template ...): too large or invalid UTF-8 raise ``error``."""
    path = Path(path)
    try:
        if path.stat().st_size > max_bytes:
            raise error(f"{what} {path} is larger than {max_bytes} bytes")
        data = path.read_bytes()
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not valid UTF-8 ({e})") from None


def inside_folder(folder: str | os.PathLike, name: Any, what: str) -> Path:
    """``folder / name`` for a relative, forward-slash path named by a file; absolute paths, ``..``,
    backslashes, NUL bytes and non-strings raise :class:`ModelFormatError`. The check is lexical
    (the last component may be a symlink, as in a hub cache snapshot), so the path names a file
    inside ``folder`` whatever the current directory is."""
    if not isinstance(name, str) or not name:
        raise ModelFormatError(f"{what} must be a non-empty string, got {_short(name)}")
    if "\x00" in name or "\\" in name or name.startswith("/") or os.path.isabs(name) or ":" in name.split("/")[0]:
        raise ModelFormatError(f"{what} {name!r} must be a relative path inside {folder}")
    parts = PurePosixPath(name).parts
    if any(p in ("..", ".") for p in parts) or not parts:
        raise ModelFormatError(f"{what} {name!r} leaves the model folder {folder}")
    return Path(folder).joinpath(*parts)


def check_disjoint(ranges: Iterable[tuple[int, int, str]], what: str) -> None:
    """Raise :class:`ModelFormatError` when two ``(start, end, name)`` byte ranges overlap."""
    prev_end, prev_name = None, None
    for start, end, name in sorted(ranges, key=lambda r: (r[0], r[1])):
        if start == end:
            continue
        if prev_end is not None and start < prev_end:
            raise ModelFormatError(f"{what}: the data of tensor {name!r} (bytes {start}..{end}) overlaps "
                                   f"tensor {prev_name!r} (ends at {prev_end})")
        prev_end, prev_name = end, name


def available_memory() -> int | None:
    """Bytes of memory this process can still use: ``MemAvailable`` (Linux) bounded by ``RLIMIT_AS``
    less what is mapped; None when neither can be read."""
    found: list[int] = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft not in (resource.RLIM_INFINITY, -1):
            used = 0
            try:
                with open("/proc/self/statm") as f:
                    used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, ValueError):
                pass
            found.append(max(soft - used, 0))
    except (ImportError, ValueError, OSError):
        pass
    return min(found) if found else None


def check_memory(nbytes: int, what: str, hint: str, error: type[LLMError]) -> None:
    """Raise ``error`` when ``nbytes`` exceeds the memory left (:func:`available_memory`), naming
    what needs it and ``hint`` (the setting to lower)."""
    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise error(f"{what} needs about {_gb(nbytes)} but only {_gb(avail)} of memory is available; {hint}")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def check_config_against_file(config, stored_elements: int, where: str) -> None:
    """Before a model is built: the parameters its config declares must be (about) what the file
    stores, and fit in memory as float32. A config.json claiming a million layers over a 1 MB
    checkpoint fails here, not after allocating."""
    count = getattr(config, "num_parameters", None)
    if count is None:
        return
    try:
        n = int(count())
    except (TypeError, ValueError, OverflowError, AttributeError):
        return
    if n > 2 * stored_elements + (1 << 20):
        raise ModelFormatError(f"{where}: the config declares {n:,} parameters but the checkpoint stores only "
                               f"{stored_elements:,} values")
    check_memory(4 * n, f"{where} ({n:,} parameters as float32)", "use a smaller model", ConfigError)


def guard(fn: Callable[[], Any], what: str, error: type[LLMError]) -> Any:
    """Run ``fn``; a library error passes through, any other exception becomes ``error`` naming
    ``what`` (for third-party builders, e.g. the ``tokenizers`` library, whose errors are plain)."""
    try:
        return fn()
    except LLMError:
        raise
    except (MemoryError, RecursionError) as e:
        raise error(f"{what}: {type(e).__name__}") from None
    except Exception as e:   # noqa: BLE001 - a third-party builder: its message names the problem
        raise error(f"{what}: {type(e).__name__}: {_short(str(e)) if len(str(e)) > 300 else e}") from None


__all__ = [
    "CEILINGS", "MAX_JSON_DEPTH", "check_count", "check_float", "read_json_text", "read_json_file",
    "read_text_file", "inside_folder", "check_disjoint", "available_memory", "check_memory",
    "check_config_against_file", "guard",
]
