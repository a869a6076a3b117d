"""Run a study on a virtual clock: exact timings, in a fraction of the real time.

:func:`simulate` runs ``study(*args)`` on a private event loop whose clock is virtual (``looptime``:
when nothing is ready to run, the clock jumps to the next timer instead of sleeping), in a worker
thread, so the notebook kernel's own loop and timers are never touched.  With the simulator
in-process (:func:`hybrid.sim.backend`), every duration in a study is the latency model's: two
queries of 8.5 s and 7.2 s gathered take a wall of exactly 8.5 s, on any machine, under any load,
in milliseconds of real time.

Use it for studies of scheduling, retries, capacity and rate limits, and for notebook regression
tests whose timing cells must give the same numbers every run.  Do not use it to measure the
client's own CPU (real work takes no virtual time) or with real servers or a served simulator
(sockets answer in real time, which a virtual clock does not wait for).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import looptime

T = TypeVar("T")


class _VirtualRun:
    """One study on its own virtual-time loop in a worker thread; ``done`` carries the outcome."""

    def __init__(self, study: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.study, self.args, self.kwargs = study, args, kwargs
        self.done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._ready = threading.Event()

    def run(self) -> None:
        loop = looptime.new_event_loop(start=0.0)
        self._loop = loop
        outcome: tuple[bool, Any] = (False, None)
        try:
            self._task = loop.create_task(self._study())
            self._ready.set()
            outcome = (True, loop.run_until_complete(self._task))
        except asyncio.CancelledError:
            outcome = (False, None)
        except BaseException as exc:  # the study's own error: the caller gets it
            outcome = (False, exc)
        finally:
            self._ready.set()
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()
        # Only now, with the loop closed, does the caller wake up.
        finished, value = outcome
        if finished:
            self.done.set_result(value)
        elif value is None:
            self.done.cancel()
        else:
            self.done.set_exception(value)

    async def _study(self) -> Any:
        return await self.study(*self.args, **self.kwargs)

    def cancel(self) -> None:
        """Cancel the study from another thread (the cell that awaited it was interrupted)."""
        self._ready.wait()
        if self._loop is not None and self._task is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._task.cancel)
            except RuntimeError:  # the loop closed meanwhile: the study is over anyway
                pass


async def simulate(study: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
    """``await study(*args, **kwargs)`` on a virtual clock, in a worker thread; returns its result.

    ``study`` is an async function that builds what it needs inside (an ``Orchestrator`` on
    ``sim.backend(...)``): objects bound to the caller's loop cannot cross into the study's.
    From a script: ``hybrid.run_sync(hybrid.simulate(study))``.  Interrupting the awaiting cell
    cancels the study; the rows it had finished stay on its orchestrator's ``last_run``.
    """
    run = _VirtualRun(study, args, kwargs)
    thread = threading.Thread(target=run.run, name="hybrid-virtual-time", daemon=True)
    thread.start()
    waiter = asyncio.wrap_future(run.done)
    try:
        result: T = await asyncio.shield(waiter)
    except asyncio.CancelledError:
        run.cancel()
        with contextlib.suppress(BaseException):  # wait for the study to wind down
            await waiter
        raise
    finally:
        thread.join()  # at once: settling ``done`` is the thread's last act
    return result
