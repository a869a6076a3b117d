"""Every simulator fault x every way to run x streaming on/off: one result per query, the right
error kind, retries where (and only where) retryable, Retry-After honoured, the timeout enforced
across attempts, AllQueriesFailed when all fail."""

from __future__ import annotations

from typing import Any

import pytest

from hybrid import (
    AllQueriesFailed,
    ConnectionFailed,
    DependencyFailed,
    InvalidResponse,
    Query,
    QueryError,
    QueryTimeout,
    RateLimited,
    Retry,
    RunFinished,
    ServerError,
)
from hybrid.sim import Faults, SimConfig

from .conftest import orchestrated

ATTEMPTS = 3
RETRY_AFTER_S = 0.04
TIMEOUT_S = 0.4

# fault -> (error kind on the failed queries, retryable?)
FAULTS: dict[str, tuple[type[QueryError] | None, bool]] = {
    "rate_limit": (RateLimited, True),
    "rate_limit_bare": (RateLimited, True),
    "server_error": (ServerError, True),
    "unavailable": (ServerError, True),
    "hang": (QueryTimeout, False),
    "drop": (ConnectionFailed, True),
    "malformed": (InvalidResponse, True),
    "truncate": (InvalidResponse, True),
    "no_usage": (None, False),
}
WAYS = ("gather", "sequential", "threads", "pipeline", "stream")
# threads mode needs the sync SDK client, so it exists only for OpenAIBackend
# (HTTPBackend refuses it before sending: test_threads_mode_needs_a_sync_client).
BACKEND_WAYS = [(kind, way) for kind in ("openai", "http") for way in WAYS if (kind, way) != ("http", "threads")]


async def run_way(orch: Any, way: str, queries: list[Query]) -> tuple[Any, bool]:
    """Run ``queries`` one of the five ways; return the run and whether AllQueriesFailed was raised."""
    try:
        if way == "pipeline":
            first, *rest = queries
            rest = [
                Query(q.name, q.prompt + " after {{" + first.name + "}}", stream=q.stream) if i == 0 else q
                for i, q in enumerate(rest)
            ]
            return await orch.pipeline([[first], rest]), False
        if way == "stream":
            events = [event async for event in orch.stream(queries)]
            assert isinstance(events[-1], RunFinished)
            return events[-1].run, False
        return await orch.run(queries, mode=way), False
    except AllQueriesFailed as exc:
        return exc.run, True


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize(("backend_kind", "way"), BACKEND_WAYS)
@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_fault_matrix(backend_kind: str, fault: str, way: str, stream: bool) -> None:
    error_kind, retryable = FAULTS[fault]
    config = SimConfig(seed=5, time_scale=0, faults=Faults(**{fault: 1.0}, retry_after_s=RETRY_AFTER_S, hang_s=3.0))
    retry = Retry(attempts=ATTEMPTS, base=0.001, cap=0.002, jitter=0.0)
    queries = [Query(f"q{i}", f"fault matrix question {i}", stream=stream) for i in range(3)]
    async with orchestrated(backend_kind, config=config, retry=retry, timeout=TIMEOUT_S) as (orch, server):
        run, raised = await run_way(orch, way, queries)
        stats = server.stats()

    assert [r.name for r in run.results] == ["q0", "q1", "q2"]  # one result per query, in order
    if error_kind is None:  # missing usage: answers arrive, tokens are estimated
        assert not raised and all(r.ok and r.usage.estimated for r in run.results)
        assert stats["requests"] == 3
        return
    assert raised, "every query failed, so AllQueriesFailed must be raised"
    sent = [r for r in run.results if not isinstance(r.error, DependencyFailed)]
    assert len(sent) == (2 if way == "pipeline" else 3)
    for result in sent:
        assert isinstance(result.error, error_kind), (result.name, result.error)
        assert result.attempts == (ATTEMPTS if retryable else 1)
    if fault != "hang":
        assert stats["requests"] == sum(r.attempts for r in run.results)  # nothing sent that was not counted
    if fault == "rate_limit":
        for result in sent:
            assert result.error.retry_after_s == pytest.approx(RETRY_AFTER_S)  # type: ignore[union-attr]
            assert result.latency_s >= RETRY_AFTER_S * (ATTEMPTS - 1)  # Retry-After honoured before each retry
    if fault == "rate_limit_bare":
        assert all(r.error.retry_after_s is None for r in sent)  # type: ignore[union-attr]
    if fault == "hang":
        assert all(TIMEOUT_S <= r.latency_s < TIMEOUT_S + 0.3 for r in sent)


async def test_timeout_bounds_a_query_whose_retries_would_outlast_it() -> None:
    # Each attempt is refused with Retry-After 0.15 s; ten attempts would need 1.35 s, the timeout is 0.4 s.
    config = SimConfig(time_scale=0, faults=Faults(rate_limit=1.0, retry_after_s=0.15))
    async with orchestrated("http", config=config, retry=Retry(attempts=10, jitter=0.0), timeout=0.4) as (orch, _):
        run, raised = await run_way(orch, "gather", [Query("a", "x"), Query("b", "y")])
    assert raised and all(isinstance(r.error, QueryTimeout) and r.attempts == 3 for r in run.results)
    assert all(0.4 <= r.latency_s < 0.55 for r in run.results)
