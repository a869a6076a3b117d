"""Orchestration logic on hybrid.testing's FakeBackend, in virtual time (looptime): exact times.

No sockets and no real waiting: the loop's clock jumps from timer to timer, and since every time
the kit records is the loop's clock, a retry after a 0.2 s backoff lands at exactly t=0.2 whatever
the machine is doing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import pytest

from hybrid import (
    AllQueriesFailed,
    BadRequest,
    Cancelled,
    ConfigError,
    DependencyFailed,
    Orchestrator,
    Price,
    Query,
    QueryError,
    QueryFinished,
    QueryStarted,
    QueryTimeout,
    RateLimited,
    Retry,
    RunFinished,
    ServerError,
    run_sync,
)
from hybrid.chain import Attempt, Next
from hybrid.metrics import RunMetrics
from hybrid.query import Completion
from hybrid.testing import Answer, Fail, FakeBackend, Hang

pytestmark = pytest.mark.looptime

FIXED = Retry(attempts=5, base=0.2, cap=10.0, jitter=0.0)


def queries(n: int, prefix: str = "q") -> list[Query]:
    return [Query(f"{prefix}{i}", f"question {i}") for i in range(n)]


async def test_attempts_follow_the_backoff_schedule_exactly() -> None:
    backend = FakeBackend({"q": [Fail(ServerError("a")), Fail(ServerError("b")), Answer("done", delay=1.0)]})
    async with Orchestrator(backend, retry=FIXED) as orch:
        run = await orch.run([Query("q", "hi")])
    result = run["q"]
    assert backend.times("q") == [0.0, 0.2, 0.6]  # backoff 0.2, then 0.4
    assert result.ok and result.attempts == 3 and result.retries == 2
    assert result.latency_s == pytest.approx(1.6, abs=1e-9)
    assert result.started_s == 0.0 and result.finished_s == pytest.approx(1.6, abs=1e-9)


async def test_retry_after_sets_the_wait_before_the_next_attempt() -> None:
    backend = FakeBackend({"q": [Fail(RateLimited("slow down", retry_after_s=0.75)), Answer()]})
    async with Orchestrator(backend, retry=FIXED) as orch:
        run = await orch.run([Query("q", "hi")])
    assert backend.times("q") == [0.0, 0.75]
    assert run["q"].ok and run["q"].latency_s == pytest.approx(0.75, abs=1e-9)


async def test_one_timeout_covers_every_attempt_and_backoff() -> None:
    backend = FakeBackend(default=Fail(ServerError("down")))
    retry = Retry(attempts=10, base=0.2, cap=0.2, jitter=0.0)
    async with Orchestrator(backend, retry=retry, timeout=0.5) as orch:
        run = await orch.run([Query("q", "hi")], raise_if_all_failed=False)
    result = run["q"]
    assert backend.times("q") == [0.0, 0.2, 0.4]
    assert isinstance(result.error, QueryTimeout) and result.attempts == 3
    assert result.latency_s == pytest.approx(0.5, abs=1e-9)


async def test_a_retry_after_longer_than_the_time_left_fails_at_once_as_rate_limited() -> None:
    backend = FakeBackend(default=Fail(RateLimited("come back tomorrow", retry_after_s=99999.0)))
    async with Orchestrator(backend, retry=FIXED, timeout=60.0) as orch:
        run = await orch.run([Query("q", "hi")], raise_if_all_failed=False)
    result = run["q"]
    assert isinstance(result.error, RateLimited) and result.error.retry_after_s == 99999.0
    assert result.attempts == 1 and result.latency_s == 0.0
    assert "99999" in str(result.error)


async def test_a_hang_ends_at_the_timeout() -> None:
    backend = FakeBackend({"stuck": Hang()})
    async with Orchestrator(backend, timeout=3.0) as orch:
        run = await orch.run([Query("stuck", "x"), Query("fine", "y")])
    assert isinstance(run["stuck"].error, QueryTimeout) and run["stuck"].latency_s == 3.0
    assert run["fine"].ok and run.metrics.wall_s == 3.0


async def test_non_retryable_errors_are_tried_once() -> None:
    backend = FakeBackend(default=Fail(BadRequest("no such model", status=404)))
    async with Orchestrator(backend, retry=FIXED) as orch:
        with pytest.raises(AllQueriesFailed) as info:
            await orch.run(queries(3))
    assert all(r.attempts == 1 and isinstance(r.error, BadRequest) for r in info.value.run.results)
    assert len(backend.calls) == 3


async def test_the_seeds_two_queries_gathered_give_the_ideal_efficiency() -> None:
    backend = FakeBackend({"summary": Answer(delay=8.5), "risks": Answer(delay=7.2)})
    async with Orchestrator(backend) as orch:
        run = await orch.run([Query("summary", "s"), Query("risks", "r")])
    m = run.metrics
    assert m.wall_s == 8.5
    assert m.parallel_efficiency == pytest.approx(15.7 / 8.5)  # 185%
    assert m.ideal_efficiency == pytest.approx(15.7 / 8.5) and m.percent_of_ideal == pytest.approx(1.0)


async def test_concurrency_limit_makes_waves_and_queue_time() -> None:
    backend = FakeBackend(default=Answer(delay=1.0))
    async with Orchestrator(backend, max_concurrency=4) as orch:
        run = await orch.run(queries(8))
        seq = await orch.run(queries(3), mode="sequential")
    assert [r.queue_s for r in run.results] == [0.0] * 4 + [1.0] * 4
    assert [r.started_s for r in run.results] == [0.0] * 4 + [1.0] * 4
    m = run.metrics
    assert m.wall_s == 2.0 and m.parallel_efficiency == 4.0 and m.ideal_efficiency == 4.0
    assert m.percent_of_ideal == 1.0 and m.mean_queue_s == 0.5
    assert seq.metrics.wall_s == 3.0 and seq.metrics.parallel_efficiency == 1.0
    assert [r.started_s for r in seq.results] == [0.0, 1.0, 2.0]


async def test_rate_limits_are_taken_per_attempt_not_per_query() -> None:
    # rpm=2: a burst of two, then one request every 30 s.  The third attempt must wait for the bucket.
    backend = FakeBackend({"q": [Fail(ServerError("x")), Fail(ServerError("y")), Answer()]})
    retry = Retry(attempts=3, base=0.001, jitter=0.0)
    async with Orchestrator(backend, retry=retry, rpm=2) as orch:
        run = await orch.run([Query("q", "hi")])
    first, second, third = backend.times("q")
    assert (first, second) == (0.0, 0.001)
    assert third == pytest.approx(30.0, abs=1e-3)
    assert run["q"].ok and run["q"].attempts == 3


async def test_the_rate_limiter_wait_before_the_first_request_is_queue_time() -> None:
    backend = FakeBackend(default=Answer(delay=1.0))
    async with Orchestrator(backend, rpm=1, max_concurrency=2) as orch:
        run = await orch.run(queries(2))
    assert [r.queue_s for r in run.results] == [0.0, pytest.approx(60.0, abs=1e-3)]
    assert [r.latency_s for r in run.results] == [1.0, pytest.approx(1.0, abs=1e-6)]


async def test_cancellation_keeps_finished_results_and_leaves_no_task() -> None:
    backend = FakeBackend({"slow0": Hang(), "slow1": Hang()}, default=Answer(delay=1.0))
    before = asyncio.all_tasks()
    async with Orchestrator(backend, max_concurrency=8) as orch:
        task = asyncio.create_task(orch.run([*queries(3, "fast"), Query("slow0", "a"), Query("slow1", "b")]))
        await asyncio.sleep(1.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert asyncio.all_tasks() <= before | {asyncio.current_task()}
        partial = orch.last_run
        assert partial is not None and partial.cancelled
        assert [r.ok for r in partial.results] == [True, True, True, False, False]
        assert all(isinstance(r.error, Cancelled) for r in partial.results[3:])
        assert partial.metrics.wall_s == 1.5
        assert (await orch.run(queries(2))).ok  # still usable


async def test_a_non_cancellation_stop_is_not_reported_as_cancelled() -> None:
    class Stop(BaseException):
        """Not an Exception, not a cancellation: escapes the per-query guard."""

    class Explode:
        async def __call__(self, query: Query, attempt: Attempt, call_next: Next) -> Completion:
            if query.name == "bad":
                raise Stop
            return await call_next(query, attempt)

    async with Orchestrator(FakeBackend(default=Answer(delay=1.0)), max_concurrency=1) as orch:
        orch.links.append(Explode())
        with pytest.raises(BaseExceptionGroup):
            await orch.run([Query("good", "x"), Query("bad", "y")])
    assert orch.last_run is not None and not orch.last_run.cancelled
    assert orch.last_run["good"].ok
    assert any("stopped on BaseExceptionGroup" in w for w in orch.last_run.warnings)


async def test_an_unexpected_backend_exception_keeps_its_cause_and_is_logged(caplog: Any) -> None:
    class Buggy(FakeBackend):
        async def complete(self, query: Query) -> Completion:
            raise KeyError("a bug")

    with caplog.at_level(logging.ERROR, logger="hybrid"):
        async with Orchestrator(Buggy(), retry=FIXED) as orch:
            run = await orch.run([Query("q", "x")], raise_if_all_failed=False)
    error = run["q"].error
    assert type(error) is QueryError and error.kind == "error" and run["q"].attempts == 1
    assert isinstance(error.__cause__, KeyError) and error.__cause__.__traceback__ is not None
    assert any(record.exc_info and "KeyError" in record.getMessage() for record in caplog.records)


async def test_failed_rows_keep_no_exception_chain_or_frames() -> None:
    try:
        raise OSError("socket said no")
    except OSError:
        error = ServerError("HTTP 500: down", status=500)  # raised while handling: gets a __context__
        try:
            raise error
        except ServerError:
            pass
    assert error.__context__ is not None
    backend = FakeBackend(default=Fail(error))
    async with Orchestrator(backend, retry=Retry.never()) as orch:
        run = await orch.run([Query("q", "x")], raise_if_all_failed=False)
    kept = run["q"].error
    assert kept is not None and kept.__context__ is None and kept.__cause__ is None and kept.__traceback__ is None
    assert kept.kind == "server_error" and kept.status == 500


async def test_pipeline_stages_run_in_order_and_fill_prompts_and_system() -> None:
    backend = FakeBackend(
        {"facts": Answer("F", delay=2.0), "risks": Answer("R", delay=1.0), "costs": Answer("C", delay=3.0)},
        default=Answer("merged", delay=1.0),
    )
    stages = [
        [Query("facts", "List facts about {concrete}.")],
        [
            Query("risks", "Given {{facts}}, list risks.", system="You know {{facts}}."),
            Query("costs", "Cost {{facts}}"),
        ],
        [Query("report", "Merge {{risks}} and {{costs}}.")],
    ]
    async with Orchestrator(backend) as orch:
        run = await orch.pipeline(stages)
    assert run["risks"].query.prompt == "Given F, list risks." and run["risks"].query.system == "You know F."
    assert run["report"].query.prompt == "Merge R and C."
    assert [(r.started_s, r.finished_s) for r in run.results] == [(0.0, 2.0), (2.0, 3.0), (2.0, 5.0), (5.0, 6.0)]
    assert [r.stage for r in run.results] == [0, 1, 1, 2]
    assert [r.queue_s for r in run.results] == [0.0, 0.0, 0.0, 0.0]


async def test_pipeline_does_not_send_a_query_whose_input_failed_or_is_blank() -> None:
    backend = FakeBackend({"a": Fail(ServerError("x")), "blank": Answer("   ")})
    stages = [[Query("a", "x"), Query("blank", "y")], [Query("b", "use {{a}}"), Query("c", "{{blank}}")]]
    async with Orchestrator(backend, retry=Retry.never()) as orch:
        with pytest.raises(AllQueriesFailed) as info:
            await orch.pipeline([stages[0][:1], stages[1][:1]])
        run = await orch.pipeline(stages)
    assert isinstance(info.value.run["b"].error, DependencyFailed) and info.value.run["b"].attempts == 0
    assert isinstance(run["c"].error, DependencyFailed) and "blank" in str(run["c"].error)
    assert orch.last_run is run and not run.cancelled
    assert [c.name for c in backend.calls] == ["a", "a", "blank"]  # b and c never sent


async def test_stream_yields_events_in_order_with_exact_times() -> None:
    backend = FakeBackend({"q0": Answer(delay=2.0), "q1": Answer(delay=1.0)})
    async with Orchestrator(backend) as orch, orch.stream(queries(2)) as events:
        seen = [event async for event in events]
    assert [type(e).__name__ for e in seen] == [
        "QueryStarted",
        "QueryStarted",
        "QueryFinished",
        "QueryFinished",
        "RunFinished",
    ]
    assert [e.at_s for e in seen if isinstance(e, QueryStarted)] == [0.0, 0.0]
    assert [e.result.name for e in seen if isinstance(e, QueryFinished)] == ["q1", "q0"]
    assert isinstance(seen[-1], RunFinished) and seen[-1].run.metrics.wall_s == 2.0


async def test_leaving_a_stream_early_cancels_what_is_in_flight_at_once() -> None:
    backend = FakeBackend({"q0": Answer(delay=1.0)}, default=Hang())
    before = asyncio.all_tasks()
    async with Orchestrator(backend) as orch:
        async with orch.stream(queries(3)) as events:
            async for event in events:
                if isinstance(event, QueryFinished):
                    break
        assert asyncio.all_tasks() <= before | {asyncio.current_task()}  # nothing left running, no GC needed
        assert orch.last_run is not None and orch.last_run.cancelled
        assert asyncio.get_running_loop().time() == 1.0


async def test_stream_raises_after_run_finished_when_all_failed() -> None:
    seen: list[object] = []
    async with Orchestrator(FakeBackend(default=Fail(ServerError("x"))), retry=Retry.never()) as orch:
        with pytest.raises(AllQueriesFailed):
            async for event in orch.stream(queries(2)):
                seen.append(event)
    assert isinstance(seen[-1], RunFinished)


async def test_prices_give_costs_and_a_total() -> None:
    backend = FakeBackend(default=Answer("four words of answer", prompt_tokens=1000, completion_tokens=500))
    prices = {"fake": Price(prompt_per_mtok=1.0, completion_per_mtok=2.0)}
    async with Orchestrator(backend, prices=prices) as orch:
        run = await orch.run(queries(2))
    assert [r.cost_usd for r in run.results] == [0.002, 0.002] and run.metrics.cost_usd == 0.004


async def test_a_run_whose_metrics_fail_keeps_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> RunMetrics:
        raise TypeError("unsupported operand")

    monkeypatch.setattr(RunMetrics, "compute", classmethod(lambda cls, *a, **k: broken()))
    async with Orchestrator(FakeBackend()) as orch:
        run = await orch.run(queries(3))
    assert [r.text for r in run.results] == ["ok"] * 3 and orch.last_run is run
    assert run.metrics.succeeded == 3 and any("could not be computed" in w for w in run.warnings)


async def test_nested_async_with_keeps_the_backend_open_until_the_outer_exit() -> None:
    backend = FakeBackend()
    orch = Orchestrator(backend)
    async with orch:
        async with orch:
            await orch.run(queries(1))
        assert backend.is_open
        assert (await orch.run(queries(1))).ok
    assert not backend.is_open and backend.open_count == 1


async def test_an_orchestrator_used_from_another_loop_says_what_to_do() -> None:
    backend = FakeBackend()
    async with Orchestrator(backend) as orch:
        with pytest.raises(ConfigError, match="another event loop"):
            run_sync(orch.run(queries(1)))
    assert backend.calls == []


async def test_threads_mode_is_refused_before_sending_without_a_sync_client() -> None:
    backend = FakeBackend()
    async with Orchestrator(backend) as orch:
        with pytest.raises(ConfigError, match="synchronous client"):
            await orch.run(queries(1), mode="threads")
    assert backend.calls == []


async def test_a_streamed_query_reports_its_tokens_so_far_at_most_every_quarter_second() -> None:
    from hybrid import QueryProgress, sim
    from hybrid.run_state import PROGRESS_EVERY_S

    backend = sim.backend(sim.SimConfig(seed=5, time_scale=4.0))  # a few seconds per answer, exactly
    query = Query("s", "Tell me a long story.", max_tokens=64, stream=True)
    seen: list[Any] = []
    async with Orchestrator(backend) as orch, orch.stream([query]) as events:
        async for event in events:
            seen.append(event)
    progress = [e for e in seen if isinstance(e, QueryProgress)]
    result = seen[-1].run.results[0]
    assert len(progress) >= 3 and all(e.index == 0 and e.name == "s" for e in progress)
    tokens = [e.tokens for e in progress]
    assert tokens == sorted(tokens) and 0 < tokens[-1] <= result.usage.completion_tokens
    gaps = [b.at_s - a.at_s for a, b in itertools.pairwise(progress)]
    assert min(gaps) >= PROGRESS_EVERY_S
