"""An orchestrator's observers: every event of every run, framed by RunStarted and RunFinished,
whichever way the run goes; an observer that fails never fails the run."""

from __future__ import annotations

import logging

import pytest

from hybrid import Orchestrator, Query, QueryFinished, QueryStarted, RunFinished
from hybrid.events import Observed, RunStarted
from hybrid.testing import Answer, FakeBackend

pytestmark = pytest.mark.looptime

QUERIES = [Query("a", "first"), Query("b", "second")]


async def test_observers_see_every_run_framed_by_its_start_and_end(tmp_path) -> None:
    seen: list[Observed] = []
    async with Orchestrator(FakeBackend(default=Answer(delay=1.0)), store=tmp_path / "runs.sqlite") as orch:
        orch.observers.append(seen.append)
        run = await orch.run(QUERIES, name="named")
        async with orch.stream(QUERIES) as events:
            streamed = [event async for event in events]
        await orch.pipeline([QUERIES[:1], [Query("c", "after {{a}}")]])
    starts = [e for e in seen if isinstance(e, RunStarted)]
    assert [(s.name, s.mode, s.queries, s.model) for s in starts[:1]] == [("named", "gather", 2, "fake")]
    assert len(starts) == 3 and sum(isinstance(e, RunFinished) for e in seen) == 3
    first = seen[: seen.index(next(e for e in seen if isinstance(e, RunFinished))) + 1]
    assert isinstance(first[0], RunStarted) and isinstance(first[-1], RunFinished) and first[-1].run == run
    assert sorted(type(e).__name__ for e in first[1:-1]) == ["QueryFinished"] * 2 + ["QueryStarted"] * 2
    assert not any(isinstance(e, RunStarted) for e in streamed)  # a stream's consumer sees what it always did


async def test_an_observer_that_fails_is_logged_and_the_run_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: Observed) -> None:
        if isinstance(event, QueryStarted | QueryFinished):
            raise RuntimeError("observer bug")

    async with Orchestrator(FakeBackend(default=Answer(delay=1.0))) as orch:
        orch.observers.append(broken)
        with caplog.at_level(logging.ERROR, logger="hybrid"):
            run = await orch.run(QUERIES)
    assert run.ok and len(run) == 2
    assert "an observer of the orchestrator's runs failed on QueryStarted" in caplog.text
