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
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class WorkerLoop:
    """A coroutine run to completion on a fresh event loop in a thread of its own: the one
    mechanism behind :func:`run_sync` (a caller that blocks) and :func:`hybrid.simulate` (a
    caller that awaits, on a virtual-time loop from ``loop_factory``).  Nothing of the caller's
    loop is touched; the worker's loop is closed, async generators and executor included, before
    the outcome is delivered."""

    def __init__(
        self,
        coro: Coroutine[Any, Any, Any],
        *,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
        name: str = "hybrid-run-sync",
    ) -> None:
        self._coro = coro
        self._loop_factory = loop_factory
        self.done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        outcome: tuple[str, Any] = ("cancelled", None)
        try:
            with asyncio.Runner(loop_factory=self._loop_factory) as runner:
                outcome = ("value", runner.run(self._main()))
        except asyncio.CancelledError:
            outcome = ("cancelled", None)
        except BaseException as exc:  # the coroutine's own error: the caller gets it
            outcome = ("error", exc)
        finally:
            self._started.set()
        kind, value = outcome
        if kind == "value":
            self.done.set_result(value)
        elif kind == "error":
            self.done.set_exception(value)
        else:
            self.done.cancel()

    async def _main(self) -> Any:
        self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        self._started.set()
        return await self._coro

    def result(self) -> Any:
        """Block until the coroutine is done; its result, or its exception raised here."""
        self.thread.join()
        return self.done.result()

    async def wait(self) -> Any:
        """Await the coroutine from another loop; cancelling the caller cancels it, and waits for it."""
        waiter = asyncio.wrap_future(self.done)
        try:
            return await asyncio.shield(waiter)
        except asyncio.CancelledError:
            self.cancel()
            with contextlib.suppress(BaseException):
                await waiter
            raise
        finally:
            self.thread.join()  # at once: settling ``done`` is the thread's last act

    def cancel(self) -> None:
        """Cancel the coroutine from another thread."""
        self._started.wait()
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: it is over anyway
                loop.call_soon_threadsafe(task.cancel)


def virtual_clock_loop() -> asyncio.AbstractEventLoop:
    """A new event loop whose clock is virtual (``looptime``), starting at 0: when nothing is
    ready, it jumps to the next timer.  The loop :func:`hybrid.simulate` runs studies on.

    It jumps on the first turn that finds nothing ready (``noop_cycles=0``), not after looptime's
    default 42 empty turns: the turn before a jump has already polled for I/O and found none, so
    there is nothing more to run before the next timer, and a trace replay, whose every arrival and
    answer is a jump of its own, spends its time on requests rather than on empty turns
    (``benchmarks/replay_day.py``)."""
    import looptime

    loop: asyncio.AbstractEventLoop = looptime.new_event_loop(start=0.0, noop_cycles=0)
    return loop


def run_sync(coro: Coroutine[Any, Any, T], *, uvloop: bool = False) -> T:
    """Run ``coro`` to completion from synchronous code and return its result (or raise its error).

    ``uvloop=True`` runs it on uvloop's event loop (the ``fast`` extra), for scripts and the CLI,
    where the client's own CPU per call matters; a notebook kernel's loop is never replaced.
    """
    if not _loop_running():
        with asyncio.Runner(loop_factory=loop_factory(uvloop)) as runner:
            return runner.run(coro)
    if uvloop:
        from hybrid.errors import ConfigError

        coro.close()
        raise ConfigError(
            "uvloop=True replaces the event loop, which a running loop (a notebook kernel's) cannot have: "
            "drop uvloop=, or use it from a script or `hybrid ... --uvloop`."
        )
    value: T = WorkerLoop(coro).result()
    return value


def loop_factory(uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when asked for (None: asyncio's default loop)."""
    if not uvloop:
        return None
    try:
        import uvloop as fast_loops
    except ImportError:
        from hybrid.errors import ConfigError

        raise ConfigError(
            "uvloop is not installed: pip install 'hybrid-llm-kit[fast]' (or drop the uvloop option)."
        ) from None
    return fast_loops.new_event_loop


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
