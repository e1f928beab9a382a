"""The modules of axon, axon_kernels and axon_llm import each other without cycles.

The graph is read from the source with `ast`, not from `sys.modules`, so an import hidden inside a
function (or under `if TYPE_CHECKING:`) counts exactly like one at the top of a file: hiding an
import only delays a cycle, it does not remove it.

The rule for an edge from module M (every `import` / `from ... import` anywhere in M's file):
- `import a.b.c` is an edge M -> `a.b.c` (the longest prefix that is one of our modules).
- `from a.b import name` is an edge M -> `a.b.name` when that is a module (a submodule is
  imported), else M -> `a.b` (the name is an attribute of `a.b`, e.g. a class).
- Relative imports are resolved against M's package first (`from .x import y` in `p/q.py` is
  `from p.x import y`; in `p/__init__.py` it is also `from p.x import y`).
- Importing `a.b.c` also runs the `__init__` of `a` and `a.b` first. That implicit edge counts, but
  only for what each `__init__` imports from OUTSIDE its own package: the node `a.b.__init__` holds
  those edges, and every module under `a.b` points to it. (An `__init__` re-exporting its own
  submodules is a facade on top of its package, not a cycle.) So `loaders/__init__.py` importing
  `axon_llm.auto` would make every loader depend on `auto`.
- An explicit import OF a package `__init__` is counted (`from axon_llm.hub import register` is an
  edge to `axon_llm.hub`, i.e. to everything that facade imports). So a submodule that imports
  from its own package's facade (`from axon import Tensor` inside `axon/ops.py`) is reported as a
  cycle: inside a package, import from the module that defines the name.
- Modules outside the three packages (numpy, the standard library, ...) are not nodes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"axon": ROOT / "axon", "axon_kernels": ROOT / "kernels" / "axon_kernels",
                "axon_llm": ROOT / "axon_llm"}


def discover_modules(package_dirs: dict[str, Path]) -> dict[str, tuple[Path, bool]]:
    """Map dotted module name -> (file, is_package) for every .py file under each package dir."""
    modules = {}
    for top, folder in package_dirs.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [top, *path.relative_to(folder).with_suffix("").parts]
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            modules[".".join(parts)] = (path, is_package)
    return modules


def _longest_module_prefix(dotted: str, modules) -> str | None:
    """The longest prefix of `dotted` (at dot boundaries) that is one of our modules, else None."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in modules:
            return name
    return None


def module_imports(name: str, path: Path, is_package: bool, modules) -> set[str]:
    """The set of our modules that module `name` imports (the rule in the module docstring)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if is_package else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                hit = _longest_module_prefix(alias.name, modules)
                if hit is not None:
                    targets.add(hit)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    targets.add(f"{source}.{alias.name}")
                else:
                    hit = _longest_module_prefix(source, modules)
                    if hit is not None:
                        targets.add(hit)
    targets.discard(name)  # `from . import x` inside x's own package resolves to x only when x is a module
    return targets


def import_graph(package_dirs: dict[str, Path]) -> dict[str, set[str]]:
    """Module name -> the set of our modules it imports, for every module of the given packages,
    plus one node ``pkg.__init__`` per package: what that ``__init__`` imports from outside ``pkg``,
    which every module under ``pkg`` depends on (Python runs the ``__init__`` first)."""
    modules = discover_modules(package_dirs)
    graph = {name: module_imports(name, path, is_pkg, modules) for name, (path, is_pkg) in modules.items()}
    packages = [name for name, (_, is_pkg) in modules.items() if is_pkg]
    for pkg in packages:
        graph[f"{pkg}.__init__"] = {t for t in graph[pkg] if t != pkg and not t.startswith(pkg + ".")}
    for name in modules:
        parts = name.split(".")
        for n in range(1, len(parts)):
            graph[name].add(".".join(parts[:n]) + ".__init__")
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One concrete cycle [a, b, ..., a] per strongly connected component that has one, sorted so
    the report is deterministic; [] when the graph is acyclic."""
    return sorted((_cycle_in(scc, graph) for scc in cyclic_components(graph)), key=lambda c: c[0])


def cyclic_components(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components that contain a cycle (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, sccs, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter[0]; counter[0] += 1
        stack.append(root); on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter[0]; counter[0] += 1
                    stack.append(child); on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    scc = set()
                    while True:
                        member = stack.pop(); on_stack.discard(member); scc.add(member)
                        if member == node:
                            break
                    if len(scc) > 1 or node in graph.get(node, ()):
                        sccs.append(scc)
    return sccs


def _cycle_in(scc: set[str], graph) -> list[str]:
    """A shortest cycle through the alphabetically first member of a strongly connected component."""
    start = min(scc)
    parent, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph.get(node, ())):
                if child == start:
                    path = [node]
                    while parent[path[-1]] is not None:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if child in scc and child not in parent:
                    parent[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"no cycle found inside component {sorted(scc)}")


def test_no_import_cycles():
    graph = import_graph(PACKAGE_DIRS)
    assert len(graph) > 50 and "axon.tensor" in graph and "axon_llm.generation" in graph
    tangles = sorted(cyclic_components(graph), key=min)
    assert not tangles, "import cycles (counting imports inside functions; see the module docstring):\n" + "\n".join(
        " -> ".join(_cycle_in(scc, graph)) + f"\n    (all modules in this tangle: {', '.join(sorted(scc))})"
        for scc in tangles)


# --- the cycle finder itself, on the three cycles this test was written to catch ---------------

KNOWN_CYCLES = {
    "autograd/tensor/ops": {
        "axon.autograd": {"axon.tensor"}, "axon.tensor": {"axon.ops", "axon.autograd"},
        "axon.ops": {"axon.autograd", "axon.tensor"}},
    "loaders/auto/models/blocks": {
        "axon_llm.loaders.safetensors": {"axon_llm.auto"}, "axon_llm.auto": {"axon_llm.loaders.gguf"},
        "axon_llm.loaders.gguf": {"axon_llm.models.llama"}, "axon_llm.models.llama": {"axon_llm.blocks"},
        "axon_llm.blocks": {"axon_llm.loaders.safetensors"}},
    "hub models/registry": {
        "axon_llm.hub.models": {"axon_llm.hub.registry"}, "axon_llm.hub.registry": {"axon_llm.hub.models"}},
}


@pytest.mark.parametrize("name", sorted(KNOWN_CYCLES))
def test_cycle_finder_catches_known_cycle(name):
    graph = {"axon.nn": {"axon.tensor"}, "leaf": set(), **KNOWN_CYCLES[name]}
    cycles = find_cycles(graph)
    assert len(cycles) == 1
    cycle = cycles[0]
    assert cycle[0] == cycle[-1] and set(cycle) <= set(KNOWN_CYCLES[name])
    for a, b in zip(cycle, cycle[1:]):
        assert b in graph[a]


def test_cycle_finder_accepts_a_dag_and_reports_self_loops():
    dag = {"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}
    assert find_cycles(dag) == []
    assert find_cycles({"a": {"a"}}) == [["a", "a"]]
    assert [c[0] for c in find_cycles({"a": {"b"}, "b": {"a"}, "x": {"y"}, "y": {"x"}})] == ["a", "x"]


def _write_package(root: Path, files: dict[str, str]) -> Path:
    """Write ``{relative path: source}`` under ``root``; returns ``root``."""
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_edges_follow_the_documented_rule(tmp_path):
    """Function-level and relative imports count; `from pkg import mod` points at the submodule,
    `from pkg import Class` at the package facade; the implicit edge to a parent package carries
    only what its `__init__` imports from outside it (nothing here)."""
    pkg = _write_package(tmp_path / "p", {
        "__init__.py": "from p.a import A\n",
        "a.py": "class A:\n    def f(self):\n        from .sub import b\n        return b\n",
        "sub/__init__.py": "",
        "sub/b.py": "import numpy\nfrom ..a import A\nfrom p import A as B\n",
        "c.py": "def g():\n    import p.sub.b\n    from p.sub import b, missing\n"})
    graph = import_graph({"p": pkg})
    assert graph == {"p": {"p.a"}, "p.a": {"p.sub.b", "p.__init__"}, "p.sub": {"p.__init__"},
                     "p.sub.b": {"p.a", "p", "p.__init__", "p.sub.__init__"}, "p.c": {"p.sub.b", "p.sub", "p.__init__"},
                     "p.__init__": set(), "p.sub.__init__": set()}
    assert find_cycles(graph) == [["p", "p.a", "p.sub.b", "p"]]


def test_a_package_init_importing_from_outside_is_a_dependency_of_its_modules(tmp_path):
    """`loaders/__init__.py` re-exporting from `auto` while `auto` uses a loader is a cycle."""
    top = _write_package(tmp_path / "top", {
        "__init__.py": "",
        "auto.py": "def load():\n    from top.loaders.st import read\n",
        "loaders/__init__.py": "from top.auto import load\nfrom top.loaders.st import read\n",
        "loaders/st.py": "def read():\n    pass\n"})
    graph = import_graph({"top": top})
    assert graph["top.loaders.__init__"] == {"top.auto"}
    assert find_cycles(graph) == [["top.auto", "top.loaders.st", "top.loaders.__init__", "top.auto"]]
