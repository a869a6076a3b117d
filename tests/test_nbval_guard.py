"""The kit's pytest plugin (``pytest11``): a checked notebook cell cannot pass empty.

nbval compares a ``# NBVAL_CHECK_OUTPUT`` cell's output with the copy saved in the notebook; a saved
copy that is unrun or has no outputs makes the check pass whatever the cell prints.  These tests
strip one checked cell of the quickstart notebook, as a front end's bad autosave once did, and run
nbval on it as a user types it, in a folder of its own (only the installed plugin can catch it).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

#: Kernels, subprocesses or nbval: left out of `make test-fast`.
pytestmark = pytest.mark.heavy

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "notebooks" / "01_quickstart.ipynb"


def _checked_cells(notebook: nbformat.NotebookNode) -> list[int]:
    code = [c for c in notebook.cells if c.cell_type == "code"]
    return [i for i, c in enumerate(code) if "NBVAL_CHECK_OUTPUT" in c.source]


def _nbval(folder: Path, name: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", name]
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("how", ["outputs removed", "never run"])
def test_a_checked_cell_stripped_of_its_saved_output_fails(tmp_path: Path, how: str) -> None:
    notebook = nbformat.read(QUICKSTART, as_version=4)
    number = _checked_cells(notebook)[1]
    cell = [c for c in notebook.cells if c.cell_type == "code"][number]
    cell.outputs = []
    if how == "never run":
        cell.execution_count = None
    nbformat.write(notebook, tmp_path / "01_quickstart.ipynb")
    result = _nbval(tmp_path, "01_quickstart.ipynb")
    assert result.returncode == 1, result.stdout[-2000:]
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    assert [line.split(" - ")[0] for line in failed] == [f"FAILED 01_quickstart.ipynb::Cell {number}"], result.stdout[
        -3000:
    ]
    assert f"cell {number} is marked NBVAL_CHECK_OUTPUT but its saved copy" in result.stdout
    assert "git checkout -- " in result.stdout


def test_a_cell_that_is_not_checked_may_have_no_saved_output(tmp_path: Path) -> None:
    """Only checked cells must carry what they are checked against: a plain cell with no saved
    output, and a checked cell whose saved output is there, pass."""
    cells = [
        nbformat.v4.new_code_cell("x = 6 * 7"),
        nbformat.v4.new_code_cell(
            "# NBVAL_CHECK_OUTPUT\nprint(x)",
            execution_count=2,
            outputs=[nbformat.v4.new_output("stream", name="stdout", text="42\n")],
        ),
    ]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), tmp_path / "small.ipynb")
    result = _nbval(tmp_path, "small.ipynb")
    assert result.returncode == 0, result.stdout[-2000:]
