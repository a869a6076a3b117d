"""Progress bars for long runs: a widget in Jupyter, text in a terminal, nothing under CI.

``tqdm.auto`` picks the ipywidgets bar in a notebook and falls back to text elsewhere.  Bars are
never shown when ``CI`` is set or ``HYBRID_PROGRESS=0`` (``make test`` sets it), so nbval and CI
logs hold no animation frames.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any


def silenced() -> bool:
    """True under CI or with ``HYBRID_PROGRESS=0``."""
    return bool(os.environ.get("CI")) or os.environ.get("HYBRID_PROGRESS") == "0"


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
