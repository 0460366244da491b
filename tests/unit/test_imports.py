"""No import cycles between ``skivi`` modules.

A cycle of module-level imports works only as long as every module in it is first imported
from the right end; imported from the other, one of them sees a half-initialised module and
fails with ``ImportError: cannot import name`` (or, worse, only in a forked child). So the
graph is read from the source with ``ast`` (nothing is imported) and any cycle fails here,
printed module by module.

What counts as an edge, and why:

- Only imports that run when the module is imported: at module level, including under a
  module-level ``if``/``try``/``with``. Imports inside a function or a class body run later,
  when the importing module is complete, and are the standard way to break a cycle.
- Not imports under ``if TYPE_CHECKING:`` (its ``else`` branch does run, so it counts).
- ``from skivi.a import b`` depends on the module ``skivi.a.b`` when ``b`` is one, and on
  ``skivi.a`` (its body) otherwise.
- A module's parent packages are not edges of their own: Python initialises them before the
  module, so they are part of the graph only through the names taken from them (the root
  ``skivi/__init__.py`` re-exports the public API from nearly every module; counting the
  implicit parent import would put every module on a harmless cycle through it).

The second view, ``deferred=True``, also counts imports inside functions and under
``TYPE_CHECKING``: not a hazard at import time, but the coupling between modules, and a cycle
there is one edge away from a real one. It leaves out the root package (the public facade
imports nearly everything, so ``from skivi import __version__`` in any function would close a
harmless cycle). It held one cycle, system -> engine -> system (the engine's modules took a
``System``, and the system starts the engine), until the engine took the ``Instance``
(architecture issue 13); a test of its own says it stays gone. Any other cycle fails.

One direction is a rule of its own: the command line (``skivi.cli``) starts the engine, and
the engine never imports the command line, even inside a function (its parts exit with the
codes of ``skivi.engine.exits``, which the cli imports). The one exception is an entry point:
``skivi/engine/__main__.py`` is the program ``python -m skivi.engine``, a shim calling
``skivi.cli.worker``, and no module imports it (checked too).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "skivi"
ENTRY_POINTS = frozenset({"skivi.__main__", "skivi.engine.__main__"})
"""Programs (``python -m ...``), not library modules: they may import anything, and nothing
may import them."""

def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package."""
    modules: dict[str, Path] = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING`` (however typing was imported)."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _module_level(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The imports executed when a module with this body is imported."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _module_level(node.body)
            yield from _module_level(node.orelse)
        elif isinstance(node, ast.Try | ast.TryStar):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _module_level(block)
            for handler in node.handlers:
                yield from _module_level(handler.body)
        elif isinstance(node, ast.With | ast.AsyncWith):
            yield from _module_level(node.body)
        elif isinstance(node, ast.For | ast.AsyncFor | ast.While):
            yield from _module_level(node.body)
            yield from _module_level(node.orelse)
        # Function and class bodies: their imports run later, once this module is complete.


def _anywhere(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def import_graph(*, deferred: bool = False) -> dict[str, set[str]]:
    """Module -> the skivi modules it imports at module level (``deferred``: anywhere,
    ``TYPE_CHECKING`` included)."""
    modules = module_files()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in _anywhere(tree) if deferred else _module_level(tree.body):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                source = (
                    _resolve_relative(name, is_package, node.level, node.module)
                    if node.level
                    else node.module or ""
                )
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    targets.append(submodule if submodule in modules else source)
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """The components of more than one module (Tarjan): each holds at least one cycle, and
    every cycle lies inside one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component: set[str] = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(components, key=min)


def shortest_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle ``[a, ..., a]`` through the component's alphabetically first module,
    found breadth first, so the printed cycle is the same on every run."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if w not in parents:
                    parents[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"no cycle in the strongly connected component {sorted(component)}")


def describe(graph: dict[str, set[str]], components: list[set[str]]) -> str:
    return "\n".join(
        f"  {' -> '.join(shortest_cycle(graph, c))}   (all on a cycle: {', '.join(sorted(c))})"
        for c in components
    )


def _is_known(component: set[str]) -> bool:
    return {"skivi.system", "skivi.engine"} <= component


def _deferred_graph() -> dict[str, set[str]]:
    # The root package is left out of the deferred view: it imports the public API, so any
    # function anywhere doing ``from skivi import __version__`` would close a harmless cycle.
    graph = import_graph(deferred=True)
    return {v: edges - {PACKAGE} for v, edges in graph.items() if v != PACKAGE}


def test_graph_sees_module_level_imports_only() -> None:
    """The walker itself: a check that finds no edges would pass for ever."""
    graph = import_graph()
    assert "skivi.errors" in graph["skivi.job"]  # a plain module-level import
    assert "skivi.engine.wire" in graph["skivi.engine.child"]  # from package import module
    assert "skivi.engine.exits" in graph["skivi.engine"]  # from package.module import name
    # skivi.engine.child imports skivi.instance only under TYPE_CHECKING, and skivi.client
    # only inside functions; skivi.engine imports the supervisor inside run_async.
    assert "skivi.instance" not in graph["skivi.engine.child"]
    assert "skivi.client" not in graph["skivi.engine.child"]
    assert "skivi.engine.supervisor" not in graph["skivi.engine"]
    deferred = import_graph(deferred=True)
    assert {"skivi.client", "skivi.instance"} <= deferred["skivi.engine.child"]
    # The engine takes the instance, never the system that launches it.
    assert not any(m.startswith("skivi.system") for m in deferred["skivi.engine.child"])


def test_cycle_finder_reports_each_cycle_as_a_path() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": set()}
    components = strongly_connected(graph)
    assert components == [{"a", "b", "c"}, {"d", "e"}]
    assert [shortest_cycle(graph, c) for c in components] == [["a", "b", "c", "a"],
                                                               ["d", "e", "d"]]


def test_no_import_cycles_at_module_level() -> None:
    graph = import_graph()
    components = strongly_connected(graph)
    assert not components, (
        "import cycles between skivi modules (module-level imports; move what both sides "
        "need into a module below them):\n" + describe(graph, components)
    )


def test_no_other_cycles_counting_deferred_imports() -> None:
    graph = _deferred_graph()
    others = [c for c in strongly_connected(graph) if not _is_known(c)]
    assert not others, (
        "import cycles between skivi modules counting imports inside functions and under "
        "TYPE_CHECKING:\n" + describe(graph, others)
    )


def test_no_cycle_through_system_and_engine_counting_deferred_imports() -> None:
    graph = _deferred_graph()
    known = [c for c in strongly_connected(graph) if _is_known(c)]
    assert not known, "import cycle still there:\n" + describe(graph, known)


def _in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def path_to(graph: dict[str, set[str]], sources: list[str],
            wanted: str) -> list[str] | None:
    """A shortest import path from one of ``sources`` to a module of the package ``wanted``
    (breadth first, in sorted order), or None if none reaches it."""
    parents: dict[str, str | None] = {s: None for s in sources}
    frontier = sorted(sources)
    while frontier:
        following: list[str] = []
        for v in frontier:
            if _in_package(v, wanted):
                path = [v]
                while (parent := parents[path[-1]]) is not None:
                    path.append(parent)
                return path[::-1]
            for w in sorted(graph[v]):
                if w not in parents:
                    parents[w] = v
                    following.append(w)
        frontier = following
    return None


def test_path_finder_finds_a_shortest_path_into_a_package() -> None:
    graph = {"e": {"e.a"}, "e.a": {"x"}, "x": {"c.w"}, "c.w": set(), "e.b": {"c.w"}}
    assert path_to(graph, ["e", "e.a", "e.b"], "c") == ["e.b", "c.w"]
    assert path_to(graph, ["e"], "c") == ["e", "e.a", "x", "c.w"]
    assert path_to(graph, ["c.w"], "e") is None


def test_engine_never_imports_the_cli_counting_deferred_imports() -> None:
    graph = _deferred_graph()
    assert "skivi.cli.worker" in graph["skivi.engine.__main__"]  # the walker sees the shim
    engine = [m for m in graph if _in_package(m, "skivi.engine") and m not in ENTRY_POINTS]
    path = path_to(graph, engine, "skivi.cli")
    assert path is None, "the engine imports the command line: " + " -> ".join(path)


def test_no_module_imports_an_entry_point_counting_deferred_imports() -> None:
    graph = import_graph(deferred=True)
    importers = {v: sorted(edges & ENTRY_POINTS) for v, edges in graph.items()
                 if edges & ENTRY_POINTS}
    assert not importers, f"entry points imported as library modules: {importers}"
