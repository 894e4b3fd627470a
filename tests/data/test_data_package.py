"""The structure of the data package: module-level imports only, and no import cycle."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import monteclora_pyro.data as data

PACKAGE = Path(data.__file__).parent
# The only modules outside the package that it imports; neither imports the package.
OUTSIDE = {"monteclora_pyro.domains", "monteclora_pyro.models.likelihood"}


def module_name(path: Path) -> str:
    return data.__name__ if path.stem == "__init__" else f"{data.__name__}.{path.stem}"


def imported(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    return [node.module or ""]


def test_modules_import_at_module_level_without_a_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
        nested = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom) and node not in top
        ]
        assert not nested, f"{path.name}: function-local import at line {nested[0].lineno}"
        graph[module_name(path)] = {
            name for node in top for name in imported(node) if name.startswith("monteclora_pyro")
        }
    used = set().union(*graph.values())
    assert used - set(graph) == OUTSIDE
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError
    assert order[-1] == data.__name__
