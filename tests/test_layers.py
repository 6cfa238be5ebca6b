"""The tree is the architecture: each layer imports only from itself and the layers below it, and only the
orchestration layer imports Prefect (README, "Layout")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast  # no Postgres, no Prefect, no Whisper, no subprocess (TESTING.md)

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "gent_disagreement_rag"
# Lowest first. The ground modules are the package's top-level files.
# serve (gdr mcp, gdr web) sits right above search: it reads, so it may not import ingest or orchestration.
LAYERS = ["ground", "text", "providers", "sources", "storage", "search", "serve", "ingest", "orchestration", "cli"]


def layer_of(module: str) -> str:
    """`gent_disagreement_rag.storage.segments` -> storage; a top-level module -> ground."""
    parts = module.split(".")
    return parts[1] if len(parts) >= 2 and parts[1] in LAYERS else "ground"


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file, relative ones resolved."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
    return found


def test_no_layer_imports_a_layer_above_it_and_only_orchestration_imports_prefect() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        own = LAYERS.index(layer_of(module))
        for line, target in imports(path):
            where = f"{path.relative_to(PACKAGE)}:{line} imports {target}"
            if target.split(".")[0] == "prefect" or target.startswith("prefect_"):
                if layer_of(module) != "orchestration":
                    wrong.append(where)
            elif target.startswith("gent_disagreement_rag") and LAYERS.index(layer_of(target)) > own:
                wrong.append(where)
    assert wrong == []


def test_the_checker_sees_layers_and_relative_imports() -> None:
    """The rule above is only as good as its parsing: an upward import written relatively is recognised."""
    assert layer_of("gent_disagreement_rag.settings") == "ground"
    assert layer_of("gent_disagreement_rag.storage.segments") == "storage" == layer_of("gent_disagreement_rag.storage")
    found = dict(imports(PACKAGE / "ingest" / "stages.py")).values()
    assert "gent_disagreement_rag.storage" in found and "gent_disagreement_rag.text.chunking" in found


def module_imports(path: Path) -> set[str]:
    """The package's modules `path` imports (anywhere in it, functions included): `from . import x` names
    module x, not the package."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = (".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([node.module] if node.module else []))
                    if node.level else node.module or "")
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}") else base)
    return {m for m in found if m.startswith(PACKAGE.name + ".") and is_module(m) and m != module}


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_no_module_of_the_package_imports_itself_through_others() -> None:
    """No import cycle (a module's own package's __init__ aside, which every submodule passes through)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {m for m in module_imports(path) if not name.startswith(m + ".")}
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []
