"""Every public name of axon, kernels and axon_llm has a docstring.

The project promises "a docstring per public name"; this test holds it to that.

What is walked
    The modules ``axon``, ``axon.nn``, ``axon.nn.functional``, ``axon.optim``, ``axon.testing``,
    ``kernels``, ``kernels.testing``, ``axon_llm`` and every submodule of ``axon_llm`` whose
    dotted path has no part starting with ``_`` (so ``axon_llm.__main__`` is left out).
    A module named in a walked module's ``__all__`` (``axon.nn.init``,
    ``axon.optim.lr_scheduler``) is walked too.

Which names are public
    The names in ``__all__`` where the module defines it. Otherwise the names not starting
    with ``_`` whose object was defined in that module, or, for a package's ``__init__``, in
    one of its submodules (so ``axon.Tensor``, re-exported from ``axon.tensor``, counts;
    ``np`` imported into a module does not). Only classes and functions are checked (and
    Numba dispatchers, through the Python function they wrap); constants cannot carry one.

What must have a docstring
    * every public class (a dataclass's or namedtuple's auto-generated ``Name(field, ...)``
      text does not count);
    * every public function;
    * every public method: the functions, staticmethods, classmethods and properties in the
      ``__dict__`` of a public class and of each of its base classes that is defined in
      these three packages (a private base's methods are public through the class). Methods
      inherited from builtins / object / NumPy / the standard library are not ours to
      document. A method's own ``__doc__`` counts; an override with no docstring of its own
      fails even if the parent's method is documented, because an override (``forward`` of
      each model, say) does something different from its parent and its shapes differ.
    * Dunder methods (``__init__``, ``__call__``, ``__getitem__``, ...) are skipped: the
      class docstring documents construction (as in torch and NumPy, where ``help(cls)``
      shows it), and operators mean what Python says they mean.

A docstring is non-empty when ``__doc__.strip()`` is not empty. The test imports the
modules and reads attributes; it runs no model code and takes well under a second.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import types

ROOTS = (
    "axon", "axon.nn", "axon.nn.functional", "axon.optim", "axon.testing",
    "axon_kernels", "axon_kernels.testing",
)
WALKED_PACKAGES = ("axon_llm",)
OUR_PACKAGES = ("axon", "axon_kernels", "axon_llm")


def _top(modname: str | None) -> str:
    return (modname or "").split(".")[0]


def _ours(obj) -> bool:
    return _top(getattr(obj, "__module__", None)) in OUR_PACKAGES


def _module_names() -> list[str]:
    names = list(ROOTS)
    for pkg_name in WALKED_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        names.append(pkg_name)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg_name + "."):
            if not any(part.startswith("_") for part in info.name.split(".")):
                names.append(info.name)
    return names


def _public_names(module: types.ModuleType) -> list[tuple[str, object]]:
    if hasattr(module, "__all__"):
        return [(n, getattr(module, n)) for n in module.__all__]
    is_package = hasattr(module, "__path__")
    out = []
    for name, obj in vars(module).items():
        if name.startswith("_"):
            continue
        where = getattr(obj, "__module__", None)
        if where is None:
            continue
        if where == module.__name__ or (is_package and where.startswith(module.__name__ + ".")):
            out.append((name, obj))
    return out


def _has_doc(obj) -> bool:
    doc = getattr(obj, "__doc__", None)
    return isinstance(doc, str) and bool(doc.strip())


def _class_has_doc(cls: type) -> bool:
    doc = cls.__dict__.get("__doc__")
    if not isinstance(doc, str) or not doc.strip():
        return False
    if dataclasses.is_dataclass(cls) or (issubclass(cls, tuple) and hasattr(cls, "_fields")):
        # dataclass / namedtuple write "Name(field, ...)" when the class has no docstring
        if doc.strip().startswith(cls.__name__ + "(") and doc.strip().endswith(")") and "\n" not in doc.strip():
            return False
    return True


def _function_of(obj):
    """The Python function behind a public callable, or None if it is not one we check."""
    if inspect.isfunction(obj):
        return obj
    py_func = getattr(obj, "py_func", None)  # numba dispatcher
    if inspect.isfunction(py_func):
        return py_func
    return None


def _methods(cls: type):
    """(qualified name, object) for each method the class exposes from our packages."""
    seen: set[str] = set()
    for klass in cls.__mro__:
        if not _ours(klass):
            continue
        for name, attr in vars(klass).items():
            if name in seen:
                continue
            seen.add(name)
            if name.startswith("__") and name.endswith("__"):
                continue
            if name.startswith("_"):
                continue
            if isinstance(attr, (staticmethod, classmethod)):
                attr = attr.__func__
            if isinstance(attr, property):
                target = attr.fget
                if target is None or not _ours(target):
                    continue
                yield f"{klass.__module__}.{klass.__qualname__}.{name}", attr
                continue
            fn = _function_of(attr)
            if fn is None or not _ours(fn):
                continue
            yield f"{klass.__module__}.{klass.__qualname__}.{name}", fn


def _undocumented() -> list[str]:
    missing: set[str] = set()
    seen_ids: set[int] = set()
    queue = list(_module_names())
    done: set[str] = set()
    while queue:
        modname = queue.pop(0)
        if modname in done:
            continue
        done.add(modname)
        module = importlib.import_module(modname)
        if not _has_doc(module):
            missing.add(f"{modname} (module)")
        for name, obj in _public_names(module):
            if isinstance(obj, types.ModuleType):
                if _top(obj.__name__) in OUR_PACKAGES:
                    queue.append(obj.__name__)
                continue
            if id(obj) in seen_ids:
                continue
            seen_ids.add(id(obj))
            if inspect.isclass(obj):
                if not _ours(obj):
                    continue
                where = f"{obj.__module__}.{obj.__qualname__}"
                if not _class_has_doc(obj):
                    missing.add(where)
                for qual, meth in _methods(obj):
                    if id(meth) in seen_ids:
                        continue
                    seen_ids.add(id(meth))
                    if not _has_doc(meth):
                        missing.add(qual)
                continue
            fn = _function_of(obj)
            if fn is None or not _ours(fn):
                continue
            if not _has_doc(fn):
                missing.add(f"{fn.__module__}.{fn.__qualname__}")
    return sorted(missing)


def test_walk_finds_the_public_api():
    """The walk itself sees the names it is meant to see (guards against a walk that checks nothing)."""
    names = _module_names()
    assert "axon_llm.models.llama" in names and "axon_llm.loaders.gguf" in names
    assert "axon_llm.__main__" not in names
    import axon

    public = dict(_public_names(axon))
    assert "Tensor" in public and "np" not in public
    import axon.nn as nn

    methods = dict(_methods(nn.Linear))
    assert any(q.endswith("Module.state_dict") for q in methods)


def test_the_checks_can_fail():
    """A class, method and dataclass without docstrings are reported as such."""

    @dataclasses.dataclass
    class Bare:
        x: int

    assert not _class_has_doc(Bare)

    class Plain:
        def method(self):
            return 1

    assert not _class_has_doc(Plain)
    assert not _has_doc(Plain.method)


def test_every_public_name_has_a_docstring():
    missing = _undocumented()
    assert not missing, f"{len(missing)} public names without a docstring:\n  " + "\n  ".join(missing)
