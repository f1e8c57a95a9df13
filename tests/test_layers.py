"""The package's layers: no upward import, no import cycle.

Every ``crdtcache`` module is parsed (not imported) and every import it makes is
collected, wherever it stands: at the top, inside a function, under ``TYPE_CHECKING``.
A module may import modules of its own layer package and of lower layers only; the
runtime import graph between modules (type-only imports left out) has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "crdtcache"

#: Lower numbers are lower layers; a module may import only its own rank or below, and
#: within one rank only its own package (or, for the CLI, the public package root).
RANKS: dict[str, int] = {
    "crdtcache._errors": 0,
    "crdtcache.metrics": 1,
    "crdtcache.core": 1,
    "crdtcache.wire": 2,
    "crdtcache.discovery": 2,
    "crdtcache.transport": 3,
    "crdtcache.store": 3,
    "crdtcache.runtime": 4,
    "crdtcache.cache": 5,
    "crdtcache.dashboard": 6,
    "crdtcache.testing": 6,
    "crdtcache.contrib": 6,
    "crdtcache.cli": 7,  # public APIs only: the package root and public subpackages
    "crdtcache": 7,  # the package root composes everything
}


def layer_of(module: str) -> str:
    """The layer package a module belongs to (the longest ``RANKS`` prefix)."""
    best = "crdtcache"
    for name in RANKS:
        if (module == name or module.startswith(name + ".")) and len(name) > len(best):
            best = name
    return best


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(source: str, module: str, is_package: bool) -> list[tuple[str, bool]]:
    """``(imported module, type_only)`` for every crdtcache import in ``source``."""
    found: list[tuple[str, bool]] = []
    tree = ast.parse(source)
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                type_only.update(id(n) for n in ast.walk(inner))
    base = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target]
            # ``from crdtcache import dashboard`` imports the subpackage itself.
            names += [f"{target}.{alias.name}" for alias in node.names]
        for name in names:
            if name == "crdtcache" or name.startswith("crdtcache."):
                found.append((name, id(node) in type_only))
    return found


def modules() -> dict[str, tuple[Path, bool]]:
    return {module_name(p): (p, p.name == "__init__.py") for p in PACKAGE.rglob("*.py")}


def known(name: str, all_modules: dict[str, tuple[Path, bool]]) -> str | None:
    """The module ``name`` refers to (``from a.b import C`` may name a class in a.b)."""
    while name and name not in all_modules:
        name = name.rpartition(".")[0]
    return name or None


def upward_imports() -> list[str]:
    all_modules = modules()
    problems = []
    for module, (path, is_package) in sorted(all_modules.items()):
        own = layer_of(module)
        for name, _ in imports(path.read_text(), module, is_package):
            target = known(name, all_modules)
            if target is None:
                continue
            other = layer_of(target)
            if other == own:
                continue
            if RANKS[other] > RANKS[own] or (
                RANKS[other] == RANKS[own] and "crdtcache" not in (own, other)
            ):
                problems.append(f"{module} ({own}) imports {target} ({other})")
    return sorted(set(problems))


def runtime_graph() -> dict[str, set[str]]:
    all_modules = modules()
    graph: dict[str, set[str]] = {m: set() for m in all_modules}
    for module, (path, is_package) in all_modules.items():
        for name, type_only in imports(path.read_text(), module, is_package):
            target = known(name, all_modules)
            if target is not None and target != module and not type_only:
                graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        own = layer_of(module)
        out.setdefault(own, set()).update(layer_of(t) for t in targets if layer_of(t) != own)
    return out


def test_every_layer_is_known() -> None:
    assert {layer_of(m) for m in modules()} <= set(RANKS)
    assert layer_of("crdtcache.runtime.redis._runtime") == "crdtcache.runtime"


def test_no_module_imports_a_higher_layer() -> None:
    assert upward_imports() == []


def test_no_import_cycle_between_modules() -> None:
    assert cycles(runtime_graph()) == []


def test_no_import_cycle_between_layers() -> None:
    assert cycles(package_graph(runtime_graph())) == []


@pytest.mark.parametrize(
    ("source", "module", "is_package", "expected"),
    [
        (
            "import crdtcache.core\nfrom crdtcache.cache import _view\n",
            "crdtcache.store._x",
            False,
            [
                ("crdtcache.core", False),
                ("crdtcache.cache", False),
                ("crdtcache.cache._view", False),
            ],
        ),
        (
            "import typing\nif typing.TYPE_CHECKING:\n    from crdtcache.cache import X\n",
            "crdtcache.core._x",
            False,
            [("crdtcache.cache", True), ("crdtcache.cache.X", True)],
        ),
        (
            "def f():\n    from .._errors import E\n",
            "crdtcache.core._x",
            False,
            [("crdtcache._errors", False), ("crdtcache._errors.E", False)],
        ),
        (
            "from . import _a\n",
            "crdtcache.wire",
            True,
            [("crdtcache.wire", False), ("crdtcache.wire._a", False)],
        ),
    ],
)
def test_the_checker_sees_every_kind_of_import(
    source: str, module: str, is_package: bool, expected: list[tuple[str, bool]]
) -> None:
    assert imports(source, module, is_package) == expected


def test_the_checker_finds_cycles_and_upward_edges() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert RANKS[layer_of("crdtcache.cache._cache")] > RANKS[layer_of("crdtcache.store._sqlite")]
