"""The docs point into the code by name, and every name they point at exists.

Checked on every ``docs/**/*.md`` page, ``README.md`` and ``tests/fixtures/README.md``:

* no line numbers (``file.py:123``, a bare `` `:123` ``, ``:12-40``): they go stale at the
  next edit, so the docs name a symbol instead;
* every repository path they mention (``axon/...``, ``axon_llm/...``, ``kernels/...``,
  ``tests/...``, ``benchmarks/...``, ``docs/...``) exists, except the few placeholder names a
  how-to uses for "your new file" (``PLACEHOLDERS``);
* every dotted name in backticks that starts with a package (``axon.``, ``axon_kernels.``,
  ``axon_llm.``, or ``F.`` for ``axon.nn.functional``) resolves by import + getattr;
* every `` `Class.attr` `` whose ``Class`` is defined in our packages names an attribute it has;
* every ``import`` / ``from ... import`` of our packages in a fenced code block resolves;
* nothing imports the kernels as ``kernels`` (the package is ``axon_kernels``; ``kernels`` is
  transformers' dependency on PyPI).

Only names that look like ours are checked, so prose, shell commands and other libraries'
names pass untouched.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md", ROOT / "tests" / "fixtures" / "README.md"]
TOP = ("axon", "axon_llm", "kernels", "tests", "benchmarks", "docs", ".ci")
PACKAGES = {"axon": "axon", "axon_kernels": "axon_kernels", "axon_llm": "axon_llm", "F": "axon.nn.functional"}
#: paths a how-to uses for the file the reader is about to write
PLACEHOLDERS = {"axon_llm/models/x.py", "tests/axon_llm/test_x.py", "docs/models/x.md", "kernels/axon_kernels/name.py",
                "tests/kernels/test_name.py", "tests/fixtures/hf/x"}

LINE_NUMBER = re.compile(r"\.(?:py|md|toml|json|sh)[`]?:\d+|`:\d+(?:-\d+)?`|\(:\d+(?:-\d+)?\)")
PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./*<>-]*[\w*>])" % "|".join(re.escape(t) for t in TOP))
DOTTED = re.compile(r"`((?:axon_kernels|axon_llm|axon|F)(?:\.[A-Za-z_]\w*)+)(?:\([^`]*\))?`")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+import\s+([\w, ()]+)|import\s+([\w.]+))", re.M)
OLD_KERNELS = re.compile(r"`kernels\.[a-z_]\w*|\bimport kernels\b|\bfrom kernels(?:\.\w+)* import\b")


METHOD = re.compile(r"`([A-Z]\w*)\.([A-Za-z_]\w*)(?:\([^`]*\))?`")


def _our_classes() -> dict[str, list[type]]:
    """Every class defined in a module of axon, axon_kernels or axon_llm, by name."""
    import inspect
    import pkgutil

    found: dict[str, list[type]] = {}
    for top in ("axon", "axon_kernels", "axon_llm"):
        pkg = importlib.import_module(top)
        names = [top] + [m.name for m in pkgutil.walk_packages(pkg.__path__, top + ".")]
        for name in names:
            if name.endswith("__main__"):
                continue
            try:
                mod = importlib.import_module(name)
            except ImportError:                                   # an optional dependency: not ours to check
                continue
            for cname, cls in vars(mod).items():
                if inspect.isclass(cls) and cls.__module__ == mod.__name__:
                    found.setdefault(cname, []).append(cls)
    return found


def _has(cls: type, attr: str) -> bool:
    """``attr`` is a class attribute, a (dataclass) field, or an instance attribute its code sets."""
    import inspect

    if hasattr(cls, attr):
        return True
    for base in cls.__mro__:
        if attr in getattr(base, "__annotations__", {}):
            return True
        try:
            if re.search(rf"\bself\.{re.escape(attr)}\s*(?::[^=]*)?=", inspect.getsource(base)):
                return True
        except (OSError, TypeError):
            continue
    return False


def _ids(pages):
    return [str(p.relative_to(ROOT)) for p in pages]


def resolve(dotted: str) -> bool:
    """Whether ``dotted`` (``pkg.module.attr...``, ``F.`` meaning ``axon.nn.functional``) names something."""
    head, *rest = dotted.split(".")
    parts = PACKAGES[head].split(".") + rest
    for cut in range(len(parts), 0, -1):                 # the longest importable module prefix
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
        except AttributeError:
            return False
        return True
    return False


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_no_line_numbers(page):
    text = page.read_text(encoding="utf-8")
    bad = [f"line {text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}" for m in LINE_NUMBER.finditer(text)]
    assert not bad, f"{page.name} cites line numbers (name the symbol instead): {bad}"


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_paths_exist(page):
    text = page.read_text(encoding="utf-8")
    missing = sorted({m.group(1) for m in PATH.finditer(text)
                      if m.group(1) not in PLACEHOLDERS and "<" not in m.group(1)       # `test_<family>.py`: a template
                      and "__pycache__" not in m.group(1)
                      and not next(ROOT.glob(m.group(1)), None)})       # a glob (`test_*.py`) must match
    assert not missing, f"{page.name} names files that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_dotted_names_resolve(page):
    text = page.read_text(encoding="utf-8")
    broken = sorted({m.group(1) for m in DOTTED.finditer(text) if not resolve(m.group(1))})
    assert not broken, f"{page.name} names symbols that do not exist: {broken}"


@pytest.fixture(scope="module")
def our_classes():
    return _our_classes()


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_methods_of_our_classes_exist(page, our_classes):
    """`` `Class.attr` `` where ``Class`` is one of ours: ``attr`` exists on it (other classes'
    names, transformers' say, are not checked)."""
    text = page.read_text(encoding="utf-8")
    broken = sorted({f"{c}.{a}" for c, a in METHOD.findall(text)
                     if c in our_classes and not any(_has(cls, a) for cls in our_classes[c])})
    assert not broken, f"{page.name} names attributes that do not exist: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_code_block_imports_resolve(page):
    text = page.read_text(encoding="utf-8")
    broken = []
    for block in FENCE.finditer(text):
        if block.group(1) not in ("python", "py", ""):
            continue
        for m in IMPORT.finditer(block.group(2)):
            module = m.group(1) or m.group(3)
            if module.split(".")[0] not in PACKAGES:
                continue
            names = [n.strip() for n in (m.group(2) or "").replace("(", "").replace(")", "").split(",") if n.strip()]
            names = [n.split(" as ")[0].strip() for n in names]
            if not resolve(module):
                broken.append(module)
            broken += [f"{module}.{n}" for n in names if not resolve(f"{module}.{n}")
                       and importlib.util.find_spec(f"{module}.{n}") is None]
    assert not broken, f"{page.name} imports names that do not exist: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_kernels_are_imported_as_axon_kernels(page):
    text = page.read_text(encoding="utf-8")
    old = sorted({m.group(0) for m in OLD_KERNELS.finditer(text)})
    assert not old, f"{page.name} uses the old package name `kernels` (it is `axon_kernels`): {old}"


def test_the_checks_catch_what_they_exist_for():
    """Each pattern fires on the mistake it is for, and stays quiet on the right form."""
    assert LINE_NUMBER.search("see `kernels/axon_kernels/scan.py:109`") and LINE_NUMBER.search("(`:36`)")
    assert not LINE_NUMBER.search("`selective_scan_ref` in `kernels/axon_kernels/scan.py`; 2:1 ratio")
    assert [m.group(1) for m in PATH.finditer("in kernels/scan.py, and `axon_llm/models/llama.py`.")] == \
        ["kernels/scan.py", "axon_llm/models/llama.py"]
    assert resolve("axon_llm.models.llama.LLaMAForCausalLM") and resolve("F.scaled_dot_product_attention")
    assert not resolve("axon_llm.models.llama.NoSuchModel") and not resolve("axon.no_such_module.x")
    assert OLD_KERNELS.search("`kernels.flash_attention`") and not OLD_KERNELS.search("`axon_kernels.flash_attention`")
