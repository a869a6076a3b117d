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

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from hybrid.notebook import WorkerLoop, virtual_clock_loop

T = TypeVar("T")


async def simulate(study: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
    """``await study(*args, **kwargs)`` on a virtual clock, in a worker thread; returns its result.

    ``study`` is an async function that builds what it needs inside (an ``Orchestrator`` on
    ``sim.backend(...)``): objects bound to the caller's loop cannot cross into the study's.
    From a script: ``hybrid.run_sync(hybrid.simulate(study))``.  Interrupting the awaiting cell
    cancels the study; the rows it had finished stay on its orchestrator's ``last_run``.
    """

    async def run() -> T:
        return await study(*args, **kwargs)

    worker = WorkerLoop(run(), loop_factory=virtual_clock_loop, name="hybrid-virtual-time")
    result: T = await worker.wait()
    return result
