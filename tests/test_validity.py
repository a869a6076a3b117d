"""Validity flags: each one raised by the fault it names, planted, and none on clean seeded runs."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from hybrid import HTTPBackend, Orchestrator, Query, Store, bench, sim, validity
from hybrid.metrics import RunMetrics
from hybrid.query import QueryResult
from hybrid.testing import Answer, FakeBackend


def _rows(n: int, **fields: float) -> list[QueryResult]:
    return [QueryResult(query=Query(f"q{i}", "hi"), index=i, text="ok", attempts=1, **fields) for i in range(n)]


def test_client_cpu_near_the_wall_on_a_real_clock_is_client_bound_and_never_on_a_virtual_one() -> None:
    rows = _rows(10, latency_s=0.1, finished_s=1.0)
    for cpu_share, flagged in ((0.95, True), (validity.CLIENT_BOUND_CPU_SHARE, True), (0.5, False)):
        metrics = RunMetrics.compute(rows, wall_s=1.0, cpu_s=cpu_share, concurrency=10)
        assert ("client_bound" in validity.flags_of(rows, metrics)) is flagged
        assert validity.flags_of(rows, metrics, real_clock=False) == ()  # a virtual wall is a model's


def test_each_flag_names_what_it_means() -> None:
    rows = _rows(4, latency_s=1.0, server_queue_s=0.5, started_s=2.0, scheduled_s=0.0)
    metrics = RunMetrics.compute(rows, wall_s=10.0, cpu_s=9.9, concurrency=4)
    found = validity.flags_of(rows, metrics, server_in_process=True)
    assert found == ("client_bound", "coordinated_omission", "saturated", "server_in_process")
    assert all(validity.FLAGS[flag] for flag in found)


def _server(slots: int) -> sim.SimConfig:
    profile = sim.ModelProfile(ttft_s=0.5, prompt_tps=10_000.0, completion_tps=100.0, jitter=0.1)
    return sim.SimConfig(seed=1, slots=slots, profiles={"sim-small": profile})


@pytest.mark.looptime
async def test_a_server_out_of_slots_is_flagged_saturated_and_the_store_keeps_the_flag(tmp_path: Path) -> None:
    with Store(tmp_path / "runs.sqlite") as store:
        async with Orchestrator(sim.backend(_server(slots=2)), max_concurrency=16, store=store) as orch:
            queued = await orch.run(bench.make_queries(16), name="queued")
        assert "saturated" in queued.flags and store.load("queued").flags == queued.flags
    async with Orchestrator(sim.backend(_server(slots=16)), max_concurrency=16) as orch:
        assert (await orch.run(bench.make_queries(16))).flags == ()


async def test_a_server_in_the_clients_process_is_flagged() -> None:
    async with sim.serve(sim.SimConfig(time_scale=0.01)) as server:
        backend = HTTPBackend(base_url=server.url, api_key=server.api_key, model="sim-small")
        async with Orchestrator(backend) as orch:
            run = await orch.run(bench.make_queries(3))
    assert "server_in_process" in run.flags


@pytest.mark.looptime
async def test_a_hundred_clean_seeded_runs_raise_no_flag() -> None:
    rng = random.Random(34)
    for seed in range(100):
        n, slots = rng.randint(1, 40), rng.choice((8, 16, 64))
        backend = sim.backend(_server(slots=slots).with_changes(seed=seed))
        async with Orchestrator(backend, max_concurrency=slots) as orch:
            run = await orch.run(bench.make_queries(n, prefix=f"s{seed}-"))
        assert run.flags == (), (seed, run.flags)


@pytest.mark.looptime
async def test_a_fake_backend_run_raises_no_flag() -> None:
    async with Orchestrator(FakeBackend(default=Answer(delay=1.0))) as orch:
        assert (await orch.run(bench.make_queries(5))).flags == ()
