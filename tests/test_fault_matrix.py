"""Faults, split in two, instead of every fault crossed with every way to run:

* translation — each fault the simulator injects, through each backend, JSON and SSE, becomes the
  right error kind (a wire question, over loopback);
* orchestration — each way to run (gather, sequential, threads, pipeline, stream) with a retryable
  and a non-retryable error keeps one row per query, retries where and only where retryable, and
  raises AllQueriesFailed when all fail (a logic question, on the fake backend in virtual time).
"""

from __future__ import annotations

from typing import Any

import pytest

from hybrid import (
    AllQueriesFailed,
    BadRequest,
    ConnectionFailed,
    DependencyFailed,
    InvalidResponse,
    Orchestrator,
    Query,
    QueryError,
    RateLimited,
    Retry,
    RunFinished,
    ServerError,
)
from hybrid.sim import Faults, SimConfig
from hybrid.testing import Fail, FakeBackend

from .conftest import orchestrated

ATTEMPTS = 3
RETRY_AFTER_S = 0.04

# fault -> error kind of the failed query (None: the answer arrives, usage estimated)
TRANSLATION: dict[str, type[QueryError] | None] = {
    "rate_limit": RateLimited,
    "rate_limit_bare": RateLimited,
    "server_error": ServerError,
    "unavailable": ServerError,
    "drop": ConnectionFailed,
    "malformed": InvalidResponse,
    "truncate": InvalidResponse,
    "no_usage": None,
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("fault", sorted(TRANSLATION))
async def test_each_fault_translates_to_its_error_kind(any_backend_kind: str, fault: str, stream: bool) -> None:
    config = SimConfig(seed=5, time_scale=0, faults=Faults(**{fault: 1.0}, retry_after_s=RETRY_AFTER_S))
    retry = Retry(attempts=2, base=0.0, jitter=0.0, retry_after_cap=0.0)
    async with orchestrated(any_backend_kind, config=config, retry=retry) as (orch, server):
        run = await orch.run([Query("q", "fault question", stream=stream)], raise_if_all_failed=False)
        stats = server.stats()
    result = run.results[0]
    kind = TRANSLATION[fault]
    if kind is None:
        assert result.ok and result.usage.estimated and stats["requests"] == 1
        return
    assert isinstance(result.error, kind), result.error
    assert result.error.retryable and result.attempts == 2 and stats["requests"] == 2
    if fault == "rate_limit":
        assert result.error.retry_after_s == pytest.approx(RETRY_AFTER_S)  # type: ignore[attr-defined]
    if fault == "rate_limit_bare":
        assert result.error.retry_after_s is None  # type: ignore[attr-defined]


WAYS = ("gather", "sequential", "pipeline", "stream")


async def run_way(orch: Orchestrator, way: str, queries: list[Query]) -> tuple[Any, bool]:
    """Run ``queries`` one of the ways; return the run and whether AllQueriesFailed was raised."""
    try:
        if way == "pipeline":
            first, *rest = queries
            rest = [
                Query(q.name, q.prompt + " after {{" + first.name + "}}") if i == 0 else q for i, q in enumerate(rest)
            ]
            return await orch.pipeline([[first], rest]), False
        if way == "stream":
            async with orch.stream(queries) as events:
                seen = [event async for event in events]
            assert isinstance(seen[-1], RunFinished)
            return seen[-1].run, False
        return await orch.run(queries, mode=way), False
    except AllQueriesFailed as exc:
        return exc.run, True


@pytest.mark.looptime
@pytest.mark.parametrize("error", [ServerError("down", status=503), BadRequest("bad", status=400)], ids=repr)
@pytest.mark.parametrize("way", WAYS)
async def test_every_way_keeps_rows_and_retries_only_what_is_retryable(way: str, error: QueryError) -> None:
    backend = FakeBackend(default=Fail(error))
    retry = Retry(attempts=ATTEMPTS, base=0.1, jitter=0.0)
    queries = [Query(f"q{i}", f"question {i}") for i in range(3)]
    async with Orchestrator(backend, retry=retry) as orch:
        run, raised = await run_way(orch, way, queries)
    assert raised, "every query failed, so AllQueriesFailed must be raised"
    assert [r.name for r in run.results] == ["q0", "q1", "q2"]
    sent = [r for r in run.results if not isinstance(r.error, DependencyFailed)]
    assert len(sent) == (2 if way == "pipeline" else 3)  # the pipeline does not send q1, which uses q0
    expected = ATTEMPTS if error.retryable else 1
    assert all(type(r.error) is type(error) and r.attempts == expected for r in sent)
    assert len(backend.calls) == sum(r.attempts for r in run.results)
    if error.retryable:  # backoffs 0.1 then 0.2
        assert all(r.latency_s == pytest.approx(0.3, abs=1e-9) for r in sent)
