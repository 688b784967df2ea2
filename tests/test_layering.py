"""The layering contract (DESIGN.md, "Layering"), checked over the source's imports.

Every import counts: at module level, inside functions, and under `if TYPE_CHECKING:`
(a type-only import is still a dependency a reader must follow, and the cycles it makes
are the ones that turn into real imports later).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "rules", "ticketstore", "autoresponse")
CLI = {"rules.cli", "rules.dryrun", "autoresponse.cli", "autoresponse.worker"}
PUBLIC_CORE = ("gateway.intake.ports", "gateway.intake.outcome", "gateway.intake.recipients")
# Known violations in areas being rewritten for issue 14; emptied when those land.
NOT_YET: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The modules of ours that `name` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in MODULES and t != name)
    return out


GRAPH = {name: _imports(name, path) - {b for a, b in NOT_YET if a == name}
         for name, path in MODULES.items()}


def _within(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _allowed(importer: str, imported: str) -> bool:
    if imported == "gateway":  # the package root: its version, nothing else
        return True
    if _within(imported, "gateway.server"):
        return _within(importer, "gateway.server", "gateway.server_cli")
    if _within(importer, "gateway.mail"):
        return _within(imported, "gateway.mail")
    if _within(importer, "ticketstore"):
        return _within(imported, "ticketstore")
    if _within(importer, "gateway.intake"):
        return _within(imported, "gateway.intake", "gateway.mail", "gateway.config",
                       "ticketstore")
    if _within(importer, "rules", "autoresponse"):
        own = importer.split(".")[0]
        if importer in CLI:
            return not _within(imported, "gateway.server")
        return _within(imported, own, *PUBLIC_CORE, "gateway.mail", "gateway.config",
                       "ticketstore")
    return True


def test_every_import_follows_the_layers() -> None:
    wrong = sorted(f"{a} imports {b}" for a, targets in GRAPH.items() for b in targets
                   if not _allowed(a, b))
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components: any with two modules or more is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                cycles.append(sorted([v, *component]))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", ["gateway.intake.core", "gateway.mail.parse",
                                    "ticketstore.numbers", "rules.dryrun"])
def test_the_walk_sees_imports(module: str) -> None:
    assert GRAPH[module], f"no imports found for {module}: the walk is broken"
