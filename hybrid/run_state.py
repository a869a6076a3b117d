"""One run in progress: its queries, the results landed so far, its clock, and who to tell.

A :class:`RunState` is made per call of ``run`` / ``stream`` / ``pipeline`` and handed to the
strategy, so the per-run things (results, clock origin, the event callback, the progress bar) are
not threaded through every signature.  :meth:`RunState.build` turns it into a
:class:`~hybrid.results.RunResult` at any moment, which is how a cancelled run still reports what
finished, and it cannot lose a row: if computing the metrics fails, the rows are kept and the
failure is logged and written into the run's warnings.

Every time here is the running loop's clock (``loop.time()``), the one clock of the kit, so a
virtual clock makes every timing exact; CPU is ``time.process_time()``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from hybrid import loop_watch, progress
from hybrid.errors import Cancelled
from hybrid.events import Event, QueryFinished, QueryProgress, QueryStarted
from hybrid.metrics import BudgetState, RunMetrics
from hybrid.query import Query, QueryResult
from hybrid.results import RunResult
from hybrid.tokens import count_tokens
from hybrid.validity import flags_of

log = logging.getLogger("hybrid")

#: A streamed query reports its tokens so far at most this often (each report counts tokens).
PROGRESS_EVERY_S = 0.25
#: Failed queries named one by one in ``RunResult.warnings``; the rest are summed up in one line.
MAX_DETAILED_WARNINGS = 20


class RunState:
    """The results of one run in progress (see the module docstring)."""

    def __init__(
        self,
        queries: Sequence[Query],
        stages: Sequence[int | None],
        *,
        mode: str,
        concurrency: int | None,
        emit: Callable[[Event], None] | None,
        bar: Any,
        on_finish: Callable[[QueryResult], None] | None = None,
        on_start: Callable[[int], None] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        limit_trace: Sequence[tuple[float, int]] | None = None,
        budget: Callable[[], BudgetState] | None = None,
        server_in_process: bool = False,
    ) -> None:
        self.queries = list(queries)
        #: ``max_concurrency="auto"``: the adaptive limit's changes (loop times), shared and growing.
        self.limit_trace = limit_trace
        #: With a budget: how it stands, read as the run ends.
        self.budget = budget
        self.stages = list(stages)
        self.mode = mode
        self.concurrency = concurrency
        self.results: list[QueryResult | None] = [None] * len(self.queries)
        #: When an open-loop strategy meant to send query ``index`` (seconds since the start; :meth:`schedule`).
        self.scheduled: dict[int, float] = {}
        self.server_in_process = server_in_process
        loop = asyncio.get_running_loop()
        #: A virtual clock (``looptime``, as ``hybrid.simulate`` and the tests use) times a model, not the machine.
        self.real_clock = not getattr(loop, "looptime_enabled", False)
        self.clock = loop.time
        self.t0 = self.stage_started = self.clock()
        self.cpu0 = time.process_time()
        self._emit = emit
        self._bar = bar
        self._on_finish = on_finish
        self._on_start = on_start
        self._on_progress = on_progress
        self._reported: dict[int, float] = {}
        #: What the run's warnings must say about how it was measured (:meth:`restart_clock`).
        self._notes: list[str] = []
        #: Real-time notes of a blocked loop, for ``RunResult.diagnostics`` (never its warnings).
        self._watch = loop_watch.watch(loop)

    def restart_clock(self, note: str) -> None:
        """Start the run's clock (wall, CPU, queue times) now: for a strategy that must set up
        before its first query can be submitted (Ray: a cluster and its actors), so that the wall
        measures the run, as its definition says, and not the set-up.  ``note`` (with
        ``{seconds}``, the set-up's length) joins the run's warnings.  Call it before any row lands."""
        now = self.clock()
        self._notes.append(note.format(seconds=now - self.t0))
        self.t0 = self.stage_started = now
        self.cpu0 = time.process_time()

    def schedule(self, index: int, at_s: float) -> None:
        """Query ``index`` is due ``at_s`` seconds after the start (an open-loop replay): its queue
        time counts from then, and its row keeps it as ``scheduled_s``.  Call it before ``run_one``."""
        self.scheduled[index] = at_s

    def now(self) -> float:
        """Seconds since the run started, on the loop's clock."""
        return self.clock() - self.t0

    def started(self, index: int, at: float) -> None:
        """The first request of query ``index`` left at loop time ``at``."""
        if self._on_start is not None:
            self._on_start(index)
        progress.started(self._bar, index)
        if self._emit is not None:
            self._emit(QueryStarted(index, self.queries[index].name, at - self.t0))

    @property
    def wants_progress(self) -> bool:
        """Whether anyone listens to streamed queries' tokens so far (events or the store)."""
        return self._emit is not None or self._on_progress is not None

    def progress(self, index: int, text_so_far: Callable[[], str]) -> None:
        """Query ``index`` (streamed) has received more text: report its tokens so far, at most
        every ``PROGRESS_EVERY_S`` per query (counting tokens is the costly part)."""
        now = self.clock()
        if now - self._reported.get(index, -PROGRESS_EVERY_S) < PROGRESS_EVERY_S:
            return
        self._reported[index] = now
        tokens = count_tokens(text_so_far())
        if self._on_progress is not None:
            self._on_progress(index, tokens)
        if self._emit is not None:
            self._emit(QueryProgress(index, self.queries[index].name, now - self.t0, tokens))

    def finish(self, result: QueryResult) -> None:
        """Record a query's final result (sent or not), save it (the run store), tick the bar, tell the listener."""
        self.results[result.index] = result
        if self._on_finish is not None:
            self._on_finish(result)
        progress.tick(self._bar, result)
        if self._emit is not None:
            self._emit(QueryFinished(result))

    def build(self, *, cancelled: bool = False, stopped_by: BaseException | None = None) -> RunResult:
        """The run as it stands.  A run that stopped (``cancelled``, or ``stopped_by`` an error)
        first lands a ``Cancelled`` row for each query still open, saved like any other row, so
        the store holds the same partial run that ``last_run`` does."""
        wall = self.now()
        cpu = time.process_time() - self.cpu0
        why = "was cancelled" if stopped_by is None else f"stopped on {type(stopped_by).__name__}"
        finished = sum(r is not None for r in self.results)
        for i, (query, result) in enumerate(zip(self.queries, self.results, strict=True)):
            if result is None:
                error = Cancelled(f"The run {why} before this query finished.")
                self.finish(QueryResult(query=query, index=i, stage=self.stages[i], error=error))
        results = tuple(r for r in self.results if r is not None)
        warnings = [*self._notes, *self._failure_warnings(results)]
        try:
            metrics = RunMetrics.compute(
                results,
                wall_s=wall,
                cpu_s=cpu,
                concurrency=self.concurrency,
                concurrency_trace=self._run_trace(),
                budget=None if self.budget is None else self.budget(),
            )
        except Exception as exc:  # never lose the rows over a number
            log.exception("hybrid: computing the run's metrics failed; the rows are kept")
            metrics = RunMetrics.unavailable(results, wall_s=wall)
            warnings.append(
                f"The run's metrics could not be computed ({type(exc).__name__}: {exc}); rows are complete."
            )
        if cancelled or stopped_by is not None:
            warnings.append(f"The run {why}; {finished} of {len(results)} queries had finished.")
        flags = flags_of(results, metrics, real_clock=self.real_clock, server_in_process=self.server_in_process)
        return RunResult(
            results=results,
            metrics=metrics,
            mode=self.mode,
            warnings=tuple(warnings),
            cancelled=cancelled,
            diagnostics=self._watch.stop(),
            flags=flags,
        )

    def _run_trace(self) -> list[tuple[float, int]]:
        """This run's part of the adaptive limit's changes, in seconds since the run started: the
        limit it started with, then each change."""
        if not self.limit_trace:
            return []
        before = [limit for at, limit in self.limit_trace if at <= self.t0]
        during = [(at - self.t0, limit) for at, limit in self.limit_trace if at > self.t0]
        return [(0.0, before[-1] if before else during[0][1]), *during]

    @staticmethod
    def _failure_warnings(results: Sequence[QueryResult]) -> list[str]:
        failed = [r for r in results if r.error is not None and not isinstance(r.error, Cancelled)]
        if not failed or len(failed) == len(results):
            return []
        warnings = [f"{len(failed)} of {len(results)} queries failed; the other answers are complete."]
        log.warning(warnings[0])
        warnings.extend(f"{r.name}: {r.error.kind}: {r.error}" for r in failed[:MAX_DETAILED_WARNINGS] if r.error)
        if len(failed) > MAX_DETAILED_WARNINGS:
            warnings.append(f"... and {len(failed) - MAX_DETAILED_WARNINGS} more: see run.to_frame()['error'].")
        for warning in warnings[1:]:
            log.debug(warning)
        return warnings
