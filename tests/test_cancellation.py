"""Cancellation storms: runs cancelled at random moments leave nothing behind, in every mode."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from hybrid import Orchestrator, Query, sim
from hybrid.sim import ModelProfile, SimConfig
from hybrid.testing import Answer, FakeBackend

from .conftest import ALL_BACKENDS, client_tasks, orchestrated, settled

# Answers take 20-200 ms (seeded jitter), so a cancel lands before, during or after them.
PROFILES = {"sim-small": ModelProfile(ttft_s=0.02, prompt_tps=1e9, completion_tps=400, jitter=0.6)}
QUERIES = [Query(f"q{i}", f"storm question {i}", stream=i % 2 == 0) for i in range(12)]


async def _start(orch: Any, way: str) -> asyncio.Task[Any]:
    if way == "stream":

        async def consume() -> list[Any]:
            return [event async for event in orch.stream(QUERIES)]

        return asyncio.create_task(consume())
    if way == "pipeline":
        return asyncio.create_task(orch.pipeline([QUERIES[:4], QUERIES[4:]]))
    return asyncio.create_task(orch.run(QUERIES, mode=way))


async def storm(way: str, trials: int, backend_kind: str) -> None:
    rng = random.Random(f"storm-{way}")
    config = SimConfig(seed=9, time_scale=1.0, profiles=PROFILES)
    async with orchestrated(backend_kind, config=config, max_concurrency=6) as (orch, server):
        before = client_tasks()
        for trial in range(trials):
            task = await _start(orch, way)
            await asyncio.sleep(rng.uniform(0.0, 0.25))
            task.cancel()
            try:
                await task
                cancelled = False
            except asyncio.CancelledError:
                cancelled = True
            stats = await settled(server)
            assert stats["in_flight"] == 0, (way, trial, stats)
            assert client_tasks() <= before | {asyncio.current_task()}, (way, trial)
            if cancelled:
                partial = orch.last_run
                assert partial is not None and partial.cancelled and len(partial.results) == len(QUERIES)
                assert all(r.ok == (r.error is None) for r in partial.results)
                assert all(r.text for r in partial.results if r.ok)  # finished answers are kept
        finished = await orch.run(QUERIES[:3])  # still usable after the storm
        assert finished.ok
    assert server.stats()["open_connections"] == 0  # closing the orchestrator closed every connection


@pytest.mark.heavy
@pytest.mark.parametrize("way", ["gather", "sequential", "pipeline", "stream"])
async def test_cancellation_storm(any_backend_kind: str, way: str) -> None:
    await storm(way, trials=8, backend_kind=any_backend_kind)


@pytest.mark.heavy
@pytest.mark.slow
@pytest.mark.parametrize("way", ["gather", "sequential", "pipeline", "stream"])
async def test_cancellation_storm_100_trials(any_backend_kind: str, way: str) -> None:
    await storm(way, trials=100, backend_kind=any_backend_kind)


@pytest.mark.heavy
async def test_threads_mode_cannot_stop_its_in_flight_calls() -> None:
    """The seeds' reason for going fully async: a cancelled thread-pool run keeps calling the server."""
    profiles = {"sim-small": ModelProfile(ttft_s=2.0, prompt_tps=1e9, completion_tps=1e9, jitter=0.0)}
    async with orchestrated("openai", config=SimConfig(time_scale=1.0, profiles=profiles)) as (orch, server):
        task = asyncio.create_task(orch.run(QUERIES[:4], mode="threads"))
        for _ in range(500):  # until all four calls are at the server (a busy machine starts threads late)
            if server.stats()["in_flight"] == 4:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)
        still_running = server.stats()["in_flight"]
        start = time.perf_counter()
        while server.stats()["in_flight"] and time.perf_counter() - start < 3:
            await asyncio.sleep(0.02)
        stats = server.stats()
        gathered = asyncio.create_task(orch.run(QUERIES[4:8]))
        await asyncio.sleep(0.2)
        gathered.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gathered
        gather_left = (await settled(server))["in_flight"]
    assert still_running == 4  # cancelled, yet all four calls are still at the server
    assert stats["by_status"] == {"200": 4} and stats["disconnects"] == 0  # ...and ran to completion
    assert gather_left == 0  # the async modes close theirs at once


# -- closing the orchestrator under running runs ---------------------------------------------------
@pytest.mark.looptime
@pytest.mark.parametrize("way", ["gather", "sequential", "pipeline", "stream"])
async def test_closing_under_a_running_run_cancels_it_and_returns_the_partial_run(way: str) -> None:
    """On the virtual clock: answers take 1 s each; the orchestrator is closed from another task at
    2.5 s.  The run returns (no ExceptionGroup, no AssertionError) with the rows finished by then,
    the rest Cancelled, ``cancelled=True`` and a warning that says why; no task is left."""
    backend = FakeBackend(default=Answer("fine", delay=1.0))
    queries = [Query(f"q{i}", f"question {i}") for i in range(6)]
    orch = Orchestrator(backend, max_concurrency=1 if way != "gather" else 2)
    await orch.__aenter__()
    before = client_tasks()
    if way == "stream":

        async def consume() -> Any:
            return [event async for event in orch.stream(queries)][-1].run

        task: asyncio.Task[Any] = asyncio.create_task(consume())
    elif way == "pipeline":
        task = asyncio.create_task(orch.pipeline([queries[:3], queries[3:]]))
    else:
        task = asyncio.create_task(orch.run(queries, mode=way))
    await asyncio.sleep(2.5)
    await orch.__aexit__(None, None, None)
    assert task.done() and not backend.is_open  # closing waited for the run, then closed the backend
    run = task.result()
    finished = 4 if way == "gather" else 2
    assert [r.ok for r in run.results] == [True] * finished + [False] * (6 - finished)
    assert {r.error.kind for r in run.results if r.error} == {"cancelled"}
    assert run.cancelled and any("orchestrator was closed" in w for w in run.warnings)
    assert orch.last_run is run and client_tasks() <= before | {asyncio.current_task()}


@pytest.mark.heavy
@pytest.mark.parametrize("mode", ["gather", "sequential"])
async def test_leaving_the_block_under_running_runs_closes_their_requests(any_backend_kind: str, mode: str) -> None:
    """Over the wire, with every backend: two runs in flight when the ``async with`` block is
    left (from a callback of another task) end cancelled, the server sees no request left in
    flight, every connection is closed, and no task of the kit is left."""
    profiles = {"sim-small": ModelProfile(ttft_s=0.3, prompt_tps=1e9, completion_tps=1e9, jitter=0.0)}
    config = SimConfig(seed=3, time_scale=1.0, profiles=profiles)
    async with sim.serve(config) as server:
        before = client_tasks()
        backend = ALL_BACKENDS[any_backend_kind](base_url=server.url, api_key=server.api_key, model="sim-small")
        async with Orchestrator(backend, max_concurrency=4) as orch:
            runs = [asyncio.create_task(orch.run(QUERIES, mode=mode)) for _ in range(2)]
            for _ in range(1000):  # until the server has answered some (a busy machine is slow to start)
                if server.stats()["by_status"].get("200", 0) >= 4:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # those answers reach the client
        results = await asyncio.gather(*runs)
        stats = await settled(server)
    assert all(run.cancelled and run.metrics.succeeded < len(QUERIES) for run in results)
    assert sum(run.metrics.succeeded for run in results) > 0  # what finished is kept
    assert stats["in_flight"] == 0 and stats["open_connections"] == 0
    assert client_tasks() <= before | {asyncio.current_task()}
