"""Progress bars for long runs: a widget in Jupyter, text in a terminal, nothing under CI.

``tqdm.auto`` picks the ipywidgets bar in a notebook and falls back to text elsewhere.  Bars are
never shown when ``CI`` is set or ``HYBRID_PROGRESS=0`` (``make test`` sets it), so nbval and CI
logs hold no animation frames.  ``progress="auto"`` (the orchestrator's default) shows one only in
a Jupyter kernel that can draw widgets: a notebook shows a bar without asking, a script stays quiet.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from typing import Any


def silenced() -> bool:
    """True under CI or with ``HYBRID_PROGRESS=0``."""
    return bool(os.environ.get("CI")) or os.environ.get("HYBRID_PROGRESS") == "0"


def in_widget_kernel() -> bool:
    """True inside a Jupyter kernel (ipykernel) where ipywidgets can be imported."""
    shell = sys.modules.get("IPython")
    get_ipython = getattr(shell, "get_ipython", None)
    kernel = get_ipython() if get_ipython is not None else None
    return getattr(kernel, "kernel", None) is not None and importlib.util.find_spec("ipywidgets") is not None


def wanted(setting: bool | str) -> bool:
    """Whether a run with ``progress=setting`` (True, False or "auto") should show a bar."""
    if setting == "auto":
        return in_widget_kernel()
    return bool(setting)


@contextlib.contextmanager
def bar(total: int, description: str, *, requested: bool) -> Iterator[Any]:
    """A tqdm bar over ``total`` queries when ``requested`` and not silenced; else ``None``."""
    if not requested or silenced():
        yield None
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=description, unit="query") as progress:
        yield progress


def tick(progress: Any) -> None:
    """Advance ``progress`` by one query (no-op without a bar)."""
    if progress is not None:
        progress.update(1)
