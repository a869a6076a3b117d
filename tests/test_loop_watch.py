"""A run notes when its event loop was blocked, how long and where, in ``RunResult.diagnostics`` only."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from hybrid import Orchestrator, Query, RunResult, Store
from hybrid.events import QueryStarted, RunFinished
from hybrid.loop_watch import MAX_NOTES, Stall, notes
from hybrid.testing import Answer, FakeBackend

QUERIES = [Query(f"q{i}", f"question {i}") for i in range(4)]


async def blocked_stream_run(tmp_path: Path) -> tuple[RunResult, Store]:
    """Consume ``orch.stream`` like a heavy consumer would: a blocking call on the first event."""
    backend = FakeBackend({q.name: [Answer("fine", delay=0.05)] for q in QUERIES})
    store = Store(tmp_path / "runs.sqlite")
    async with Orchestrator(backend, max_concurrency=4, store=store) as orch:
        async for event in orch.stream(QUERIES):
            if isinstance(event, QueryStarted) and event.name == "q0":
                time.sleep(0.3)  # noqa: ASYNC251 (the blocking call the note must point at)
            if isinstance(event, RunFinished):
                return event.run, store
    raise AssertionError("the stream ended without its run")


async def test_a_blocked_loop_is_noted_with_where_it_was_blocked(tmp_path: Path) -> None:
    run, store = await blocked_stream_run(tmp_path)
    assert len(run.diagnostics) == 1, run.diagnostics
    note = run.diagnostics[0]
    assert "The event loop was blocked for" in note
    assert f"{Path(__file__)}:" in note and "time.sleep(0.3)" in note and "noqa" in note
    assert "asyncio.to_thread" in note  # what to do about it
    # never in what a checked notebook cell shows
    assert not any("blocked" in w for w in run.warnings)
    assert "blocked" not in repr(run) and "blocked" not in run._repr_html_() and "blocked" not in run.summary()
    # kept: the store gives it back, as the viewer reads it
    (name,) = store.runs()["name"]
    assert store.load(name).diagnostics == run.diagnostics
    assert run.to_dict()["diagnostics"] == list(run.diagnostics)


@pytest.mark.looptime
async def test_a_run_that_never_blocks_has_no_diagnostics() -> None:
    # virtual time: the whole run takes a few milliseconds of real time, far under the threshold
    backend = FakeBackend({q.name: [Answer("fine", delay=30.0)] for q in QUERIES})
    async with Orchestrator(backend, max_concurrency=4) as orch:
        run = await orch.run(QUERIES)
    assert run.metrics.wall_s == 30.0
    assert run.diagnostics == ()


def test_many_stalls_name_the_longest_in_order_and_sum_up_the_rest() -> None:
    stalls = [Stall(at_s=float(i), blocked_s=0.1 + i / 100, where=f"cell:{i}") for i in range(MAX_NOTES + 3)]
    lines = notes(stalls)
    shown = [s for s in stalls if any(f"in cell:{int(s.at_s)}:" in line for line in lines)]
    assert shown == stalls[3:]  # the five longest, in the order they happened
    assert lines[-1] == "... and 3 shorter stalls, 0.33 s in all."
    assert notes([]) == ()


def test_a_frame_caught_mid_change_is_an_unknown_place_not_an_error() -> None:
    """The watch reads another thread's frame while that thread runs: it may be half made (its line
    None, as seen under load), which must never raise in the watching thread."""
    from types import SimpleNamespace

    from hybrid.loop_watch import _where

    half_made = SimpleNamespace(f_back=None, f_code=SimpleNamespace(co_filename="cell.py", co_name="f"), f_lineno=None)
    assert _where(None) == "an unknown place"
    assert _where(half_made) == "cell.py:None in f"  # type: ignore[arg-type]
    assert _where(SimpleNamespace()) == "an unknown place"  # type: ignore[arg-type]


async def test_runs_on_one_loop_share_one_watcher_and_each_gets_the_stalls_that_overlapped_it() -> None:
    """A thread per run would be a thread per query for a harness that makes one run per query."""
    backend = FakeBackend(default=Answer("fine", delay=0.2))

    def watchers() -> int:
        return sum(t.name == "hybrid-loop-watch" and t.is_alive() for t in threading.enumerate())

    async with Orchestrator(backend) as orch:
        early = asyncio.create_task(orch.run(QUERIES))
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # noqa: ASYNC251 (a stall while only the early run runs)
        late = asyncio.create_task(orch.run(QUERIES))
        await asyncio.sleep(0.01)
        assert watchers() == 1  # two runs, one thread
        first, second = await early, await late
    assert len(first.diagnostics) == 1 and second.diagnostics == ()  # the stall ended before the late run began
    for _ in range(100):  # the last run closed its window: the thread ends within a ping
        if not watchers():
            break
        await asyncio.sleep(0.05)
    assert watchers() == 0
