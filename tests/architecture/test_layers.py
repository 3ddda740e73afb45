"""The import graph of matrix_mcp (and servers/) has no cycle and never imports upward.

An AST walk over every module finds every import of the project, at the top of a module and inside
functions alike (an import inside a function is still a dependency: it only hides a cycle). Imports under
`if TYPE_CHECKING:` are left out: they are never executed, and annotations stay strings
(`from __future__ import annotations`). A package's `__init__` is not counted as imported along with its
submodules, so a package that re-exports its own submodule (`cli/__init__` → `cli/main`) is no cycle.

The layers, top to bottom (docs: the layer picture of the architecture); a module may import its own layer
and any layer below it:

1. cli/, servers/, __main__, docs_gen.py (writes the reference pages by running the servers)
2. http/
3. mcp/, apps/ (the MCP App view the server registers)
4. app.py
5. engine/, integrations/
6. store/, schema/
7. rules.py, artifacts.py, config.py
8. errors.py, models.py, pagination.py (the page-cursor codec), audit.py, telemetry.py, tracing.py (spans,
   below everything that makes one),
   sdk/ (the SDK adapter), __init__ (the version)
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
PACKAGES = ("matrix_mcp", "servers")

# first matching prefix wins: longer prefixes first where they overlap
LAYERS: tuple[tuple[str, int], ...] = (
    ("matrix_mcp.cli", 1),
    ("servers", 1),
    ("matrix_mcp.__main__", 1),
    ("matrix_mcp.docs_gen", 1),
    ("matrix_mcp.http", 2),
    ("matrix_mcp.mcp", 3),
    ("matrix_mcp.apps", 3),
    ("matrix_mcp.app", 4),
    ("matrix_mcp.engine", 5),
    ("matrix_mcp.integrations", 5),
    ("matrix_mcp.store", 6),
    ("matrix_mcp.schema", 6),
    ("matrix_mcp.rules", 7),
    ("matrix_mcp.artifacts", 7),
    ("matrix_mcp.config", 7),
    ("matrix_mcp.errors", 8),
    ("matrix_mcp.models", 8),
    ("matrix_mcp.pagination", 8),
    ("matrix_mcp.audit", 8),
    ("matrix_mcp.telemetry", 8),
    ("matrix_mcp.tracing", 8),
    ("matrix_mcp.sdk", 8),
    ("matrix_mcp", 8),  # the package's own __init__: its version
)

# import cycles that could not be removed yet, each with its reason: (module, module it imports)
ALLOWED_CYCLE_EDGES: dict[tuple[str, str], str] = {}


def layer_of(module: str) -> int:
    for prefix, layer in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    raise AssertionError(f"{module} has no layer: place it in LAYERS (and in this module's docstring)")


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `name` imports, wherever in it the import is (but under TYPE_CHECKING)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def resolve(target: str) -> str | None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                hit = resolve(alias.name)
                if hit:
                    found.add(hit)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                package = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            for alias in node.names:  # `from package import submodule` imports the submodule
                hit = resolve(f"{base}.{alias.name}") if f"{base}.{alias.name}" in known else resolve(base)
                if hit:
                    found.add(hit)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
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

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def test_the_walk_finds_the_imports_it_must() -> None:
    edges = graph()
    assert len(edges) > 100
    assert "matrix_mcp.mcp.registry" in edges["matrix_mcp.http.scopes"]  # a top-level import
    assert "matrix_mcp.mcp.server" in edges["matrix_mcp.cli.main"]  # an import inside a function
    assert "matrix_mcp.cli.hooks" in edges["matrix_mcp.cli.main"]  # `from package import submodule`
    assert "matrix_mcp.mcp.tools.schema" in edges["servers.database_schema"]


def test_every_module_has_a_layer() -> None:
    for name in graph():
        layer_of(name)


def test_no_import_goes_to_a_higher_layer() -> None:
    upward = sorted(
        f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
        for name, targets in graph().items()
        for target in targets
        if layer_of(target) < layer_of(name)
    )
    assert upward == []


def test_no_import_cycle() -> None:
    edges = {
        name: {t for t in targets if (name, t) not in ALLOWED_CYCLE_EDGES}
        for name, targets in graph().items()
    }
    assert cycles(edges) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


FACES = ("matrix_mcp.http", "matrix_mcp.cli")


def store_reaches(source: str, *, for_types: bool = True) -> list[str]:
    """Where `source` reaches the store itself: an attribute `.store`, or an import of matrix_mcp.store
    (one under TYPE_CHECKING, for annotations, is allowed unless `for_types` is False)."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if for_types and isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Attribute) and node.attr == "store":
            found.append(f"line {node.lineno}: .store")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.module == "matrix_mcp":
                names = [f"matrix_mcp.{a.name}" for a in node.names]
            found.extend(
                f"line {node.lineno}: import {n}"
                for n in names
                if n == "matrix_mcp.store" or n.startswith("matrix_mcp.store.")
            )
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def test_the_faces_reach_the_store_only_through_the_engine() -> None:
    """http/ and cli/ call the engine's (and the App's) use cases; the store is theirs to name in types only."""
    faces = {name: path for name, path in modules().items() if name.startswith(FACES)}
    assert len(faces) > 20
    reaches = {
        name: hits
        for name, path in faces.items()
        if (hits := store_reaches(path.read_text(encoding="utf-8")))
    }
    assert reaches == {}


def test_mcp_imports_nothing_from_the_store() -> None:
    """The MCP face calls the App and the engine; not even its annotations name the store (the notifier
    follows the engine's events, the schema tools' cursors are pagination.py's)."""
    faces = {name: path for name, path in modules().items() if name.startswith("matrix_mcp.mcp")}
    assert len(faces) > 10
    reaches = {
        name: hits
        for name, path in faces.items()
        if (hits := store_reaches(path.read_text(encoding="utf-8"), for_types=False))
    }
    assert reaches == {}


def test_the_store_check_finds_what_it_must() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from matrix_mcp.store.protocol import Store\n"
        "from matrix_mcp.store import open_store\n"
        "import matrix_mcp.store.params\n"
        "from matrix_mcp import store\n"
        "async def f(engine):\n"
        "    return await engine.store.recount()\n"
    )
    assert store_reaches(source) == [
        "line 4: import matrix_mcp.store",
        "line 5: import matrix_mcp.store.params",
        "line 6: import matrix_mcp.store",
        "line 8: .store",
    ]
    assert store_reaches(source, for_types=False)[0] == "line 3: import matrix_mcp.store.protocol"
