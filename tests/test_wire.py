"""The kit against the simulator over loopback, for both backends: what is about the wire.

Kinds, order and ratios only, never a real-time window; orchestration logic (schedules, timeouts,
metrics arithmetic) is tested in virtual time in test_orchestration.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from hybrid import (
    AllQueriesFailed,
    AuthenticationFailed,
    BadRequest,
    Cancelled,
    ConfigError,
    ConnectionFailed,
    DependencyFailed,
    HTTPBackend,
    InvalidResponse,
    OpenAIBackend,
    Orchestrator,
    Query,
    QueryFinished,
    QueryStarted,
    QueryTimeout,
    RateLimited,
    Retry,
    RunFinished,
    ServerError,
    sim,
)
from hybrid.query import Completion
from hybrid.sim import Faults, ModelProfile, SimConfig

from .conftest import client_tasks, orchestrated, settled

QUERIES = [Query(f"q{i}", f"Question number {i}: what is {i} squared?") for i in range(12)]

# One simulated second per query, unjittered, decoding instantly: latency is exactly the TTFT.
STEADY = {"sim-small": ModelProfile(ttft_s=1.0, prompt_tps=1e9, completion_tps=1e9, jitter=0.0)}


async def test_results_come_back_in_input_order_one_per_query(backend_kind: str) -> None:
    async with orchestrated(backend_kind) as (orch, _):
        run = await orch.run(QUERIES)
    assert [r.name for r in run.results] == [q.name for q in QUERIES]
    assert [r.index for r in run.results] == list(range(len(QUERIES)))
    assert all(r.ok and r.text for r in run.results)
    assert run.metrics.succeeded == 12 and run.metrics.failed == 0
    frame = run.to_frame()
    assert list(frame["name"]) == [q.name for q in QUERIES] and len(frame) == 12


async def test_answers_match_between_backends_and_modes() -> None:
    texts = []
    for kind in ("openai", "http"):
        async with orchestrated(kind) as (orch, _):
            texts.append((await orch.run(QUERIES)).texts())
            texts.append((await orch.run(QUERIES, mode="sequential")).texts())
    assert all(t == texts[0] for t in texts)


async def test_partial_failure_keeps_every_row_and_warns(any_backend_kind: str) -> None:
    config = SimConfig(seed=7, time_scale=0, faults=Faults(server_error=0.5))
    async with orchestrated(any_backend_kind, config=config, retry=Retry.never()) as (orch, server):
        run = await orch.run(QUERIES)
    failed = [r for r in run.results if not r.ok]
    assert 0 < len(failed) < len(QUERIES)
    assert len(failed) == server.stats()["faults"]["server_error"]
    assert all(isinstance(r.error, ServerError) and r.text is None for r in failed)
    assert run.warnings[0].startswith(f"{len(failed)} of 12 queries failed")
    assert all(any(r.name in w for w in run.warnings) for r in failed)


async def test_total_failure_raises_with_the_run(any_backend_kind: str) -> None:
    config = SimConfig(time_scale=0, faults=Faults(unavailable=1.0))
    async with orchestrated(any_backend_kind, config=config, retry=Retry.never()) as (orch, _):
        with pytest.raises(AllQueriesFailed) as info:
            await orch.run(QUERIES[:3])
    assert len(info.value.run.results) == 3
    assert all(isinstance(r.error, ServerError) for r in info.value.run.results)
    assert "server_error" in str(info.value)


async def test_retries_recover_and_are_counted(any_backend_kind: str) -> None:
    config = SimConfig(time_scale=0, faults=Faults(fail_first=2))
    async with orchestrated(any_backend_kind, config=config, retry=Retry(attempts=3, base=0.001)) as (orch, server):
        run = await orch.run(QUERIES[:4])
    assert run.ok and all(r.attempts == 3 for r in run.results)
    assert run.metrics.retries == 8 and run.metrics.attempts == 12
    assert server.stats()["by_status"] == {"200": 4, "500": 8}


async def test_non_retryable_errors_are_not_retried(backend_kind: str) -> None:
    async with sim.serve(SimConfig(time_scale=0, api_key="sk-real")) as server:
        backend = (OpenAIBackend if backend_kind == "openai" else HTTPBackend)(
            base_url=server.url, api_key="sk-wrong", model="sim-small"
        )
        async with Orchestrator(backend, retry=Retry(attempts=5, base=0.001)) as orch:
            with pytest.raises(AllQueriesFailed) as info:
                await orch.run(QUERIES[:2])
            bad_model = await orch.run([Query("m", "hi", model="no-such-model")], raise_if_all_failed=False)
    assert all(isinstance(r.error, AuthenticationFailed) and r.attempts == 1 for r in info.value.run.results)
    assert isinstance(bad_model.results[0].error, AuthenticationFailed)
    assert server.stats()["by_status"] == {"401": 3}


@pytest.mark.parametrize(
    ("faults", "stream", "error"),
    [
        (Faults(rate_limit=1.0, retry_after_s=0.0), False, RateLimited),
        (Faults(server_error=1.0), False, ServerError),
        (Faults(drop=1.0), False, ConnectionFailed),
        (Faults(malformed=1.0), False, InvalidResponse),
        (Faults(malformed=1.0), True, InvalidResponse),
        (Faults(truncate=1.0), True, InvalidResponse),
        (Faults(truncate=1.0), False, InvalidResponse),
    ],
)
async def test_each_fault_becomes_its_error_kind(
    any_backend_kind: str, faults: Faults, stream: bool, error: type[Exception]
) -> None:
    config = SimConfig(time_scale=0, faults=faults)
    async with orchestrated(any_backend_kind, config=config, retry=Retry(attempts=2, base=0.001)) as (orch, server):
        run = await orch.run([Query("a", "hello", stream=stream)], raise_if_all_failed=False)
        stats = server.stats()
    result = run.results[0]
    assert isinstance(result.error, error), result.error
    assert result.attempts == 2  # each of these is retryable
    assert stats["requests"] == 2


async def test_bad_request_is_not_retried(any_backend_kind: str) -> None:
    async with orchestrated(any_backend_kind, retry=Retry(attempts=4, base=0.001)) as (orch, server):
        run = await orch.run([Query("a", "hello", model="gpt-404")], raise_if_all_failed=False)
    assert isinstance(run.results[0].error, BadRequest) and run.results[0].error.status == 404
    assert run.results[0].attempts == 1 and server.stats()["requests"] == 1


async def test_missing_usage_is_estimated_and_flagged(any_backend_kind: str) -> None:
    config = SimConfig(time_scale=0, faults=Faults(no_usage=1.0))
    async with orchestrated(any_backend_kind, config=config) as (orch, _):
        run = await orch.run([Query("a", "hello"), Query("b", "hello", stream=True)])
    for result in run.results:
        assert result.usage.estimated and result.usage.completion_tokens > 0
    assert run.metrics.tokens_estimated


async def test_hung_request_times_out_and_leaves_nothing_in_flight(any_backend_kind: str) -> None:
    config = SimConfig(time_scale=0, faults=Faults(hang=1.0))
    async with orchestrated(any_backend_kind, config=config, timeout=1.0) as (orch, server):
        run = await orch.run(QUERIES[:5], raise_if_all_failed=False)
        stats = await settled(server, within_s=2.0)
    assert all(isinstance(r.error, QueryTimeout) for r in run.results)
    # Every request that reached the server was given up as a disconnect (on a loaded machine one
    # may time out before it even arrives; the timeout starts when it is sent).
    assert stats["in_flight"] == 0 and stats["disconnects"] == stats["requests"] >= 1


async def test_cancellation_closes_in_flight_requests_and_keeps_finished_results(any_backend_kind: str) -> None:
    profiles = {
        "sim-small": ModelProfile(ttft_s=0.05, prompt_tps=1e9, completion_tps=1e9, jitter=0.0),
        "sim-large": ModelProfile(ttft_s=30.0, prompt_tps=1e9, completion_tps=1e9, jitter=0.0),
    }
    config = SimConfig(time_scale=1.0, profiles=profiles)
    queries = [Query(f"fast{i}", f"f{i}") for i in range(3)] + [
        Query(f"slow{i}", f"s{i}", model="sim-large") for i in range(3)
    ]
    async with orchestrated(any_backend_kind, config=config) as (orch, server):
        before = asyncio.all_tasks()
        task = asyncio.create_task(orch.run(queries))
        while server.stats()["by_status"].get("200", 0) < 3 or server.stats()["in_flight"] < 3:
            await asyncio.sleep(0.01)  # the fast three answered; the slow three are in flight
        await asyncio.sleep(0.05)  # let the client read the three answers
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stats = await settled(server, within_s=2.0)
        assert client_tasks() <= before | {asyncio.current_task()}
        partial = orch.last_run
        assert partial is not None and partial.cancelled
        again = await orch.run(queries[:3])  # the orchestrator stays usable
    assert stats["in_flight"] == 0 and stats["disconnects"] == 3
    assert [r.ok for r in partial.results] == [True] * 3 + [False] * 3
    assert all(isinstance(r.error, Cancelled) for r in partial.results[3:])
    assert again.ok


async def test_first_requests_reach_the_server_while_later_workers_start() -> None:
    """Workers start one loop turn apart: the server is answering the first requests before the
    last worker has begun (started in one turn, no request would leave before the last was built)."""
    async with sim.serve(SimConfig(seed=1, time_scale=0.0)) as server:
        seen_by_server: list[int] = []

        class Watched(HTTPBackend):
            async def complete(self, query: Query) -> Completion:
                seen_by_server.append(server.stats()["requests"])
                return await super().complete(query)

        backend = Watched(base_url=server.url, api_key=server.api_key, model="sim-small")
        async with Orchestrator(backend, max_concurrency=32) as orch:
            run = await orch.run(QUERIES * 3)
    assert run.metrics.succeeded == 36
    # The 32nd query is sent when the server has already had some of the first 31.
    assert seen_by_server[31] - seen_by_server[0] > 0


async def test_streaming_reports_ttft_and_usage(any_backend_kind: str) -> None:
    config = SimConfig(time_scale=0.1, seed=3)
    async with orchestrated(any_backend_kind, config=config) as (orch, _):
        run = await orch.run([Query("s", "stream me", stream=True), Query("p", "stream me")])
    streamed, plain = run.results
    assert streamed.text == plain.text and streamed.usage == plain.usage and not streamed.usage.estimated
    assert streamed.ttft_s is not None and 0 < streamed.ttft_s < streamed.latency_s
    assert plain.ttft_s is None


async def test_threads_mode_uses_the_sync_client_and_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[openai.OpenAI] = []

    class CountedOpenAI(openai.OpenAI):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            made.append(self)

    monkeypatch.setattr(openai, "OpenAI", CountedOpenAI)
    async with orchestrated("openai", config=SimConfig(time_scale=0.05, seed=1)) as (orch, server):
        threaded = await orch.run(QUERIES[:6], mode="threads")
        again = await orch.run(QUERIES[:6], mode="threads")
        gathered = await orch.run(QUERIES[:6])
    assert threaded.texts() == again.texts() == gathered.texts()
    assert threaded.metrics.parallel_efficiency > 2.0
    assert len(made) == 1  # six threads starting at once share one sync client
    assert server.stats()["open_connections"] == 0


async def test_stream_yields_started_finished_then_the_run() -> None:
    async with orchestrated("http") as (orch, _):
        events = [event async for event in orch.stream(QUERIES[:4])]
    started = [e for e in events if isinstance(e, QueryStarted)]
    finished = [e for e in events if isinstance(e, QueryFinished)]
    assert len(started) == 4 and len(finished) == 4
    assert isinstance(events[-1], RunFinished) and len(events[-1].run.results) == 4
    for event in finished:
        first_start = next(
            i for i, e in enumerate(events) if isinstance(e, QueryStarted) and e.index == event.result.index
        )
        assert first_start < events.index(event)


async def test_pipeline_runs_stages_in_order_and_fills_templates(backend_kind: str) -> None:
    stages = [
        [Query("facts", "List facts about {concrete}.")],
        [Query("risks", "Given {{facts}}, list risks."), Query("costs", "Given {{ facts }}, estimate costs.")],
        [Query("report", "Merge {{risks}} and {{costs}}.")],
    ]
    async with orchestrated(backend_kind) as (orch, _):
        run = await orch.pipeline(stages)
    facts = run["facts"].text
    assert facts and run["risks"].query.prompt == f"Given {facts}, list risks."
    assert run["costs"].query.prompt == f"Given {facts}, estimate costs."
    assert "{concrete}" in run["facts"].query.prompt  # single braces are left alone
    assert [r.stage for r in run.results] == [0, 1, 1, 2]
    assert run["facts"].finished_s <= min(run["risks"].started_s, run["costs"].started_s)
    assert max(run["risks"].finished_s, run["costs"].finished_s) <= run["report"].started_s


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([[Query("a", "x {{b}}")], [Query("b", "y")]], "not a query of an earlier stage"),
        ([[Query("a", "x")], [Query("b", "{{a.__class__}}")]], "plain query name"),
        ([[Query("a", "x")], [Query("b", "{{a[0]}}")]], "plain query name"),
        ([[Query("a", "x")], [Query("a", "y")]], "appears twice"),
        ([], "at least one stage"),
    ],
)
async def test_pipeline_bad_input_fails_before_anything_is_sent(stages: Any, message: str) -> None:
    async with orchestrated("http") as (orch, server):
        with pytest.raises(ConfigError, match=message):
            await orch.pipeline(stages)
    assert server.stats()["requests"] == 0


async def test_pipeline_skips_queries_whose_input_failed() -> None:
    config = SimConfig(time_scale=0, faults=Faults(fail_first=1, fail_first_status=500))
    async with orchestrated("http", config=config, retry=Retry.never()) as (orch, server):
        with pytest.raises(AllQueriesFailed) as info:
            await orch.pipeline([[Query("a", "x")], [Query("b", "use {{a}}")]])
    run = info.value.run
    assert isinstance(run["a"].error, ServerError) and isinstance(run["b"].error, DependencyFailed)
    assert run["b"].attempts == 0 and server.stats()["requests"] == 1


async def test_bad_orchestrator_settings_and_modes_fail_before_sending() -> None:
    async with sim.serve(SimConfig(time_scale=0)) as server:
        backend = HTTPBackend(base_url=server.url, api_key=server.api_key, model="sim-small")
        for kwargs in ({"max_concurrency": 0}, {"timeout": 0}, {"timeout": -1}, {"rpm": 0}):
            with pytest.raises(ConfigError):
                Orchestrator(backend, **kwargs)
        async with Orchestrator(backend) as orch:
            with pytest.raises(ConfigError, match="Unknown mode"):
                await orch.run(QUERIES[:1], mode="parallel")  # type: ignore[arg-type]
            with pytest.raises(ConfigError, match="No queries"):
                await orch.run([])
            with pytest.raises(ConfigError, match="not a Query"):
                await orch.run(["what is 2+2?"])  # type: ignore[list-item]
        with pytest.raises(ConfigError, match="not open"):
            await Orchestrator(backend).run(QUERIES[:1])
        assert server.stats()["requests"] == 0


async def test_unreachable_base_url_and_missing_key_fail_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = OpenAIBackend(base_url="http://127.0.0.1:9/v1", api_key="sk-test", model="m")
    with pytest.raises(ConfigError, match="Cannot reach"):
        async with Orchestrator(backend):
            pass
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    keyless = OpenAIBackend(base_url="https://api.example.com/v1", model="m", check_reachable=False)
    with pytest.raises(ConfigError, match=r"No API key: pass api_key=\.\.\. or set OPENAI_API_KEY"):
        async with Orchestrator(keyless):  # refused as it opens, before anything is sent (a replay never opens)
            pass
    with pytest.raises(ConfigError, match="http"):
        HTTPBackend(base_url="api.example.com", api_key="k", model="m")


async def test_backend_reads_the_sdk_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    async with sim.serve(SimConfig(time_scale=0, seed=2)) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", server.api_key)
        monkeypatch.setenv("OPENAI_MODEL", "sim-large")
        async with Orchestrator(OpenAIBackend()) as orch:
            run = await orch.run(QUERIES[:1])
    assert run.results[0].model == "sim-large"


async def test_json_export_and_html_repr() -> None:
    import json

    async with orchestrated("http") as (orch, _):
        run = await orch.run(QUERIES[:3])
    data = json.loads(run.to_json())
    assert [r["name"] for r in data["results"]] == ["q0", "q1", "q2"]
    assert data["metrics"]["succeeded"] == 3
    html = run._repr_html_()
    assert "<table" in html and "q2" in html and "3/3 ok" in html
