"""Strategies: *how* a run's queries are spread over time — gather, sequential, threads.

The orchestrator turns each query into a result (slot, timeout scope, attempts through the call
chain); a strategy decides how those per-query coroutines are scheduled and what one attempt
ultimately calls.  ``orch.run(queries, mode="gather")`` looks the strategy up by name here; a new
way to run (a provider's batch API, a cluster) is a new :class:`Strategy`, not a second
orchestrator.

* :class:`Gather` — up to ``max_concurrency`` queries in flight on the event loop (the default).
* :class:`Sequential` — one query at a time: the baseline a speedup is measured against.
* :class:`Threads` — the seeds' legacy pattern: the backend's synchronous client on a thread pool
  of ``max_concurrency`` workers.  A thread cannot be cancelled, so a timeout or an interrupt
  abandons the call instead of stopping it.
* :class:`~hybrid.batch.Batch` (``mode="batch"``) and :class:`~hybrid.ray_shards.RayShards`
  (``mode=RayShards(shards=n)``) take the whole run (:meth:`Strategy.execute`): the provider's Batch API, and
  shards of the run on a Ray cluster.  They live in their own modules.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from hybrid.backends.protocol import Backend
from hybrid.chain import Next, compose
from hybrid.errors import ConfigError
from hybrid.query import Completion, Query, QueryResult

#: What one attempt calls at the end of the chain.
Send = Callable[[Query], Awaitable[Completion]]
#: Runs query number ``index`` to its result.
RunOne = Callable[[int, Query], Awaitable[None]]

if TYPE_CHECKING:
    from hybrid.orchestrator import Orchestrator
    from hybrid.run_state import RunState
    from hybrid.store import RunRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class RunContext:
    """One run as a strategy sees it: the queries left to answer (``todo``, as (index, query)),
    how to answer one through the orchestrator (``run_one``), the concurrency limit, the run's
    state (where results land), the port a whole-run strategy works through (:class:`RunPort`)
    and the store's record of the run (None without a store: remote jobs go there)."""

    todo: list[tuple[int, Query]]
    run_one: RunOne
    limit: int
    state: RunState
    port: RunPort
    record: RunRecord | None


class RunPort:
    """What a strategy that takes a whole run (batch, Ray) may do with it, and no more: read the
    run's settings, send attempts through the run's cache and budget links (:meth:`chain`), look
    the response cache up and fill it, price an answer, and land a row.  Such a strategy sends its
    work another way than ``run_one``, so this narrow port is how its rows still meet the same
    cache, budget, store and events as any other row; it never reaches into the orchestrator."""

    def __init__(self, orchestrator: Orchestrator, state: RunState) -> None:
        self._orch, self._state = orchestrator, state
        #: The run's settings, read-only: the backend and the limits and policies shards share.
        self.backend = orchestrator.backend
        self.max_concurrency = orchestrator.max_concurrency
        self.limits = orchestrator.limits
        self.timeout = orchestrator.timeout
        self.retry = orchestrator.retry
        self.prices = orchestrator.prices
        self.seed = orchestrator.seed
        self.progress = orchestrator.progress
        #: Land query ``index``'s row (``Orchestrator.land`` for this run: times are loop-clock
        #: readings): saved, counted and reported like every other row.
        self.land = functools.partial(orchestrator.land, state)

    def cached(self, query: Query) -> Completion | None:
        """The response cache's answer to ``query`` (None without a cache, or on a miss)."""
        cache = self._orch.cache
        return None if cache is None else cache.lookup(query)

    def split_cached(
        self, items: Sequence[tuple[int, Query]]
    ) -> tuple[list[tuple[int, Query, Completion]], list[tuple[int, Query]]]:
        """``items`` the response cache answers (with their answers) and the others, each looked up
        once; :meth:`land_cached` lands the first."""
        hits, left = [], []
        for index, query in items:
            hit = self.cached(query)
            if hit is None:
                left.append((index, query))
            else:
                hits.append((index, query, hit))
        return hits, left

    def land_cached(self, hits: Sequence[tuple[int, Query, Completion]]) -> None:
        """Land cache hits as the cache link would: no request, no cost, no time."""
        for index, query, hit in hits:
            now = self._state.clock()
            self.land(index, query, hit, None, attempts=0, origin="cache", cost=0.0, started=now, finished=now)

    def remember(self, query: Query, completion: Completion) -> None:
        """Add a fresh answer to the response cache (if there is one and its mode writes)."""
        if self._orch.cache is not None:
            self._orch.cache.remember(query, completion)

    def chain(self, last: Next) -> Next:
        """The run's cache and budget links around ``last``, the strategy's own way to send one
        attempt: a hit answered without sending, a budget reserved before and settled after, as for
        a live attempt.  The links that pace live traffic (rate limits, adaptive concurrency) stay out."""
        links = [link for link in (self._orch.cache, self._orch.budget) if link is not None]
        return compose(links, last)

    def cost(self, completion: Completion | None, *, batch: bool = False) -> float | None:
        """What ``completion`` cost at its model's price (the batch price with ``batch``)."""
        return self._orch.cost(completion, batch=batch)

    def started(self, index: int, at: float) -> None:
        """Query ``index``'s first request left at loop time ``at`` (for events and the viewer)."""
        self._state.started(index, at)

    def land_row(self, result: QueryResult) -> None:
        """Land a row made elsewhere (a shard's own orchestrator made it), with this run's index."""
        self._state.finish(result)


class Strategy:
    """How a run's queries are scheduled (see the module docstring)."""

    name: ClassVar[str]
    #: True for strategies that take a whole run at once (batch, ray): they cannot run pipeline stages.
    whole_run: ClassVar[bool] = False

    def check(self, orchestrator: Any) -> None:
        """Refuse, before anything is sent, settings this strategy cannot honour."""

    def sharded(self, shards: int) -> Strategy:
        """``run(..., shards=n)``: only a strategy that shards a run (Ray's) takes it."""
        raise ConfigError(
            f"shards= splits a run over a Ray cluster: use mode=hybrid.RayShards(shards={shards}) "
            f"(got mode={self.name!r})."
        )

    async def execute(self, run: RunContext) -> None:
        """Answer every query of ``run.todo``; by default, ``run_one`` each on :meth:`fan_out`'s schedule."""
        await self.fan_out(run.todo, run.run_one, run.limit)

    def concurrency(self, limit: int) -> int | None:
        """Queries in flight at once under an orchestrator limit of ``limit``, as the run's ideal
        efficiency assumes it (every query ready at the start); None when no ideal applies."""
        return limit

    def sender(self, backend: Backend, pool: Callable[[], ThreadPoolExecutor]) -> Send:
        """What one attempt calls; checked before anything is sent."""
        return backend.complete

    async def fan_out(self, items: Sequence[tuple[int, Query]], run_one: RunOne, limit: int) -> None:
        raise NotImplementedError


class Sequential(Strategy):
    name = "sequential"

    def concurrency(self, limit: int) -> int:
        return 1

    async def fan_out(self, items: Sequence[tuple[int, Query]], run_one: RunOne, limit: int) -> None:
        for index, query in items:
            await run_one(index, query)


class Gather(Strategy):
    """Up to ``limit`` queries in flight, in an ``asyncio.TaskGroup`` (the structured form of
    ``gather(..., return_exceptions=True)``: on cancellation every in-flight request is cancelled
    and awaited before the cancel propagates, so no task is left behind).

    ``min(len(items), limit)`` workers take the next query as each finishes, rather than one task
    per query all waiting on a semaphore: the same schedule, without tens of thousands of parked
    tasks.  Workers start one loop turn apart, so each first request is on the wire before the next
    one is built.  Started in the same turn, no request would leave until all of them were built
    (aiohttp writes a request in a task of its own on Python < 3.12, a turn later): the server would
    get one burst and sit idle meanwhile.  Started apart, the server works on the first requests
    while the client builds the rest, which at 256 workers of 0.2 s saves about 0.1 s of wall
    (``benchmarks/core_overhead.py``).
    """

    name = "gather"

    async def fan_out(self, items: Sequence[tuple[int, Query]], run_one: RunOne, limit: int) -> None:
        pending = iter(items)

        async def worker() -> None:
            for index, query in pending:
                await run_one(index, query)

        async with asyncio.TaskGroup() as group:
            for _ in range(min(len(items), limit)):
                group.create_task(worker())
                await asyncio.sleep(0)  # one loop turn per worker: see the docstring


class Threads(Gather):
    """Gather's schedule, but each attempt runs ``backend.complete_blocking`` on a worker thread."""

    name = "threads"

    def sender(self, backend: Backend, pool: Callable[[], ThreadPoolExecutor]) -> Send:
        if not backend.supports_threads:
            raise ConfigError(
                f"mode='threads' needs a synchronous client; {type(backend).__name__} has none. "
                "Use OpenAIBackend (for the simulator: against sim.serve(...))."
            )
        executor, blocking = pool(), backend.complete_blocking

        def send(query: Query) -> Awaitable[Completion]:
            return asyncio.get_running_loop().run_in_executor(executor, blocking, query)

        return send


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (Gather(), Sequential(), Threads())}


def register(strategy: Strategy) -> Strategy:
    """Make ``strategy`` available as ``mode=strategy.name`` (modules of their own register here)."""
    STRATEGIES[strategy.name] = strategy
    return strategy


def strategy_for(mode: str | Strategy) -> Strategy:
    """The strategy named ``mode`` (or ``mode`` itself); :class:`ConfigError` for an unknown name."""
    if isinstance(mode, Strategy):
        return mode
    try:
        return STRATEGIES[mode]
    except (KeyError, TypeError):
        raise ConfigError(f"Unknown mode {mode!r}; use one of {', '.join(STRATEGIES)}.") from None
