"""The one sync bridge of the kit, for code that cannot ``await``.

In JupyterLab, use top-level ``await`` — ``run = await orch.run(queries)`` — and nothing here is
needed.  :func:`run_sync` is for the places that cannot await: a plain script, a callback, a
function called from a thread.  It never nests loops:

* no loop running in this thread: ``asyncio.run(coro)``;
* a loop already running (a Jupyter cell, an async framework): the coroutine runs to completion
  on a fresh loop in a worker thread, and this thread blocks until it is done.  Objects bound to
  the notebook's loop (an open Orchestrator, a ``sim.serve`` server) cannot be used from there:
  create them inside ``coro``.

:func:`enable_nested` opts in to ``nest_asyncio`` (patching the running loop to be re-entrant).
It is not the default because the project is archived upstream and its patch is known to corrupt
ipykernel 7 sessions (hung cells, lost outputs); it is offered only for old code that calls
``asyncio.run`` inside a notebook and cannot be changed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code and return its result (or raise its error)."""
    if not _loop_running():
        return asyncio.run(coro)
    outcome: dict[str, Any] = {}

    def worker() -> None:
        try:
            outcome["value"] = asyncio.run(coro)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=worker, name="hybrid-run-sync", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value


def enable_nested() -> None:
    """Opt in to ``nest_asyncio`` so ``asyncio.run`` works inside a running loop.

    Warning: nest_asyncio is archived upstream and known to corrupt ipykernel 7 sessions. Prefer
    top-level ``await`` or :func:`run_sync`; use this only for legacy code you cannot change.
    """
    try:
        import nest_asyncio
    except ImportError as exc:
        from hybrid.errors import ConfigError

        raise ConfigError("enable_nested() needs nest-asyncio: pip install 'hybrid-llm-kit[notebook]'.") from exc
    nest_asyncio.apply()
