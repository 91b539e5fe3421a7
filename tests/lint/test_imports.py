"""The import graph of service/ and serving/, read from the source (every import, lazy ones inside
functions included): no module imports itself through others, no package (service.jobs,
service.training, … and each top-level module) does, and the contracts at the bottom import
nothing of tunedock but themselves. A new cycle fails here with its members named."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOPS = ("service", "serving")
SKIP = ("migrations", "node_modules", "ui")  # alembic's scripts; the dashboard's assets


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_name(p): p for top in TOPS for p in (ROOT / top).rglob("*.py")
            if not any(s in p.relative_to(ROOT).parts for s in SKIP)}


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{node.module}" if node.module else anchor
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                members = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    members.append(top)
                    if top == node:
                        break
                if len(members) > 1:
                    found.append(sorted(members))
    return found


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])  # service.jobs.store -> service.jobs; serving.vllm stays


def test_no_module_imports_itself_through_others() -> None:
    assert cycles(graph()) == []


def test_no_package_imports_itself_through_others() -> None:
    edges: dict[str, set[str]] = {}
    for a, bs in graph().items():
        edges.setdefault(_package(a), set()).update(_package(b) for b in bs if _package(b) != _package(a))
    assert cycles(edges) == []


def test_the_contracts_import_nothing_of_tunedock_but_themselves() -> None:
    outside = {f"{a} -> {b}" for a, bs in graph().items() if a.startswith("service.contracts")
               for b in bs if not b.startswith("service.contracts")}
    assert outside == set()


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_routes_call_services_never_a_store() -> None:
    """Controllers only call services (the house's rule): no module of routes imports a store
    module. The dependency providers (api/deps.py: the key lookup) and the health probes are not
    routes of a domain."""
    not_routes = {"service.api.deps", "service.api.health", "service.api.openapi", "service.openai_types"}
    routes = [n for n in graph() if (n.startswith("service.api.") or n.endswith(".routes")) and n not in not_routes]
    assert "service.files.routes" in routes and "service.jobs.routes" in routes
    found = {n: sorted(d for d in graph()[n] if d.rpartition(".")[2].startswith("store")) for n in routes}
    assert {n: d for n, d in found.items() if d} == {}
