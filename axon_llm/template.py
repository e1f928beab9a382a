"""Chat templates rendered in a bounded jinja2 sandbox.

A chat template is code that comes with a model (``tokenizer_config.json``, ``chat_template.jinja``
or a GGUF file's ``tokenizer.chat_template``), so it runs under jinja2's
``ImmutableSandboxedEnvironment`` (no attribute of Python internals, no mutation of the messages)
plus limits that jinja2 does not have:

* **integer size** -- ``call_binop`` refuses ``**``, ``*`` and ``<<`` whose result would exceed
  :data:`MAX_INT_BITS` bits (``{{ (9 ** 99999999) % 7 }}`` fails at once instead of running for
  minutes), and ``str * n`` / ``list * n`` longer than :data:`MAX_OUTPUT_CHARS`;
* **loop iterations** -- ``range`` yields at most :data:`MAX_RANGE` items per call and
  :data:`MAX_ITERATIONS` in a whole rendering (nested ``range(99999)`` loops stop);
* **output size** -- rendering streams and stops past :data:`MAX_OUTPUT_CHARS` characters; a string
  that a filter or an attribute returns is bounded the same way;
* **time** -- :data:`MAX_SECONDS` of wall time, checked at every output chunk, attribute access,
  call, filter, operator and loop step, and enforced by a watchdog for anything else.

Every failure is a :class:`~axon_llm.errors.TokenizerError` naming the limit.
"""

from __future__ import annotations

import ctypes
import json
import threading
import time
from datetime import datetime
from typing import Any

from axon_llm.errors import TokenizerError

#: the largest integer a template may compute, in bits
MAX_INT_BITS = 4096
#: items one ``range()`` call may yield
MAX_RANGE = 100_000
#: loop steps over ``range`` in one rendering
MAX_ITERATIONS = 1_000_000
#: characters of output (and of any one string value made while rendering)
MAX_OUTPUT_CHARS = 16 * 1024 * 1024
#: wall-clock seconds one rendering may take
MAX_SECONDS = 5.0

__all__ = ["render_template", "compile_template", "MAX_INT_BITS", "MAX_RANGE", "MAX_ITERATIONS",
           "MAX_OUTPUT_CHARS", "MAX_SECONDS"]


class _Budget:
    """What one rendering may still spend (time, range steps)."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds
        self.seconds = seconds
        self.iterations = 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise TokenizerError(f"chat template took longer than {self.seconds:g} s to render")


_local = threading.local()


def _tick() -> None:
    budget = getattr(_local, "budget", None)
    if budget is not None:
        budget.tick()


def _bounded(value: Any, what: str) -> Any:
    if isinstance(value, (str, list, tuple, dict)) and len(value) > MAX_OUTPUT_CHARS:
        raise TokenizerError(f"chat template made a {what} of {len(value)} items (limit {MAX_OUTPUT_CHARS})")
    return value


def _safe_range(*args):
    """``range`` capped at :data:`MAX_RANGE` items, counting steps against the rendering's budget."""
    for a in args:
        if isinstance(a, bool) or not isinstance(a, int):
            raise TokenizerError(f"chat template: range() takes integers, got {type(a).__name__}")
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise TokenizerError(f"chat template: range of {len(r)} items (limit {MAX_RANGE})")

    def steps():
        budget = getattr(_local, "budget", None)
        for i in r:
            if budget is not None:
                budget.iterations += 1
                if budget.iterations > MAX_ITERATIONS:
                    raise TokenizerError(f"chat template ran more than {MAX_ITERATIONS} loop steps")
                if budget.iterations % 1024 == 0:
                    budget.tick()
            yield i

    return steps()


def _int_result_bits(op: str, left: Any, right: Any) -> int | None:
    """An upper bound on the bits of ``left op right`` for ints (None: not an int operation)."""
    if not (isinstance(left, int) and isinstance(right, int)):
        return None
    lb, rb = abs(left).bit_length(), abs(right).bit_length()
    if op == "**":
        if right < 0 or abs(left) <= 1:
            return 1
        return lb * right
    if op == "*":
        return lb + rb
    return max(lb, rb) + 1


def _make_environment():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        """jinja2's immutable sandbox with limits on integers, sizes, loops and time."""

        intercepted_binops = frozenset({"**", "*", "//", "%", "+", "-"})
        intercepted_unops = frozenset({"-", "+"})

        def call_binop(self, context, operator, left, right):
            _tick()
            bits = _int_result_bits(operator, left, right)
            if bits is not None and bits > MAX_INT_BITS:
                raise TokenizerError(f"chat template: {operator} on integers would exceed {MAX_INT_BITS} bits")
            if operator == "*" and isinstance(left, (str, list, tuple)) != isinstance(right, (str, list, tuple)):
                seq, n = (left, right) if isinstance(left, (str, list, tuple)) else (right, left)
                if isinstance(n, int) and len(seq) * max(n, 0) > MAX_OUTPUT_CHARS:
                    raise TokenizerError(f"chat template: repeating a sequence {n} times exceeds the size limit")
            return _bounded(super().call_binop(context, operator, left, right), "value")

        def call_unop(self, context, operator, arg):
            _tick()
            return super().call_unop(context, operator, arg)

        def getattr(self, obj, attribute):
            _tick()
            return _bounded(super().getattr(obj, attribute), "value")

        def getitem(self, obj, argument):
            _tick()
            return _bounded(super().getitem(obj, argument), "value")

        def call(self, __context, __obj, *args, **kwargs):
            _tick()
            return _bounded(super().call(__context, __obj, *args, **kwargs), "value")

    return BoundedSandbox


def _guard_filter(fn):
    """A filter that checks the time, refuses huge integer arguments (``center(10**9)``) and
    bounds its result."""
    import functools

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        _tick()
        for a in list(args[1:]) + list(kwargs.values()):
            if isinstance(a, int) and not isinstance(a, bool) and abs(a) > 1 << 20:
                raise TokenizerError(f"chat template: filter {fn.__name__} got the integer {a} (limit 2**20)")
        return _bounded(fn(*args, **kwargs), "value")

    return wrapped


_TEMPLATES: dict[str, Any] = {}


def compile_template(source: str):
    """The compiled template (cached); a template that does not parse raises :class:`TokenizerError`."""
    if not isinstance(source, str):
        raise TokenizerError(f"a chat template must be a string, got {type(source).__name__}")
    if source in _TEMPLATES:
        return _TEMPLATES[source]
    if len(source) > 1 << 20:
        raise TokenizerError(f"chat template of {len(source)} characters (limit {1 << 20})")
    from jinja2.exceptions import TemplateError

    def raise_exception(message):
        raise TokenizerError(f"chat template raised: {str(message)[:500]}")

    def tojson(value, indent=None, ensure_ascii=False, sort_keys=False):
        return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(str(fmt)[:200])

    env = _make_environment()(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.filters = {name: _guard_filter(f) for name, f in env.filters.items()}
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["range"] = _safe_range
    try:
        compiled = env.from_string(source)
    except (TemplateError, RecursionError, MemoryError, ValueError, SyntaxError) as e:
        raise TokenizerError(f"chat template does not parse: {type(e).__name__}: {str(e)[:300]}") from None
    if len(_TEMPLATES) > 32:
        _TEMPLATES.clear()
    _TEMPLATES[source] = compiled
    return compiled


class _Timeout(BaseException):
    """Raised inside the rendering thread by the watchdog (BaseException: templates cannot catch it)."""


def _watchdog(thread_id: int, seconds: float, state: dict, lock: threading.Lock) -> threading.Timer:
    """After ``seconds``, raise :class:`_Timeout` in the rendering thread unless it has finished."""

    def fire():
        with lock:
            if not state["done"]:
                state["fired"] = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(_Timeout))

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer


def render_template(source: str, *, max_seconds: float | None = None, max_chars: int | None = None, **variables) -> str:
    """Render a chat template with ``variables`` under every limit of this module; any failure,
    from the template's own ``raise_exception`` to a limit, raises :class:`TokenizerError`."""
    seconds = MAX_SECONDS if max_seconds is None else max_seconds
    limit = MAX_OUTPUT_CHARS if max_chars is None else max_chars
    template = compile_template(source)
    budget = _Budget(seconds)
    previous = getattr(_local, "budget", None)
    _local.budget = budget
    state, lock = {"done": False, "fired": False}, threading.Lock()
    timer = _watchdog(threading.get_ident(), seconds + 0.25, state, lock)
    parts: list[str] = []
    size = 0
    try:
        try:
            for chunk in template.generate(**variables):
                size += len(chunk)
                if size > limit:
                    raise TokenizerError(f"chat template output exceeds {limit} characters")
                parts.append(chunk)
                budget.tick()
        finally:
            with lock:
                state["done"] = True
            timer.cancel()
    except _Timeout:
        raise TokenizerError(f"chat template took longer than {seconds:g} s to render") from None
    except TokenizerError:
        raise
    except (RecursionError, MemoryError) as e:
        raise TokenizerError(f"chat template failed to render: {type(e).__name__}") from None
    except Exception as e:   # jinja2 TemplateError, SecurityError, errors raised by the template
        raise TokenizerError(f"chat template failed to render: {type(e).__name__}: {str(e)[:300]}") from None
    finally:
        _local.budget = previous
    return "".join(parts)
