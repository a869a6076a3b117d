"""Progress for long runs: a live widget in a notebook someone is looking at, nothing elsewhere.

``progress="auto"`` (the orchestrator's default) decides by where the run happens:

* a Jupyter kernel driven by a front end a person uses (JupyterLab, Notebook 7, VS Code) shows the
  live run widget (:mod:`hybrid.live_run`, with anywidget from the ``notebook`` extra; without it,
  the ipywidgets bar of ``tqdm.auto``);
* a kernel driven headless (nbval, nbclient, papermill) shows none, so a checked cell's saved
  output never holds a bar's text and ``pytest --nbval-lax`` needs no setting;
* a script shows none unless asked (``progress=True``: a text bar on stderr);
* under CI (``CI`` set), or with ``HYBRID_PROGRESS=0``, none at all, even when asked.

How a kernel tells the two kinds of front end apart: every cell arrives as an ``execute_request``
whose ``allow_stdin`` says whether the front end can answer ``input()``.  JupyterLab, Notebook and
VS Code send true; nbval, nbclient (and papermill, built on it) send false, because no one is
there to type.  No one there to type is no one there to watch a bar either.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hybrid.query import QueryResult
    from hybrid.results import RunResult


def silenced() -> bool:
    """True under CI or with ``HYBRID_PROGRESS=0``."""
    return bool(os.environ.get("CI")) or os.environ.get("HYBRID_PROGRESS") == "0"


def watched_kernel() -> bool:
    """True inside a Jupyter kernel whose current cell came from a front end a person uses (its
    request allows stdin; see the module docstring) and where ipywidgets can be imported."""
    shell = sys.modules.get("IPython")
    get_ipython = getattr(shell, "get_ipython", None)
    kernel = getattr(get_ipython() if get_ipython is not None else None, "kernel", None)
    if kernel is None or importlib.util.find_spec("ipywidgets") is None:
        return False
    try:
        request = kernel.get_parent("shell")
    except Exception:  # an ipykernel without get_parent: no way to tell, so no bar
        return False
    return bool(request.get("content", {}).get("allow_stdin", False))


def wanted(setting: bool | str) -> bool:
    """Whether a run with ``progress=setting`` (True, False or "auto") should show a bar."""
    if setting == "auto":
        return watched_kernel()
    return bool(setting)


@contextlib.contextmanager
def bar(total: int, description: str, *, requested: bool, live: bool = False) -> Iterator[Any]:
    """When ``requested`` and not silenced: with ``live`` (a run of the orchestrator), the live run
    widget in a watched kernel that has anywidget; else a tqdm bar over ``total``; else ``None``."""
    if not requested or silenced():
        yield None
        return
    from hybrid import live_run

    if live and watched_kernel() and live_run.available():
        widget = live_run.LiveRun(total, description)
        try:
            yield widget
        finally:
            widget.close()
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=description, unit="query") as progress:
        yield progress


def connect(
    progress: Any, *, cancel: Callable[[], None], measures: Callable[[], tuple[int | None, float | None]]
) -> None:
    """Give a live widget what only the orchestrator knows: how to cancel this run, and the
    concurrency limit and budget left (read at each update).  A bar, or none, needs neither."""
    from hybrid.live_run import LiveRun

    if isinstance(progress, LiveRun):
        progress.cancel, progress.measures = cancel, measures


def started(progress: Any, index: int) -> None:
    """Query ``index`` sent its first request (a live widget counts it in flight)."""
    if progress is not None and hasattr(progress, "started"):
        progress.started(index)


def tick(progress: Any, result: QueryResult | None = None) -> None:
    """Advance ``progress`` by one finished query (no-op without a bar); a live widget also counts
    ``result`` (its kind, tokens and cost), which a plain bar does not need."""
    if progress is None:
        return
    if result is not None and hasattr(progress, "finished"):
        progress.finished(result)
    else:
        progress.update(1)


def ended(progress: Any, run: RunResult) -> None:
    """The run is over: a live widget's display becomes the run's summary, the same HTML as
    ``RunResult._repr_html_``, so a saved notebook shows it without a kernel."""
    from hybrid.live_run import LiveRun

    if isinstance(progress, LiveRun):
        progress.close()
        progress.show(run._repr_html_())
