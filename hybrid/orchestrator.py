"""The orchestrator: *when* queries are sent, how many at once, how often retried, how long allowed.

Three ways to drive it, for three needs:

* :meth:`Orchestrator.run` — send a batch, get a :class:`RunResult` back: the notebook default.
* :meth:`Orchestrator.stream` — the same batch as events (a query started, a query finished, the
  run finished), for live displays and for consuming answers as they land.
* :meth:`Orchestrator.pipeline` — stages in order, each stage concurrent; a later prompt may use an
  earlier answer by name (``{{summary}}``).  The legacy 1 → 4 → 1 pattern is one pipeline.

Each of them runs the same per-query logic (:meth:`Orchestrator._settle`): wait for a concurrency
slot, then attempts and backoffs in one timeout scope, each attempt through the call chain
(:mod:`hybrid.chain`: rate limits, then the backend).  A :mod:`strategy <hybrid.strategies>`
decides how the queries are spread over time (gather, sequential, threads).

Guarantees, whatever fails: exactly one result per query, in input order; a failed query is a
result with an error; partial failure adds warnings to the run; only when every query failed does
``run`` raise :class:`~hybrid.errors.AllQueriesFailed` (carrying the run) unless told not to.  On
cancellation every in-flight request is cancelled (its connection closed) and awaited before the
cancel propagates; the results finished before it stay on :attr:`Orchestrator.last_run` (a
:class:`RunResult` with ``cancelled=True``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

from hybrid import progress
from hybrid.backends.openai_wire import STREAM_LISTENER
from hybrid.backends.protocol import Backend, SupportsIdentity
from hybrid.chain import Attempt, Link, compose
from hybrid.chain.adaptive import AdaptiveConcurrency
from hybrid.chain.budget import Budget
from hybrid.chain.cache import CACHE_MODES, ResponseCache
from hybrid.chain.rate_limits import RateLimits
from hybrid.errors import (
    AllQueriesFailed,
    Cancelled,
    ConfigError,
    DependencyFailed,
    NotRecorded,
    QueryError,
    QueryTimeout,
    RateLimited,
    check_choice,
    check_int,
    check_number,
    check_text,
)
from hybrid.estimate import Estimate, estimate
from hybrid.events import Event, Observed, Observer, QueryFinished, QueryStarted, RunFinished, RunStarted
from hybrid.pricing import PriceBook
from hybrid.process import IN_PROCESS_URLS
from hybrid.query import Completion, Price, Query, QueryResult, Usage
from hybrid.results import RunResult
from hybrid.retry import Retry
from hybrid.run_state import RunState
from hybrid.store import RunRecord, Store
from hybrid.strategies import RunContext, RunPort, Strategy, strategy_for
from hybrid.templating import check_references, placeholders, render

log = logging.getLogger("hybrid")

__all__ = ["Event", "Orchestrator", "QueryFinished", "QueryStarted", "RunFinished"]


class Orchestrator:
    """Runs queries through a backend with a concurrency limit, a per-query timeout and retries.

    ``backend`` is any object meeting the :class:`~hybrid.backends.protocol.Backend` protocol.
    ``max_concurrency`` queries are in flight at once (the backend's connection pool is sized to
    match; ``"auto"``: as many as the server keeps up with, up to ``concurrency_ceiling``, backing
    off on 429s and waiting out Retry-After, :mod:`hybrid.chain.adaptive`); ``timeout`` (seconds,
    or None) bounds each query over all its attempts; ``retry`` is the :class:`Retry` policy;
    ``rpm``/``tpm`` are client-side rate limits, taken per attempt, over ``rate_window_s`` (the
    provider's counting window, a minute by default);
    ``progress`` shows a tqdm bar: ``"auto"`` (the default) in a Jupyter kernel with widgets, never
    under CI or with ``HYBRID_PROGRESS=0``; ``prices`` maps
    model names to :class:`Price` for a cost column, overriding the prices genai-prices lists for
    the provider the base URL names (a local server gets none: :mod:`hybrid.pricing`); ``seed`` makes
    the retry jitter reproducible.

    ``store`` (a :class:`~hybrid.store.Store` or a file path) writes every result as it finishes,
    so an interrupt, a crash or a ``kill -9`` loses at most what was in flight; runs get a
    ``name`` and can be resumed.  ``cache`` (needs a store) answers a request already answered
    before from the store: ``"record"`` (or ``True``, ``"on"``: answer from the store, send and keep
    the rest), ``"replay"`` (answer only from the store and send nothing: a miss is a
    ``not_recorded`` row, and the backend is never opened), ``"read"`` (read only), ``"write"``
    (refresh), ``"live"`` or ``False`` (no cache); ``cache_max_age_s`` ignores older entries.  The
    environment variable ``HYBRID_CACHE`` (the same words) overrides ``cache`` for every orchestrator
    with a store, so CI can force replay without a code change.

    An orchestrator belongs to the event loop that opened it (its semaphore, its clients): using it
    from another loop (a second ``asyncio.run``, ``run_sync`` inside the notebook) is refused with a
    :class:`ConfigError` instead of freezing or failing oddly.  ``async with`` may be nested; the
    backend is closed when the outermost block exits.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        max_concurrency: int | str = 8,
        concurrency_ceiling: int = 64,
        timeout: float | None = 60.0,
        retry: Retry | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        rate_window_s: float = 60.0,
        progress: bool | str = "auto",
        prices: Mapping[str, Price] | None = None,
        seed: int | None = None,
        store: Store | str | Path | None = None,
        cache: bool | str = False,
        cache_max_age_s: float | None = None,
        budget_usd: float | None = None,
    ) -> None:
        if not isinstance(backend, Backend):
            raise ConfigError(
                f"backend must meet the Backend protocol (open, complete, complete_blocking, aclose, model, "
                f"supports_threads), e.g. OpenAIBackend or HTTPBackend; got {type(backend).__name__}."
            )
        self.adaptive = None
        if max_concurrency == "auto":
            self.adaptive = AdaptiveConcurrency(concurrency_ceiling)
            max_concurrency = concurrency_ceiling
        elif isinstance(max_concurrency, str):
            raise ConfigError(f"max_concurrency must be a number >= 1 or 'auto', got {max_concurrency!r}.")
        check_int("max_concurrency", max_concurrency, minimum=1)
        if timeout is not None:
            check_number("timeout (seconds, or None for none)", timeout, positive=True, unit="seconds")
        if retry is not None and not isinstance(retry, Retry):
            raise ConfigError(f"retry must be a Retry(...) policy or None, got {retry!r}; e.g. Retry(attempts=3).")
        if seed is not None:
            check_int("seed", seed)
        if not isinstance(progress, bool) and progress != "auto":
            raise ConfigError(f"progress must be True, False or 'auto', got {progress!r}.")
        self.prices = PriceBook(prices, getattr(backend, "base_url", None))
        self.store = store if isinstance(store, Store) or store is None else Store(store)
        cache_mode = _cache_mode(cache, self.store)
        if cache_max_age_s is not None:
            check_number("cache_max_age_s", cache_max_age_s, positive=True, unit="seconds")
        if budget_usd is not None:
            check_number("budget_usd", budget_usd, positive=True, unit="dollars")
        self.backend = backend
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.retry = retry if retry is not None else Retry()
        self.limits = RateLimits(rpm=rpm, tpm=tpm, window_s=rate_window_s)
        self.cache = (
            None
            if cache_mode is None or self.store is None
            else ResponseCache(
                self.store,
                mode=cache_mode,
                default_model=backend.model,
                max_age_s=cache_max_age_s,
                endpoint=backend.identity if isinstance(backend, SupportsIdentity) else None,
            )
        )
        self.budget = None if budget_usd is None else Budget(budget_usd, self.prices, backend.model)
        # Per attempt: the cache first (a hit costs nothing and takes no rate-limit token), then the
        # budget, then the limits, then the backend.
        limits = self.limits if self.limits.active else None
        # Adaptive concurrency sits next to the backend: it sees each request as it leaves and returns.
        links = (self.cache, self.budget, limits, self.adaptive)
        self.links: list[Link] = [link for link in links if link is not None]
        #: Called with every event of every run (:mod:`hybrid.events`): how tools such as
        #: :func:`hybrid.otel.instrument` watch runs without the engine knowing them.
        self.observers: list[Observer] = []
        self.progress = progress
        self.last_run: RunResult | None = None
        self.seed = seed
        self._rng = random.Random(seed)
        self._slots: asyncio.Semaphore | AdaptiveConcurrency | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._depth = 0
        #: The runs in flight: each one's cancel scope, its task and an event set once it has ended.
        self._runs: dict[asyncio.Timeout, tuple[asyncio.Task[object] | None, asyncio.Event]] = {}

    @property
    def replaying(self) -> bool:
        """True when answers come only from the store (``cache="replay"``, or ``HYBRID_CACHE=replay``)."""
        return self.cache is not None and self.cache.mode == "replay"

    def __repr__(self) -> str:
        return (
            f"Orchestrator({self.backend!r}, max_concurrency={self.max_concurrency}, "
            f"timeout={self.timeout}, retry={self.retry!r})"
        )

    async def __aenter__(self) -> Orchestrator:
        loop = asyncio.get_running_loop()
        if self._depth:
            self._check_loop()
            self._depth += 1
            return self
        if not self.replaying:  # a replay sends nothing: no connection, no reachability probe
            await self.backend.open(max_connections=self.max_concurrency, query_timeout=self.timeout)
        self._slots = asyncio.Semaphore(self.max_concurrency)
        if self.adaptive is not None:
            self.adaptive.open(loop.time())
            self._slots = self.adaptive
        self._loop, self._depth = loop, 1
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._depth -= 1
        if self._depth > 0:
            return
        await self._stop_runs()
        self._loop = self._slots = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if not self.replaying:
            await self.backend.aclose()
        if self.store is not None:
            await asyncio.to_thread(self.store.flush)  # leaving the block means the rows are on disk

    async def _stop_runs(self) -> None:
        """Closing under running runs cancels them, as an interrupt would, and waits until each has
        closed its requests and landed its rows: each ``run()`` / ``pipeline()`` then returns its
        partial :class:`RunResult` (``cancelled=True``, a warning saying why) and a stream ends with
        it.  Only then is the backend closed, so no request outlives the orchestrator and no task is
        left.  (A run in the very task that closes cannot be waited for: it ends on its own.)"""
        current = asyncio.current_task()
        waiting = []
        for scope, (task, ended) in list(self._runs.items()):
            if task is not current:
                scope.reschedule(asyncio.get_running_loop().time())
                waiting.append(ended.wait())
        if waiting:
            log.warning(
                "hybrid: the orchestrator was closed with %d run(s) in flight; they were cancelled", len(waiting)
            )
            await asyncio.gather(*waiting)

    # -- public API ---------------------------------------------------------------------------
    async def run(
        self,
        queries: Sequence[Query],
        *,
        mode: str | Strategy = "gather",
        raise_if_all_failed: bool = True,
        name: str | None = None,
        resume: bool = False,
        shards: int | None = None,
        progress: bool | None = None,
    ) -> RunResult:
        """Send every query and return the run.  ``mode`` is the :mod:`strategy <hybrid.strategies>`:
        ``gather`` (concurrently), ``sequential`` (one by one), ``threads`` (the synchronous SDK
        client on a thread pool, the legacy baseline), ``batch`` (the provider's Batch API: half
        price, answers within 24 h) or ``RayShards(shards=n)`` (``n`` orchestrators on a Ray cluster, each with
        its share of the concurrency and rate limits).

        With a store, ``name`` names the run (default: ``run-<time>``); ``resume=True`` continues
        the run of that name: queries it already answered ok (same name, same request) are not
        sent and come back with ``origin="resumed"``; failed, missing and changed ones are sent.

        ``progress`` overrides the orchestrator's bar setting for this run (a harness that makes
        many small runs shows one bar of its own instead of one per run).

        Raises :class:`AllQueriesFailed` only if every query failed (pass
        ``raise_if_all_failed=False`` to get that run back instead, as a measurement wants);
        otherwise failures are rows.
        """
        strategy = strategy_for(mode)
        if shards is not None:  # the old spelling of mode=RayShards(shards=n), kept for one release
            strategy = strategy.sharded(shards)
        items = self._checked(queries)
        strategy.check(self)
        record = self._begin_record(name, resume, strategy.name, items)
        run = await self._execute(
            items, [None] * len(items), strategy, strategy.name, None, record=record, show_progress=progress
        )
        return _raise_if_all_failed(run) if raise_if_all_failed else run

    def stream(self, queries: Sequence[Query], *, mode: str | Strategy = "gather") -> EventStream:
        """Like :meth:`run`, as events: :class:`QueryStarted`, :class:`QueryFinished` as they happen,
        then :class:`RunFinished`.  If every query failed, :class:`AllQueriesFailed` is raised after
        ``RunFinished`` was delivered.

        Use it as ``async with orch.stream(queries) as events: async for event in events: ...``:
        leaving the block, early or on an error, cancels the queries still in flight at once.
        A bare ``async for event in orch.stream(queries)`` works too when the loop runs to the end.
        """
        strategy = strategy_for(mode)
        items = self._checked(queries)
        strategy.check(self)
        record = self._begin_record(None, False, strategy.name, items)
        return EventStream(
            lambda emit: self._execute(
                items, [None] * len(items), strategy, strategy.name, emit, record=record, announce_interrupt=False
            )
        )

    async def pipeline(self, stages: Sequence[Sequence[Query]], *, mode: str | Strategy = "gather") -> RunResult:
        """Run stages in order, each stage's queries concurrently; return one run over all of them.

        ``mode`` is how each stage runs its queries (``"threads"`` reproduces the legacy pattern of a
        thread pool per stage).

        A prompt (or system prompt) may contain ``{{name}}`` for the answer of a query in an earlier
        stage.  Names must be unique; every placeholder is checked before anything is sent.  A query
        whose input failed, or whose filled-in prompt is blank, is not sent: its result carries
        :class:`~hybrid.errors.DependencyFailed`.
        """
        strategy = strategy_for(mode)
        if strategy.whole_run:
            raise ConfigError(
                f"mode={strategy.name!r} takes a whole run at once and cannot run pipeline stages; run each stage "
                f"with orch.run(stage, mode={strategy.name!r}) and fill the next stage's prompts from its answers."
            )
        strategy.check(self)
        stage_list = self._checked_stages(stages)
        flat = [q for stage in stage_list for q in stage]
        stage_of: list[int | None] = [s for s, stage in enumerate(stage_list) for _ in stage]
        answers: dict[str, str] = {}

        async def body(state: RunState, run_one: Callable[[int, Query], Awaitable[None]]) -> None:
            index = 0
            for s, stage in enumerate(stage_list):
                items: list[tuple[int, Query]] = []
                for query in stage:
                    ready = _filled(query, answers)
                    if isinstance(ready, DependencyFailed):
                        state.finish(QueryResult(query=query, index=index, stage=s, error=ready))
                    else:
                        items.append((index, ready))
                    index += 1
                state.stage_started = state.clock()
                await strategy.fan_out(items, run_one, self.max_concurrency)
                for result in state.results:
                    if result is not None and result.ok and result.text is not None:
                        answers[result.name] = result.text

        label = f"pipeline/{strategy.name}"
        record = self._begin_record(None, False, label, flat)
        run = await self._execute(flat, stage_of, strategy, label, None, body=body, record=record)
        return _raise_if_all_failed(run)

    def estimate(self, queries: Sequence[Query]) -> Estimate:
        """A forecast of running ``queries``, sending nothing: tokens, cost and wall per query and in
        total (:mod:`hybrid.estimate` says where each number comes from)."""
        return estimate(
            self._checked(queries),
            backend=self.backend,
            prices=self.prices,
            max_concurrency=self.max_concurrency,
            store=self.store,
        )

    # -- validation ---------------------------------------------------------------------------
    def _check_loop(self) -> None:
        if self._loop is None:
            raise ConfigError("The orchestrator is not open: use `async with Orchestrator(backend) as orch:`.")
        if asyncio.get_running_loop() is not self._loop:
            raise ConfigError(
                "This orchestrator was opened in another event loop (its connections and semaphore belong there). "
                "In a notebook, `await orch.run(...)` in the cell instead of run_sync(...); from a script, open the "
                "orchestrator inside the coroutine you pass to asyncio.run / hybrid.run_sync."
            )

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
                check_references(query.system or "", query.name, seen)
            seen.update(q.name for q in stage)
        return stage_list

    # -- execution ----------------------------------------------------------------------------
    def _thread_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="hybrid-query")
        return self._pool

    async def _execute(
        self,
        queries: list[Query],
        stage_of: list[int | None],
        strategy: Strategy,
        label: str,
        emit: Callable[[Event], None] | None,
        *,
        body: Callable[[RunState, Callable[[int, Query], Awaitable[None]]], Awaitable[None]] | None = None,
        record: RunRecord | None = None,
        show_progress: bool | None = None,
        announce_interrupt: bool = True,
    ) -> RunResult:
        self._check_loop()
        send = strategy.sender(self.backend, self._thread_pool)
        concurrency = strategy.concurrency(self.max_concurrency)
        setting = self.progress if show_progress is None else show_progress
        resumed = [] if record is None else record.resumed(queries, stage_of)
        if record is not None and len(resumed) < len(queries):  # a resume with nothing to send writes nothing
            record.open(len(queries), concurrency)
        with progress.bar(len(queries), f"hybrid {label}", requested=progress.wanted(setting), live=True) as bar:
            state = RunState(
                queries,
                stage_of,
                mode=label,
                concurrency=concurrency,
                emit=self._observed(emit),
                bar=bar,
                on_finish=None if record is None else record.save,
                on_start=None if record is None else record.started,
                on_progress=None if record is None else record.progressed,
                limit_trace=None if self.adaptive is None else self.adaptive.trace,
                budget=None if self.budget is None else self.budget.state,
                server_in_process=getattr(self.backend, "base_url", None) in IN_PROCESS_URLS,
            )
            self._tell(RunStarted(None if record is None else record.name, label, len(queries), self.backend.model))
            for result in resumed:
                state.finish(result)
            if self.cache is not None:
                self.cache.prefetch(queries)

            async def last(query: Query, attempt: Attempt) -> Completion:
                attempt.mark_sent(state.clock())
                if not (query.stream and state.wants_progress):
                    return await send(query)
                listening = STREAM_LISTENER.set(lambda received: state.progress(attempt.index, received.text_so_far))
                try:
                    return await send(query)
                finally:
                    STREAM_LISTENER.reset(listening)

            chain = compose(self.links, last)

            slots = self._slots

            async def run_one(index: int, query: Query) -> None:
                await self._settle(state, index, query, chain, slots)

            closing = asyncio.timeout(None)  # closing the orchestrator cancels the run through it
            ended = asyncio.Event()
            self._runs[closing] = (asyncio.current_task(), ended)
            from_widget: list[bool] = []

            def cancel_from_widget() -> None:
                """The live widget's cancel button: this run only, ending as closing would end it."""
                from_widget.append(True)
                closing.reschedule(asyncio.get_running_loop().time())

            progress.connect(bar, cancel=cancel_from_widget, measures=self._measures)
            try:
                async with closing:
                    if body is not None:
                        await body(state, run_one)
                    else:
                        todo = [(i, q) for i, q in enumerate(queries) if state.results[i] is None]
                        context = RunContext(
                            todo=todo,
                            run_one=run_one,
                            limit=self.max_concurrency,
                            state=state,
                            port=RunPort(self, state),
                            record=record,
                        )
                        await strategy.execute(context)
            except TimeoutError:
                if not closing.expired():
                    raise
                partial = state.build(cancelled=True)
                note = (
                    "The run was cancelled from its widget."
                    if from_widget
                    else "The orchestrator was closed while this run was in flight, which cancelled it."
                )
                closed = replace(partial, warnings=(*partial.warnings, note))
                self.last_run = closed = self._ended(closed, record, "cancelled", bar)
                if from_widget:
                    _announce_interrupt(closed, record, how="cancelled from its widget")
                return closed
            except (asyncio.CancelledError, KeyboardInterrupt) as stop:
                self.last_run = partial = self._ended(state.build(cancelled=True), record, "cancelled", bar)
                if announce_interrupt:
                    _announce_interrupt(partial, record)
                raise type(stop)() from None  # the kit's line above says it all; no internal frames
            except BaseException as exc:
                self.last_run = self._ended(state.build(stopped_by=exc), record, "failed", bar)
                raise
            finally:
                del self._runs[closing]
                ended.set()
            built = state.build()  # the run's clock stops here, before waiting for the disk
            if record is not None:
                # When run() returns, its rows are on disk, and a store that failed is known.
                await asyncio.to_thread(record.store.flush)
        self.last_run = run = self._ended(built, record, "finished", bar)
        return run

    def _measures(self) -> tuple[int | None, float | None]:
        """For a live widget: the concurrency limit now (the adaptive one's, when it adapts) and the
        budget left (None without a budget)."""
        limit = self.adaptive.limit if self.adaptive is not None else self.max_concurrency
        if self.budget is None:
            return limit, None
        state = self.budget.state()
        return limit, state.limit_usd - state.spent_usd - state.reserved_usd

    def _ended(self, run: RunResult, record: RunRecord | None, status: str, bar: Any) -> RunResult:
        """The run with what its end must say (a budget that stopped queries), written to the store
        as it is returned, plus a note if the store failed; a live widget shows it as it ended."""
        refused = sum(r.error is not None and r.error.kind == "budget" for r in run.results)
        if self.budget is not None and refused:
            note = (
                f"The ${self.budget.limit_usd:.6f} budget stopped {refused} of {len(run.results)} queries before "
                f"they were sent; ${self.budget.spent_usd:.6f} spent so far by this orchestrator."
            )
            run = replace(run, warnings=(*run.warnings, note))
        models = (m for r in run.results for m in (r.model, r.query.model or self.backend.model) if m)
        run = replace(run, prices=self.prices.sources(models))
        run = _with_store_warning(run, record, status)
        progress.ended(bar, run)
        self._tell(RunFinished(run))
        return run

    def _observed(self, emit: Callable[[Event], None] | None) -> Callable[[Event], None] | None:
        """``emit`` (a stream's), and the observers, told of each of a run's events."""
        if not self.observers:
            return emit

        def both(event: Event) -> None:
            if emit is not None:
                emit(event)
            self._tell(event)

        return both

    def _tell(self, event: Observed) -> None:
        """Tell each observer of ``event``; an observer that fails is logged, never the run's failure."""
        for observer in self.observers:
            try:
                observer(event)
            except Exception:
                log.exception("hybrid: an observer of the orchestrator's runs failed on %s", type(event).__name__)

    def _check_budget(self, queries: Sequence[Query]) -> None:
        """Under a budget every query needs a bounded worst case: ``max_tokens`` and a price."""
        if self.budget is None:
            return
        for query in queries:
            model = query.model or self.backend.model
            if query.max_tokens is None:
                raise ConfigError(
                    f"Query {query.name!r} has no max_tokens: under budget_usd every query needs one, "
                    "so that what an attempt can cost is known before it is sent."
                )
            if model not in self.prices:
                raise ConfigError(
                    f"Query {query.name!r} cannot run under budget_usd: its {self.prices.why_none(model)}"
                )

    def _begin_record(self, name: str | None, resume: bool, mode: str, queries: list[Query]) -> RunRecord | None:
        """The store's record of this run (None without a store); checks ``name`` and ``resume``,
        and the budget's needs, before anything is sent."""
        self._check_budget(queries)
        if self.store is None:
            if name is not None or resume:
                raise ConfigError("name= and resume= need a run store: Orchestrator(..., store='runs.sqlite').")
            return None
        if name is not None:
            check_text("run name", name)
        elif resume:
            raise ConfigError("resume=True needs the name of the run to continue: run(..., name='grid', resume=True).")
        settings = {
            "backend": type(self.backend).__name__,
            "model": self.backend.model,
            "max_concurrency": self.max_concurrency,
            "timeout": self.timeout,
            "retry": repr(self.retry),
            "rpm": self.limits.rpm,
            "tpm": self.limits.tpm,
            "cache": None if self.cache is None else self.cache.mode,
        }
        run_name = name or f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        model = self.backend.model
        return self.store.run_record(run_name, mode=mode, settings=settings, default_model=model, resume=resume)

    async def _settle(
        self,
        state: RunState,
        index: int,
        query: Query,
        chain: Callable[[Query, Attempt], Awaitable[Completion]],
        slots: asyncio.Semaphore | AdaptiveConcurrency | None,
    ) -> None:
        """Run one query to its result: wait for a slot, then attempts and backoffs in one timeout scope.

        ``started`` is when the first request left (after the slot and the rate limiter), so
        ``queue_s`` covers the waits before it and ``latency_s`` everything after, retries included.
        The timeout runs from that moment too, over every later attempt, backoff and limiter wait;
        waiting for the first turn (slot, rate limit) is queueing, not yet the query's time.
        Queue time counts from the start of the run (every query of a batch is submitted at once)
        or of its pipeline stage.
        """
        due = state.scheduled.get(index)
        submitted = state.stage_started if due is None else state.t0 + due
        async with slots or contextlib.nullcontext():
            attempts = 0
            first_sent: float | None = None
            last_sent: float | None = None
            completion: Completion | None = None
            error: QueryError | None = None
            cost: float | None = None
            scope = asyncio.timeout(None)

            def sent(at: float) -> None:
                nonlocal first_sent, last_sent
                last_sent = at
                if first_sent is None:
                    first_sent = at
                    if self.timeout is not None:
                        scope.reschedule(at + self.timeout)
                    state.started(index, at)

            try:
                async with scope:
                    while True:
                        attempts += 1
                        try:
                            completion = await chain(query, Attempt(index=index, number=attempts, on_sent=sent))
                            break
                        except QueryError as exc:
                            if not self.retry.should_retry(exc, attempts):
                                raise
                            delay = self.retry.delay(attempts, exc, self._rng)
                            _give_up_if_told_to_wait_too_long(exc, delay, scope)
                            await asyncio.sleep(delay)
                cost = self.cost(completion)
            except TimeoutError:
                if not scope.expired():
                    raise
                error = QueryTimeout(f"No answer within the {self.timeout}s timeout ({attempts} attempt(s)).")
            except QueryError as exc:
                error = exc.detached()
            except Exception as exc:  # a backend bug must still leave a row, not sink the run
                log.error("hybrid: the backend raised %s for query %r", type(exc).__name__, query.name, exc_info=exc)
                error = QueryError(f"Unexpected {type(exc).__name__} from the backend: {exc}")
                error.__cause__ = exc
            finished = state.clock()
        started = first_sent if first_sent is not None else finished
        cached = completion is not None and completion.cached
        if cached:
            attempts, cost = 0, 0.0  # nothing was sent or paid
        origin = "cache" if cached else "sent"
        self.land(
            state,
            index,
            query,
            completion,
            error,
            attempts=attempts,
            origin=origin,
            cost=cost,
            submitted=submitted,
            started=started,
            finished=finished,
            last_sent=last_sent,
        )

    def land(
        self,
        state: RunState,
        index: int,
        query: Query,
        completion: Completion | None,
        error: QueryError | None,
        *,
        attempts: int,
        origin: str,
        cost: float | None,
        started: float,
        finished: float,
        submitted: float | None = None,
        last_sent: float | None = None,
    ) -> None:
        """Build query ``index``'s row and hand it to the run (times are loop-clock readings): the one
        place a row is made, for every strategy.  A row answered over the wire with ``last_sent``
        (when its last attempt left) gets its latency's decomposition; ``submitted`` defaults to the
        run's start."""
        if isinstance(error, NotRecorded):  # a replay miss, told by the cache link: nothing left, nothing paid
            origin, attempts, cost = "cache", 0, 0.0
        parts = {}
        if completion is not None and origin == "sent" and last_sent is not None:
            parts = latency_parts(finished - started, last_sent - started, last_sent, completion)
        state.finish(
            QueryResult(
                query=query,
                index=index,
                stage=state.stages[index],
                text=completion.text if completion else None,
                error=error,
                usage=completion.usage if completion else Usage(),
                model=completion.model if completion else (query.model or self.backend.model),
                finish_reason=completion.finish_reason if completion else None,
                latency_s=finished - started,
                queue_s=max(0.0, started - (state.t0 if submitted is None else submitted)),
                ttft_s=completion.ttft_s if completion else None,
                attempts=attempts,
                started_s=started - state.t0,
                finished_s=finished - state.t0,
                cost_usd=cost,
                origin=origin,
                scheduled_s=state.scheduled.get(index),
                **parts,
            )
        )

    def cost(self, completion: Completion | None, *, batch: bool = False) -> float | None:
        """What ``completion`` cost at its model's price (the batch price with ``batch``); None unpriced."""
        if completion is None or completion.model not in self.prices:
            return None
        price = self.prices[completion.model]
        return price.cost(completion.usage) * (price.batch_discount if batch else 1.0)


def _with_store_warning(run: RunResult, record: RunRecord | None, status: str) -> RunResult:
    """Write the run's end to the store; if the store failed, say so on the run (its rows are complete)."""
    if record is None:
        return run
    failure = record.store.failure
    if failure is not None:
        note = (
            f"Writing to the run store {record.store} failed ({type(failure).__name__}: {failure}); "
            "the run completed in memory, but not every row may be saved: the stored run says 'incomplete'."
        )
        run = replace(run, warnings=(*run.warnings, note))
    record.end(run, status)
    return run


class EventStream:
    """The events of one run: an async iterator, and an async context manager that cancels the run
    when its block is left (see :meth:`Orchestrator.stream`)."""

    def __init__(self, start: Callable[[Callable[[Event], None]], Awaitable[RunResult]]) -> None:
        self._start = start
        self._task: asyncio.Task[RunResult] | None = None
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._iterator: AsyncIterator[Event] | None = None

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel the run if it is still going, wait until its requests are closed, end the iteration."""
        await self._cancel()
        if self._iterator is not None:
            await self._iterator.aclose()  # type: ignore[attr-defined]

    async def _cancel(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])

    def __aiter__(self) -> AsyncIterator[Event]:
        if self._iterator is None:
            self._iterator = self._iterate()
        return self._iterator

    async def _iterate(self) -> AsyncIterator[Event]:
        task = self._task = asyncio.ensure_future(self._start(self._events.put_nowait))
        task.add_done_callback(lambda _: self._events.put_nowait(None))
        try:
            while (event := await self._events.get()) is not None:
                yield event
            run = task.result()
            yield RunFinished(run)
            _raise_if_all_failed(run)
        finally:
            await self._cancel()


def latency_parts(latency: float, retry: float, last_sent: float, completion: Completion) -> dict[str, float | None]:
    """A row's latency split into parts that add up to it (ARCHITECTURE.md, "Metrics"): earlier
    attempts and backoff, the client's time before the last request left, the server's queue and
    work as it reported them, and the rest (network, reading the answer, unreported server time)."""
    client = 0.0 if completion.left_at is None else max(0.0, completion.left_at - last_sent)
    server = completion.server
    server_queue = None if server is None else server.queue_s
    server_work = None if server is None else server.service_s
    rest = latency - retry - client - (server_queue or 0.0) - (server_work or 0.0)
    if -1e-9 < rest < 0.0:  # float rounding of a sum that is exactly the latency: not a negative time
        rest = 0.0
    return {
        "retry_s": retry,
        "client_s": client,
        "server_queue_s": server_queue,
        "server_s": server_work,
        "network_s": rest,
    }


def _filled(query: Query, answers: Mapping[str, str]) -> Query | DependencyFailed:
    """``query`` with its ``{{name}}`` placeholders filled, or why it cannot be sent."""
    names = placeholders(query.prompt) + placeholders(query.system or "")
    missing = [name for name in names if name not in answers]
    if missing:
        return DependencyFailed(f"Not sent: it uses the answer of {missing}, which failed.")
    if not names:
        return query
    prompt = render(query.prompt, answers)
    if not prompt.strip():
        empty = [name for name in names if not answers[name].strip()]
        return DependencyFailed(f"Not sent: its prompt is blank once filled (empty answer from {empty}).")
    system = None if query.system is None else render(query.system, answers)
    return replace(query, prompt=prompt, system=system)


def _give_up_if_told_to_wait_too_long(error: QueryError, delay: float, scope: asyncio.Timeout) -> None:
    """A server asking to wait past the query's timeout (``Retry-After: 99999``) fails the query at
    once, as ``rate_limited`` with the server's value, instead of sleeping out the timeout."""
    deadline = scope.when()
    if deadline is None or not isinstance(error, RateLimited) or error.retry_after_s is None:
        return
    if asyncio.get_running_loop().time() + max(delay, error.retry_after_s) >= deadline:
        raise RateLimited(
            f"{error.message} The server asked to wait {error.retry_after_s:g}s, longer than the time left "
            "before this query's timeout; not retried.",
            status=error.status,
            retry_after_s=error.retry_after_s,
        )


def _announce_interrupt(partial: RunResult, record: RunRecord | None, how: str = "interrupted") -> None:
    """The kit's one line about an interrupted (or cancelled) run, on stderr (before the cell's short
    traceback, for an interrupt): what finished and where it is kept (``last_run``, and the store)."""
    done = sum(not isinstance(r.error, Cancelled) for r in partial.results)
    where = "the orchestrator's last_run"
    if record is not None:
        where += f" and in {record.store} as run {record.name!r} (resume=True sends only the rest)"
    print(
        f"hybrid: the run was {how}; {done} of {len(partial.results)} queries had finished. Their results are "
        f"on {where}.",
        file=sys.stderr,
        flush=True,
    )


def _cache_mode(cache: bool | str, store: Store | None) -> str | None:
    """The cache mode an orchestrator runs with (None: no cache): ``cache=``, unless ``HYBRID_CACHE``
    overrides it, as it does for every orchestrator with a store.  Checked here, before anything is
    sent: a cache needs a store, and a forced replay without one must not quietly use the network."""
    forced = os.environ.get("HYBRID_CACHE", "").strip().lower()
    if forced:
        check_choice("The environment variable HYBRID_CACHE", forced, (*CACHE_MODES, "live"))
        if forced == "replay" and store is None:
            raise ConfigError(
                "HYBRID_CACHE=replay answers only from a run store, and this orchestrator has none: pass "
                "store=hybrid.Store('runs.sqlite') (the file holding the recording), or unset HYBRID_CACHE."
            )
    if isinstance(cache, bool):
        mode = "on" if cache else "live"
    else:
        check_choice("cache (True, False or a mode)", cache, (*CACHE_MODES, "live"))
        mode = cache
    if forced and store is not None:
        mode = forced
    if mode == "live":
        return None
    if store is None:
        raise ConfigError(
            f"cache={cache!r} keeps answers in the run store: pass store=hybrid.Store('runs.sqlite') as well."
        )
    return mode


def _raise_if_all_failed(run: RunResult) -> RunResult:
    """Raise :class:`AllQueriesFailed` when every query failed; a cancelled run is returned as it is."""
    if run.results and run.metrics.succeeded == 0 and not run.cancelled:
        raise AllQueriesFailed(run)
    return run
