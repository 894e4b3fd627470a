"""The teaching notebooks run top to bottom in small mode, and are committed without outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbclient
import nbformat
import pytest
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
MODE_VARIABLE = "MONTECLORA_NOTEBOOK_MODE"
CELL_TIMEOUT_S = 300


def _ids(paths: list[Path]) -> list[str]:
    return [path.stem for path in paths]


def test_notebooks_exist():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_committed_without_outputs(path: Path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    assert notebook.get("nbformat") == 4, f"{path.name} is not an nbformat v4 notebook"
    dirty = [
        index
        for index, cell in enumerate(notebook["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count"))
    ]
    assert not dirty, (
        f"{path.name} carries outputs or execution counts in code cells {dirty}; strip them "
        "(e.g. `jupyter nbconvert --clear-output --inplace`) before committing"
    )


class CurrentInterpreter(KernelSpecManager):
    """Kernel specs that all run ipykernel in this interpreter, whatever is registered.

    A ``python3`` kernel spec installed for the user or system-wide could point at another
    Python; the notebooks must run against the packages of the environment running the tests
    (a fresh ``.venv`` with the ``dev`` extra, which brings ipykernel).
    """

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return KernelSpec(
            argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            display_name=f"Python {sys.version_info.major} (this interpreter)",
            language="python",
            name=kernel_name,
        )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_in_small_mode(path: Path, monkeypatch):
    monkeypatch.setenv(MODE_VARIABLE, "small")  # the kernel inherits this environment
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        km=KernelManager(kernel_name="python3", kernel_spec_manager=CurrentInterpreter()),
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},  # the kernel's working directory
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"{path.name} failed in small mode:\n{error}", pytrace=False)
