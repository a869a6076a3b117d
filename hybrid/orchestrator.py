"""The orchestrator: *when* queries are sent, how many at once, how often retried, how long allowed.

Three ways to drive it, for three needs:

* :meth:`Orchestrator.run` — send a batch, get a :class:`RunResult` back: the notebook default.
* :meth:`Orchestrator.stream` — the same batch as an async iterator of events (a query started, a
  query finished, the run finished), for live displays and for consuming answers as they land.
* :meth:`Orchestrator.pipeline` — stages in order, each stage concurrent; a later prompt may use an
  earlier answer by name (``{{summary}}``).  The legacy 1 → 4 → 1 pattern is one pipeline.

Guarantees, whatever fails: exactly one result per query, in input order; a failed query is a
result with an error; partial failure adds warnings to the run; only when every query failed does
``run`` raise :class:`~hybrid.errors.AllQueriesFailed` (carrying the run).  Each query has one
timeout scope over all its attempts and backoffs.  Queries fan out in an ``asyncio.TaskGroup`` —
the structured form of ``asyncio.gather(..., return_exceptions=True)``: on cancellation every
in-flight request is cancelled (its connection closed) and awaited before the cancel propagates, so
no task is left behind.  The results finished before a cancellation stay on
:attr:`Orchestrator.last_run` (a :class:`RunResult` with ``cancelled=True``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Literal

from hybrid import progress
from hybrid.backends.base import Backend
from hybrid.errors import (
    AllQueriesFailed,
    Cancelled,
    ConfigError,
    DependencyFailed,
    QueryError,
    QueryTimeout,
)
from hybrid.limits import RateLimits
from hybrid.metrics import RunMetrics
from hybrid.query import Completion, Price, Query, QueryResult, Usage
from hybrid.results import RunResult
from hybrid.retry import Retry
from hybrid.templating import check_references, placeholders, render

log = logging.getLogger("hybrid")

Mode = Literal["gather", "sequential", "threads"]
#: Failed queries named one by one in ``RunResult.warnings``; the rest are summed up in one line.
MAX_DETAILED_WARNINGS = 20
MODES: tuple[str, ...] = ("gather", "sequential", "threads")


@dataclass(frozen=True, slots=True)
class QueryStarted:
    """A query got its concurrency slot and its first byte is being sent."""

    index: int
    name: str
    at_s: float


@dataclass(frozen=True, slots=True)
class QueryFinished:
    """A query finished, with an answer or an error."""

    result: QueryResult


@dataclass(frozen=True, slots=True)
class RunFinished:
    """The last event of a stream: the whole run."""

    run: RunResult


Event = QueryStarted | QueryFinished | RunFinished
Emit = Callable[[Event], None]
Call = Callable[[Query], Awaitable[Completion]]


class _RunState:
    """The results of a run in progress, so a cancelled run can still report what finished."""

    def __init__(self, queries: Sequence[Query], stages: Sequence[int | None], mode: str, concurrency: int) -> None:
        self.queries = list(queries)
        self.stages = list(stages)
        self.mode = mode
        self.concurrency = concurrency
        self.results: list[QueryResult | None] = [None] * len(self.queries)
        self.t0 = self.stage_started = time.perf_counter()
        self.cpu0 = time.process_time()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def build(self, *, cancelled: bool = False) -> RunResult:
        wall = self.now()
        cpu = time.process_time() - self.cpu0
        results = tuple(
            r
            if r is not None
            else QueryResult(
                query=q,
                index=i,
                stage=self.stages[i],
                error=Cancelled("The run was cancelled before this query finished."),
            )
            for i, (q, r) in enumerate(zip(self.queries, self.results, strict=True))
        )
        metrics = RunMetrics.compute(results, wall_s=wall, cpu_s=cpu, concurrency=self.concurrency)
        failed = [r for r in results if r.error is not None and not isinstance(r.error, Cancelled)]
        warnings: list[str] = []
        if failed and len(failed) < len(results):
            warnings.append(f"{len(failed)} of {len(results)} queries failed; the other answers are complete.")
            log.warning(warnings[0])
            warnings.extend(f"{r.name}: {r.error.kind}: {r.error}" for r in failed[:MAX_DETAILED_WARNINGS] if r.error)
            if len(failed) > MAX_DETAILED_WARNINGS:
                warnings.append(f"... and {len(failed) - MAX_DETAILED_WARNINGS} more: see run.to_frame()['error'].")
            for warning in warnings[1:]:
                log.debug(warning)
        if cancelled:
            warnings.append(
                f"The run was cancelled; {sum(r.ok for r in results)} of {len(results)} queries had finished."
            )
        return RunResult(
            results=results, metrics=metrics, mode=self.mode, warnings=tuple(warnings), cancelled=cancelled
        )


class Orchestrator:
    """Runs queries through a backend with a concurrency limit, a per-query timeout and retries.

    ``max_concurrency`` queries are in flight at once (the backend's connection pool is sized to
    match); ``timeout`` (seconds, or None) bounds each query over all its attempts; ``retry`` is the
    :class:`Retry` policy; ``rpm``/``tpm`` are client-side rate limits; ``progress`` shows a tqdm
    bar (never under CI or with ``HYBRID_PROGRESS=0``); ``prices`` maps model names to
    :class:`Price` for a cost column; ``seed`` makes the retry jitter reproducible.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        max_concurrency: int = 8,
        timeout: float | None = 60.0,
        retry: Retry | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        progress: bool = False,
        prices: Mapping[str, Price] | None = None,
        seed: int | None = None,
    ) -> None:
        if not isinstance(backend, Backend):
            raise ConfigError(f"backend must be an OpenAIBackend or HTTPBackend, got {type(backend).__name__}.")
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be an integer >= 1, got {max_concurrency!r}.")
        if timeout is not None and (
            not isinstance(timeout, int | float) or not timeout > 0 or not math.isfinite(timeout)
        ):
            raise ConfigError(f"timeout must be a positive number of seconds (or None for none), got {timeout!r}.")
        self.backend = backend
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.retry = retry if retry is not None else Retry()
        self.limits = RateLimits(rpm=rpm, tpm=tpm)
        self.progress = progress
        self.prices = dict(prices or {})
        self.last_run: RunResult | None = None
        self._rng = random.Random(seed)
        self._slots = asyncio.Semaphore(max_concurrency)
        self._pool: ThreadPoolExecutor | None = None
        self._open = False

    def __repr__(self) -> str:
        return (
            f"Orchestrator({self.backend!r}, max_concurrency={self.max_concurrency}, "
            f"timeout={self.timeout}, retry={self.retry!r})"
        )

    async def __aenter__(self) -> Orchestrator:
        await self.backend.open(max_connections=self.max_concurrency)
        self._open = True
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._open = False
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        await self.backend.aclose()

    # -- public API ---------------------------------------------------------------------------
    async def run(self, queries: Sequence[Query], *, mode: Mode = "gather") -> RunResult:
        """Send every query (``gather``: concurrently; ``sequential``: one by one; ``threads``: the
        synchronous SDK client on a thread pool, the legacy baseline) and return the run.

        Raises :class:`AllQueriesFailed` only if every query failed; otherwise failures are rows.
        """
        call = self._call_for(mode)
        queries = self._checked(queries)
        run = await self._execute(queries, [None] * len(queries), mode, call, None)
        return _raise_if_all_failed(run)

    async def stream(self, queries: Sequence[Query], *, mode: Mode = "gather") -> AsyncIterator[Event]:
        """Like :meth:`run`, as events: :class:`QueryStarted`, :class:`QueryFinished` as they happen,
        then :class:`RunFinished`.  If every query failed, :class:`AllQueriesFailed` is raised after
        ``RunFinished`` was yielded.  Leaving the loop early cancels the queries still in flight.
        """
        call = self._call_for(mode)
        queries = self._checked(queries)
        events: asyncio.Queue[Event | None] = asyncio.Queue()
        task = asyncio.ensure_future(self._execute(queries, [None] * len(queries), mode, call, events.put_nowait))
        task.add_done_callback(lambda _: events.put_nowait(None))
        try:
            while (event := await events.get()) is not None:
                yield event
            run = task.result()
            yield RunFinished(run)
            _raise_if_all_failed(run)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait([task])

    async def pipeline(self, stages: Sequence[Sequence[Query]], *, mode: Mode = "gather") -> RunResult:
        """Run stages in order, each stage's queries concurrently; return one run over all of them.

        ``mode`` is how each stage runs its queries (``"threads"`` reproduces the legacy pattern of a
        thread pool per stage).

        A prompt may contain ``{{name}}`` for the answer of a query in an earlier stage.  Names must
        be unique; every placeholder is checked before anything is sent.  A query whose input failed
        is not sent: its result carries :class:`~hybrid.errors.DependencyFailed`.
        """
        stage_list = self._checked_stages(stages)
        flat = [q for stage in stage_list for q in stage]
        stage_of: list[int | None] = [s for s, stage in enumerate(stage_list) for _ in stage]
        call = self._call_for(mode)
        answers: dict[str, str] = {}

        async def body(state: _RunState, emit: Emit | None, bar: Any) -> None:
            index = 0
            for s, stage in enumerate(stage_list):
                items: list[tuple[int, Query]] = []
                for query in stage:
                    missing = [name for name in placeholders(query.prompt) if name not in answers]
                    if missing:
                        error = DependencyFailed(f"Not sent: it uses the answer of {missing}, which failed.")
                        state.results[index] = QueryResult(query=query, index=index, stage=s, error=error)
                        progress.tick(bar)
                    else:
                        items.append((index, replace(query, prompt=render(query.prompt, answers))))
                    index += 1
                state.stage_started = time.perf_counter()
                await self._fan_out(state, items, mode, call, emit, bar)
                for result in state.results:
                    if result is not None and result.ok and result.text is not None:
                        answers[result.name] = result.text

        run = await self._execute(flat, stage_of, f"pipeline/{mode}", call, None, body=body)
        return _raise_if_all_failed(run)

    # -- validation ---------------------------------------------------------------------------
    def _require_open(self) -> None:
        if not self._open:
            raise ConfigError("The orchestrator is not open: use `async with Orchestrator(backend) as orch:`.")

    def _call_for(self, mode: str) -> Call:
        self._require_open()
        if mode not in MODES:
            raise ConfigError(f"Unknown mode {mode!r}; use one of {', '.join(MODES)}.")
        if mode != "threads":
            return self.backend.complete
        if type(self.backend).complete_blocking is Backend.complete_blocking:
            raise ConfigError(f"mode='threads' needs a synchronous client; {type(self.backend).__name__} has none.")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="hybrid-query")
        pool, blocking = self._pool, self.backend.complete_blocking

        def call(query: Query) -> Awaitable[Completion]:
            return asyncio.get_running_loop().run_in_executor(pool, blocking, query)

        return call

    @staticmethod
    def _checked(queries: Sequence[Query]) -> list[Query]:
        if isinstance(queries, Query):
            raise ConfigError("Pass a list of queries, e.g. orch.run([query]).")
        items = list(queries)
        if not items:
            raise ConfigError("No queries to run: pass a non-empty list of Query objects.")
        for i, query in enumerate(items):
            if not isinstance(query, Query):
                raise ConfigError(
                    f"Item {i} is a {type(query).__name__}, not a Query: wrap prompts as Query(name, prompt)."
                )
        return items

    def _checked_stages(self, stages: Sequence[Sequence[Query]]) -> list[list[Query]]:
        stage_list = [self._checked(stage) for stage in stages]
        if not stage_list:
            raise ConfigError("A pipeline needs at least one stage (a list of lists of queries).")
        seen: set[str] = set()
        for stage in stage_list:
            for query in stage:
                if query.name in seen:
                    raise ConfigError(f"Query name {query.name!r} appears twice; pipeline names must be unique.")
                check_references(query.prompt, query.name, seen)
            seen.update(q.name for q in stage)
        return stage_list

    # -- execution ----------------------------------------------------------------------------
    async def _execute(
        self,
        queries: list[Query],
        stage_of: list[int | None],
        mode: str,
        call: Call,
        emit: Emit | None,
        *,
        body: Callable[[_RunState, Emit | None, Any], Awaitable[None]] | None = None,
    ) -> RunResult:
        concurrency = 1 if mode.endswith("sequential") else self.max_concurrency
        state = _RunState(queries, stage_of, mode, concurrency)
        try:
            with progress.bar(len(queries), f"hybrid {mode}", requested=self.progress) as bar:
                if body is not None:
                    await body(state, emit, bar)
                else:
                    await self._fan_out(state, list(enumerate(queries)), mode, call, emit, bar)
        except BaseException:
            self.last_run = state.build(cancelled=True)
            raise
        self.last_run = run = state.build()
        return run

    async def _fan_out(
        self,
        state: _RunState,
        items: list[tuple[int, Query]],
        mode: str,
        call: Call,
        emit: Emit | None,
        bar: Any,
    ) -> None:
        """Run ``items`` one at a time (sequential) or with up to ``max_concurrency`` in flight.

        Concurrent modes start ``min(len(items), max_concurrency)`` workers that take the next query
        as each one finishes, rather than one task per query all waiting on the semaphore: the same
        schedule, without tens of thousands of parked tasks (the semaphore still bounds runs that
        share this orchestrator).

        Workers start one loop turn apart, so each first request is on the wire before the next
        one is built.  Started in the same turn, no request would leave until all of them were
        built (aiohttp writes a request in a task of its own on Python < 3.12, a turn later): the
        server would get one burst and sit idle meanwhile.  Started apart, the server works on the
        first requests while the client builds the rest, which at 256 workers of 0.2 s saves about
        0.1 s of wall (``benchmarks/core_overhead.py``).
        """
        pending = iter(items)

        async def worker() -> None:
            for index, query in pending:
                await self._one(state, index, query, call, emit, bar)

        if mode.endswith("sequential"):
            await worker()
            return
        async with asyncio.TaskGroup() as group:
            for _ in range(min(len(items), self.max_concurrency)):
                group.create_task(worker())
                await asyncio.sleep(0)  # one loop turn per worker: see the docstring

    async def _one(self, state: _RunState, index: int, query: Query, call: Call, emit: Emit | None, bar: Any) -> None:
        """Run one query to a result: wait for a slot, then attempts and backoffs in one timeout scope.

        Queue time counts from the start of the run (every query of a batch is submitted at once)
        or of its pipeline stage.
        """
        submitted = state.stage_started
        async with self._slots:
            if self.limits.active:
                await self.limits.acquire(query)
            started = time.perf_counter()
            if emit is not None:
                emit(QueryStarted(index, query.name, started - state.t0))
            attempts = 0
            completion: Completion | None = None
            error: QueryError | None = None
            try:
                async with asyncio.timeout(self.timeout) as scope:
                    while True:
                        attempts += 1
                        try:
                            completion = await call(query)
                            break
                        except QueryError as exc:
                            if not self.retry.should_retry(exc, attempts):
                                raise
                            await asyncio.sleep(self.retry.delay(attempts, exc, self._rng))
            except TimeoutError:
                if not scope.expired():
                    raise
                error = QueryTimeout(f"No answer within the {self.timeout}s timeout ({attempts} attempt(s)).")
            except QueryError as exc:
                error = exc
            except Exception as exc:  # a backend bug must still leave a row, not sink the run
                error = QueryError(f"Unexpected {type(exc).__name__}: {exc}")
            finished = time.perf_counter()
        result = QueryResult(
            query=query,
            index=index,
            stage=state.stages[index],
            text=completion.text if completion else None,
            error=error,
            usage=completion.usage if completion else Usage(),
            model=completion.model if completion else (query.model or self.backend.model),
            finish_reason=completion.finish_reason if completion else None,
            latency_s=finished - started,
            queue_s=started - submitted,
            ttft_s=completion.ttft_s if completion else None,
            attempts=attempts,
            started_s=started - state.t0,
            finished_s=finished - state.t0,
            cost_usd=self._cost(completion),
        )
        state.results[index] = result
        progress.tick(bar)
        if emit is not None:
            emit(QueryFinished(result))

    def _cost(self, completion: Completion | None) -> float | None:
        if completion is None or completion.model not in self.prices:
            return None
        return self.prices[completion.model].cost(completion.usage)


def _raise_if_all_failed(run: RunResult) -> RunResult:
    if run.results and run.metrics.succeeded == 0:
        raise AllQueriesFailed(run)
    return run
