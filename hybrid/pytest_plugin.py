"""The kit's pytest plugin (registered through the ``pytest11`` entry point, so it is active in any
project that installs the kit, not only in this repository).

Today it guards nbval: a cell marked ``# NBVAL_CHECK_OUTPUT`` (or tagged ``nbval-check-output``)
promises that its output is compared with the copy saved in the notebook.  When the saved copy is
unrun (``execution_count`` null) nbval skips the comparison, and when it has no outputs there is
nothing to compare: either way the cell passes whatever it prints.  That happens to real notebooks
(a front end's autosave of a half-loaded page wrote one back stripped), and a check that cannot fail
is worse than none.  So such a cell fails here, after it has run (the cells after it still see its
effects), naming the notebook and cell and saying how to restore the saved outputs.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest


def _checked_but_empty(item: pytest.Item) -> str | None:
    """Why ``item`` (an nbval cell) is a checked cell with nothing saved to check, or None."""
    try:
        from nbval.plugin import IPyNbCell, find_comment_markers, find_metadata_tags
    except ImportError:  # nbval is not installed: there is nothing to guard
        return None
    if not isinstance(item, IPyNbCell) or not item.options.get("check"):
        return None
    cell = item.cell
    markers = {**dict(find_metadata_tags(cell.metadata)), **dict(find_comment_markers(cell.source))}
    if markers.get("check") is not True:  # checked by --nbval's default, not by a marker
        return None
    if cell.execution_count is None:
        return "its saved copy was never run (execution_count is null), so nbval skips the comparison"
    if not cell.outputs:
        return "its saved copy has no outputs, so there is nothing to compare against"
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    why = _checked_but_empty(item)
    if why is None:
        return (yield)
    try:
        yield  # the cell runs first: later cells depend on what it defines
    except Exception:  # nbval's own complaint (outputs differ from nothing) says less than this
        pass
    notebook = item.path
    pytest.fail(
        f"{notebook}, cell {getattr(item, 'cell_num', '?')} is marked NBVAL_CHECK_OUTPUT but {why}: its check "
        f"cannot tell right from wrong. Restore the saved outputs (git checkout -- {notebook}), or run the notebook "
        "top to bottom in JupyterLab and save it, then commit the outputs.",
        pytrace=False,
    )
