"""Kept equals measured: a run loaded from the store is the run that was measured, field by field.

The property test generates runs (answers, failures of every kind, retries, streamed answers,
cached prompt tokens, server reports, prices, concurrency, interrupts) on ``FakeBackend`` in
virtual time, writes them through the store's real write path, and checks that ``Store.load``
gives back every row and every metric exactly (NaN equal to NaN).  Then one real round trip per
way of running (gather, sequential, threads, pipeline, batch, stream) and for interrupted and
budget-stopped runs, the summary line that the notebook, ``hybrid runs show`` and the viewer
print, and resume: segments kept as they ran, merged for the whole, a finished run left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hybrid
from hybrid import (
    AuthenticationFailed,
    BadRequest,
    InvalidResponse,
    OpenAIBackend,
    Orchestrator,
    Price,
    Query,
    RateLimited,
    Retry,
    RunResult,
    ServerError,
    Store,
    sim,
)
from hybrid.cli import main as cli_main
from hybrid.query import ServerReport
from hybrid.testing import Answer, Fail, FakeBackend, Hang
from hybrid.view import make_app

from .conftest import assert_same_run

PRICES = {"fake": Price(prompt_per_mtok=3.0, completion_per_mtok=15.0, cached_prompt_per_mtok=0.3)}


# -- the property ------------------------------------------------------------------------------
errors = st.sampled_from(
    [
        ServerError("down", status=503),
        ServerError("boom", status=500),
        RateLimited("slow down", status=429, retry_after_s=0.5),
        RateLimited("slow down", status=429),
        InvalidResponse("truncated stream"),
        BadRequest("unknown model", status=404),
        AuthenticationFailed("wrong key", status=401),
    ]
)
delays = st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.5, 4.0])
answers = st.builds(
    lambda delay, text, prompt, completion, cached, ttft, server: Answer(
        text,
        delay=delay,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_prompt_tokens=min(cached, prompt),
        ttft=ttft,
        server=server,
    ),
    delays,
    st.text(min_size=0, max_size=30),
    st.integers(0, 500),
    st.integers(0, 300),
    st.integers(0, 200),
    st.none() | st.sampled_from([0.05, 0.2]),
    st.none() | st.builds(lambda q, s: ServerReport(queue_s=q, service_s=s), st.sampled_from([0.0, 0.1]), delays),
)
steps = st.lists(
    answers | st.builds(lambda e, d: Fail(e, delay=d), errors, delays) | st.just(Hang()), min_size=1, max_size=3
)
runs = st.fixed_dictionaries(
    {
        "script": st.lists(steps, min_size=1, max_size=12),
        "stream": st.lists(st.booleans(), min_size=12, max_size=12),
        "concurrency": st.integers(1, 6),
        "mode": st.sampled_from(["gather", "sequential"]),
        "attempts": st.integers(1, 3),
        "priced": st.booleans(),
        "interrupt_at": st.none() | st.sampled_from([0.3, 1.0, 3.0]),
    }
)


async def _run_and_load(spec: dict[str, Any], path: Path) -> tuple[RunResult, RunResult]:
    queries = [Query(f"q{i}", f"question {i}", stream=spec["stream"][i]) for i in range(len(spec["script"]))]
    backend = FakeBackend({q.name: s for q, s in zip(queries, spec["script"], strict=True)})
    retry = Retry(attempts=spec["attempts"], base=0.1, cap=0.4, jitter=0.0)
    with Store(path) as store:
        async with Orchestrator(
            backend,
            store=store,
            max_concurrency=spec["concurrency"],
            timeout=6.0,
            retry=retry,
            prices=PRICES if spec["priced"] else None,
            seed=1,
        ) as orch:
            task = asyncio.ensure_future(orch.run(queries, name="r", mode=spec["mode"], raise_if_all_failed=False))
            if spec["interrupt_at"] is not None:
                await asyncio.sleep(spec["interrupt_at"])
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            live = orch.last_run
        assert live is not None
        return live, store.load("r")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=runs)
async def test_a_loaded_run_equals_the_live_one_field_by_field(spec: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        live, loaded = await hybrid.simulate(_run_and_load, spec, Path(folder) / "runs.sqlite")
    assert_same_run(loaded, live)


# -- the run, and where its summary line is printed --------------------------------------
@pytest.mark.looptime
async def test_forty_queries_at_four_load_with_their_metrics_and_print_the_same_line_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "runs.sqlite"
    backend = FakeBackend(lambda query, attempt: Answer("fine", delay=1.0 + int(query.name[1:]) % 5 * 0.25))
    with Store(path) as store:
        async with Orchestrator(backend, store=store, max_concurrency=4) as orch:
            live = await orch.run([Query(f"q{i}", f"question {i}") for i in range(40)], name="forty")
        loaded = store.load("forty")
        assert_same_run(loaded, live)
        assert loaded.metrics.concurrency == 4 and 0.9 < loaded.metrics.percent_of_ideal <= 1.0
        async with TestClient(TestServer(make_app(store))) as client:
            page = await (await client.get("/runs/forty")).text()
    assert live.summary() in page.replace("&#x27;", "'")
    assert cli_main(["runs", "--store", str(path), "show", "forty"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == live.summary()


# -- one real round trip per way of running ---------------------------------------------------------
@pytest.mark.looptime
async def test_pipeline_stream_and_budget_stopped_runs_round_trip(tmp_path: Path) -> None:
    backend = FakeBackend({"b": Fail(ServerError("down", status=503))}, default=Answer("x", delay=1.0))
    prices = {"fake": Price(prompt_per_mtok=1e5, completion_per_mtok=1e5)}
    with Store(tmp_path / "runs.sqlite") as store:
        async with Orchestrator(backend, store=store, retry=Retry.never(), max_concurrency=3) as orch:
            staged = await orch.pipeline([[Query("a", "first")], [Query("b", "uses {{a}}"), Query("c", "{{a}}!")]])
            async with orch.stream([Query(f"s{i}", "streamed") for i in range(5)]) as events:
                streamed = [e async for e in events][-1].run
        async with Orchestrator(backend, store=store, prices=prices, budget_usd=5.0, max_concurrency=2) as orch:
            capped = await orch.run([Query(f"p{i}", "pay", max_tokens=8) for i in range(12)], name="capped")
        names = store.runs()["name"].tolist()
        assert_same_run(store.load(names[0]), staged)
        assert_same_run(store.load(names[1]), streamed)
        assert any(r.error is not None and r.error.kind == "budget" for r in capped.results)
        assert_same_run(store.load("capped"), capped)


async def test_threads_and_batch_round_trip_over_the_simulator(tmp_path: Path) -> None:
    queries = [Query(f"q{i}", f"Question {i}?", max_tokens=12) for i in range(12)]
    with Store(tmp_path / "runs.sqlite") as store:
        async with sim.serve(sim.SimConfig(seed=4, time_scale=0.0)) as server:
            backend = OpenAIBackend(base_url=server.url, api_key=server.api_key, model="sim-small")
            async with Orchestrator(backend, store=store, max_concurrency=4) as orch:
                threaded = await orch.run(queries, name="threads", mode="threads")
        async with Orchestrator(sim.backend(sim.SimConfig(seed=4, time_scale=0.0)), store=store) as orch:
            batched = await orch.run(queries, name="batch", mode="batch")
        assert_same_run(store.load("threads"), threaded)
        assert_same_run(store.load("batch"), batched)
        assert store.load("batch").metrics.batched == 12


# -- resume: segments ------------------------------------------------------------------------------
@pytest.mark.looptime
async def test_resume_keeps_each_segment_as_it_ran_and_merges_them(tmp_path: Path) -> None:
    flaky = {"q1": [Fail(ServerError("down", status=503), delay=0.5), Answer("later", delay=2.0)]}
    backend = FakeBackend(flaky, default=Answer("fine", delay=1.0, prompt_tokens=10, completion_tokens=10))
    prices = {"fake": Price(prompt_per_mtok=1e5, completion_per_mtok=1e5)}  # $2 per answered query
    queries = [Query(f"q{i}", f"question {i}") for i in range(4)]
    with Store(tmp_path / "runs.sqlite") as store:
        async with Orchestrator(backend, store=store, retry=Retry.never(), prices=prices, max_concurrency=2) as orch:
            first = await orch.run(queries, name="grid")
        async with Orchestrator(backend, store=store, retry=Retry.never(), prices=prices, max_concurrency=2) as orch:
            second = await orch.run(queries, name="grid", resume=True)
        assert [r.origin for r in second.results] == ["resumed", "sent", "resumed", "resumed"]
        assert_same_run(store.load("grid", segment=0), first)
        assert_same_run(store.load("grid", segment=1), second)
        assert_same_run(store.load("grid", segment=-1), second)
        merged = store.load("grid")
        assert merged.segments == 2 and merged.ok and "2 segments" in merged.summary()
        assert [r.origin for r in merged.results] == ["sent"] * 4  # each query as it was answered
        assert merged.results[0].latency_s == 1.0 and merged.results[1].latency_s == 2.0
        # The segments are laid end to end: q1's answer came in the second, after the first's wall.
        assert merged.results[1].started_s == first.metrics.wall_s + second.results[1].started_s
        assert merged.metrics.wall_s == first.metrics.wall_s + second.metrics.wall_s
        assert merged.metrics.cost_usd == pytest.approx(first.metrics.cost_usd + second.metrics.cost_usd)
        assert merged.metrics.concurrency == 2
        assert store.runs()[["name", "segments", "ok", "failed"]].values.tolist() == [["grid", 2, 4, 0]]
        shown = store.brief_rows("grid", range(4))  # the viewer's table: latencies as merged, not 0
        assert [shown[i]["latency_s"] for i in range(4)] == [r.latency_s for r in merged.results]
        with pytest.raises(hybrid.ConfigError, match="segment=0"):
            store.load("grid", segment=2)


@pytest.mark.looptime
async def test_segments_at_different_concurrency_have_no_single_ideal(tmp_path: Path) -> None:
    backend = FakeBackend({"q0": [Fail(ServerError("down")), Answer()]}, default=Answer(delay=1.0))
    queries = [Query(f"q{i}", f"question {i}") for i in range(3)]
    with Store(tmp_path / "runs.sqlite") as store:
        async with Orchestrator(backend, store=store, retry=Retry.never(), max_concurrency=2) as orch:
            await orch.run(queries, name="grid")
        async with Orchestrator(backend, store=store, retry=Retry.never(), max_concurrency=5) as orch:
            await orch.run(queries, name="grid", resume=True)
        merged = store.load("grid")
    assert merged.metrics.concurrency is None and math.isnan(merged.metrics.percent_of_ideal)
    assert any("different concurrency limits (2, 5)" in w for w in merged.warnings)
    assert "ideal unknown" in merged.summary()


@pytest.mark.looptime
async def test_resuming_a_finished_run_sends_nothing_and_changes_nothing_stored(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    backend = FakeBackend(default=Answer(delay=1.0))
    queries = [Query(f"q{i}", f"question {i}") for i in range(5)]

    def snapshot() -> list[Any]:
        with sqlite3.connect(path) as db:
            return [db.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in ("runs", "segments", "results")]

    with Store(path) as store:
        async with Orchestrator(backend, store=store, max_concurrency=2) as orch:
            first = await orch.run(queries, name="done")
        before = snapshot()
        async with Orchestrator(backend, store=store, max_concurrency=2) as orch:
            again = await orch.run(queries, name="done", resume=True)
        assert len(backend.calls) == 5 and [r.origin for r in again.results] == ["resumed"] * 5
        assert snapshot() == before
        assert_same_run(store.load("done"), first)
        assert store.runs()["segments"].tolist() == [1]


async def test_runs_show_prints_a_loaded_runs_line_as_the_notebook_did(tmp_path: Path) -> None:
    """The CLI reads a store written by another process and prints the same line, first."""
    path = tmp_path / "runs.sqlite"

    async def study() -> RunResult:
        with Store(path) as store:
            async with Orchestrator(FakeBackend(default=Answer(delay=0.5)), store=store, max_concurrency=3) as orch:
                return await orch.run([Query(f"q{i}", "x") for i in range(7)], name="seven")

    live = await hybrid.simulate(study)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(["runs", "--store", str(path), "show", "seven"]) == 0
    assert out.getvalue().splitlines()[0] == live.summary()
