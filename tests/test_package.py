"""The package's shape: no import cycle, small modules, one owner per concept."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import monteclora_pyro
from monteclora_pyro.models.likelihood import LIKELIHOODS

ROOT = Path(monteclora_pyro.__file__).parent
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _type_checking_only(tree: ast.Module) -> set[ast.AST]:
    """Import nodes under ``if TYPE_CHECKING:``, which never run."""
    nodes = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            nodes.update(n for child in node.body for n in ast.walk(child))
    return nodes


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``path`` imports at run time, at any depth of its code."""
    found = set()
    tree = ast.parse(path.read_text())
    skipped = _type_checking_only(tree)
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name.startswith("monteclora_pyro.") or name == "monteclora_pyro":
                found.add(name)
    return found


def test_no_import_cycle():
    """Explicit imports (function-local ones included) form no cycle between modules.

    ``from package import submodule`` counts as an import of the submodule only.
    """
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        imported = _imports(path, modules)
        # "from a.b import c" lists both a.b.c and a.b: keep the most specific.
        graph[name] = {m for m in imported if not any(o.startswith(m + ".") for o in imported)}
        graph[name].discard(name)
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_no_function_local_imports_of_the_package():
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "monteclora_pyro"
                ):
                    pytest.fail(f"{name}.{func.name} imports {node.module} inside a function")


def test_every_module_is_small():
    long = {
        name: n
        for name, path in _modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_likelihood_names_are_compared_only_inside_their_classes():
    """``x == "next_token"`` and friends belong to models/likelihood.py."""
    names = set(LIKELIHOODS)
    owner = ROOT / "models" / "likelihood.py"
    for path in sorted(ROOT.rglob("*.py")):
        if path == owner:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            for operand in operands:
                values = operand.elts if isinstance(operand, ast.Tuple | ast.List) else [operand]
                for value in values:
                    if isinstance(value, ast.Constant) and value.value in names:
                        pytest.fail(f"{path}:{node.lineno} compares with {value.value!r}")


def test_plots_are_the_only_matplotlib_users():
    plots = ROOT / "analysis" / "plots"
    for path in sorted(ROOT.rglob("*.py")):
        if plots in path.parents:
            continue
        assert "matplotlib" not in path.read_text(), path


def test_the_training_loop_imports_neither_arviz_nor_xarray():
    code = (
        "import sys, monteclora_pyro.training\n"
        "print(sorted(m for m in ('arviz', 'xarray', 'matplotlib') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
