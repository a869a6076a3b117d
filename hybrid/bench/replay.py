"""Replay a workload open-loop on its own clock: :func:`replay`, and what its sessions measured.

Each session's first turn is due at its trace time ``t / speed`` (seconds after the run starts);
each later turn at the moment the turn before it got its answer, plus ``think_s / speed``, and it
carries the earlier turns' real answers (``Query.history``), not the trace's.  Nothing is sent
before it is due, and nothing due waits for an earlier answer of another session: this is the
load as it arrived, not a closed loop that slows down when the server does.  Each row keeps when
it was due (``scheduled_s``) beside when it left (``started_s``), so a client that could not keep
up shows as lag (the run's ``coordinated_omission`` flag), and its ``queue_s`` counts from when
it was due.

:class:`Replay` is a strategy (``orch.run(queries, mode=Replay(...))``), so a replay goes through
the same chain, store, cache, budget and events as any run, and on a virtual clock
(``hybrid.simulate`` with ``sim.backend()``) a day of traffic replays in seconds.  Sessions run
concurrently up to ``max_sessions``; a session due while all are busy starts when one ends (and
its lag says so).  A turn whose predecessor failed is not sent: its row carries
:class:`~hybrid.errors.DependencyFailed`.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING

import pandas as pd

from hybrid.errors import ConfigError, DependencyFailed, check_int, check_number
from hybrid.orchestrator import Orchestrator
from hybrid.query import Query, QueryResult
from hybrid.results import RunResult
from hybrid.strategies import RunContext, Strategy

if TYPE_CHECKING:
    from hybrid.run_state import RunState
    from hybrid.workload import Workload


class Replay(Strategy):
    """Send a workload's queries at their trace times (see the module docstring)."""

    name = "replay"
    whole_run = True  # the schedule is the workload's, not a pipeline's stages

    def __init__(self, workload: Workload, *, speed: float = 1.0, max_sessions: int | None = None) -> None:
        check_number("speed (1.0 = the trace's own pace, 2.0 = twice as fast)", speed, positive=True)
        if max_sessions is not None:
            check_int("max_sessions (sessions in flight at once)", max_sessions, minimum=1)
        self.workload, self.speed, self.max_sessions = workload, speed, max_sessions

    def concurrency(self, limit: int) -> int | None:
        """None: the ideal efficiency assumes every query ready at the start, which arrivals are not."""
        return None

    async def execute(self, run: RunContext) -> None:
        state, requests, speed = run.state, self.workload.requests, self.speed
        todo = dict(run.todo)  # a resumed run's finished turns are not here, but their answers are
        gate = asyncio.Semaphore(self.max_sessions) if self.max_sessions else None

        async def until(due: float) -> None:
            wait = state.t0 + due - state.clock()
            if wait > 0:
                await asyncio.sleep(wait)

        async def play(indices: tuple[int, ...], due: float) -> None:
            history: tuple[tuple[str, str], ...] = ()
            try:
                for turn, index in enumerate(indices):
                    if index in todo:
                        await until(due)
                        query = replace(todo[index], history=history) if history else todo[index]
                        state.schedule(index, due)
                        await run.run_one(index, query)
                    else:
                        query = state.results[index].query  # type: ignore[union-attr]
                    result = state.results[index]
                    if result is None or not result.ok or result.text is None:
                        _skip_rest(state, todo, indices[turn + 1 :], query.name)
                        return
                    history = (*history, ("user", query.prompt), ("assistant", result.text))
                    if turn + 1 < len(indices):
                        due = result.finished_s + requests[indices[turn + 1]].think_s / speed
            finally:
                if gate is not None:
                    gate.release()

        async with asyncio.TaskGroup() as group:
            for indices in self.workload.sessions():
                due = requests[indices[0]].t / speed
                await until(due)
                if gate is not None:
                    await gate.acquire()  # released by the session when it ends
                group.create_task(play(indices, due))


def _skip_rest(state: RunState, todo: dict[int, Query], rest: tuple[int, ...], failed: str) -> None:
    """Land the turns after a failed one as not sent: they have no answer to continue from."""
    for index in rest:
        if index in todo:
            error = DependencyFailed(f"Not sent: the turn before it ({failed!r}) has no answer to continue from.")
            state.finish(QueryResult(query=todo[index], index=index, error=error))


async def replay(
    orch: Orchestrator,
    workload: Workload,
    *,
    speed: float = 1.0,
    max_sessions: int | None = None,
    name: str | None = None,
) -> RunResult:
    """Replay ``workload`` through ``orch`` open-loop at ``speed`` times the trace's pace; the run's
    rows are in trace order (see the module docstring).  ``name`` names the run in the orchestrator's store."""
    from hybrid.workload import Workload

    if not isinstance(workload, Workload):
        raise ConfigError(
            f"bench.replay takes a Workload, not a {type(workload).__name__}: read one with "
            "hybrid.workload.load('trace.jsonl'), workload.from_otlp(path) or workload.from_run(store, name)."
        )
    strategy = Replay(workload, speed=speed, max_sessions=max_sessions)
    return await orch.run(workload.queries(), mode=strategy, name=name, raise_if_all_failed=False)


def sessions(run: RunResult) -> pd.DataFrame:
    """Per session of a replayed run: its turns, how many were answered, when its first turn was due
    and its last answered (``time_to_last_turn_s`` between them), and how its prompt grew from the
    first turn to the last (``tokens_grown``)."""
    rows: dict[str, list[QueryResult]] = {}
    for result in run.results:
        meta = result.query.metadata or {}
        key = meta.get("session") or result.name
        rows.setdefault(str(key), []).append(result)
    table = []
    for session, results in rows.items():
        results.sort(key=lambda r: (r.query.metadata or {}).get("turn", 1))
        first, last = results[0], results[-1]
        due = first.scheduled_s if first.scheduled_s is not None else first.started_s
        table.append(
            {
                "session": session,
                "turns": len(results),
                "answered": sum(r.ok for r in results),
                "first_due_s": due,
                "last_finished_s": last.finished_s,
                "time_to_last_turn_s": last.finished_s - due if last.ok else float("nan"),
                "first_prompt_tokens": first.usage.prompt_tokens,
                "last_prompt_tokens": last.usage.prompt_tokens,
                "tokens_grown": last.usage.prompt_tokens - first.usage.prompt_tokens if last.ok else 0,
            }
        )
    return pd.DataFrame(table)


def turns(run: RunResult) -> pd.DataFrame:
    """Per turn number of a replayed run: how many, answered, median latency and TTFT, mean prompt
    tokens and the mean lag between when a turn was due and when it left."""
    frame = run.to_frame()
    frame["turn"] = [(r.query.metadata or {}).get("turn", 1) for r in run.results]
    frame["lag_s"] = frame["started_s"] - frame["scheduled_s"]
    answered = frame[frame["ok"]]
    table = answered.groupby("turn").agg(
        answered=("ok", "size"),
        p50_latency_s=("latency_s", "median"),
        p50_ttft_s=("ttft_s", "median"),
        mean_prompt_tokens=("prompt_tokens", "mean"),
        mean_lag_s=("lag_s", "mean"),
    )
    table.insert(0, "requests", frame.groupby("turn").size())
    return table.reset_index()
