"""Benchmark science on the simulator in virtual time: arrivals, goodput under SLOs, the SLA
search, saturation in sweeps, and the warning when the server shares the client's process."""

from __future__ import annotations

import statistics

import pandas as pd
import pytest

import hybrid
from hybrid import ConfigError, HTTPBackend, Orchestrator, Query, bench, sim
from hybrid.bench import SLO, SharedProcessWarning, arrival_times, goodput, sla_search
from hybrid.sim import ModelProfile, SimConfig

ONE_SECOND = {"sim-small": ModelProfile(ttft_s=1.0, prompt_tps=1e12, completion_tps=1e12, jitter=0.0)}
#: 8 slots, 1 s per answer: capacity is 8 in flight, 8 answers a second.
EIGHT_SLOTS = SimConfig(seed=2, slots=8, profiles=ONE_SECOND)


def test_arrival_schedules_have_the_asked_rate_and_shape() -> None:
    n, rate = 4000, 10.0
    gaps = {
        kind: [b - a for a, b in zip([0.0, *times], times, strict=False)]
        for kind, times in {
            "poisson": arrival_times(n, rate, seed=1),
            "bursty": arrival_times(n, rate, arrival="gamma", burstiness=0.25, seed=1),
            "regular": arrival_times(n, rate, arrival="gamma", burstiness=8.0, seed=1),
            "constant": arrival_times(n, rate, arrival="constant"),
        }.items()
    }
    for kind, each in gaps.items():
        assert statistics.mean(each) == pytest.approx(1 / rate, rel=0.1), kind
    cv = {kind: statistics.pstdev(each) / statistics.mean(each) for kind, each in gaps.items()}
    assert cv["constant"] == pytest.approx(0.0, abs=1e-9)
    assert cv["regular"] < 0.5 < cv["poisson"] < 1.5 < cv["bursty"]  # gamma shape k: cv = 1/sqrt(k)
    ramp = arrival_times(1001, 1.0, arrival="constant", ramp_to_qps=11.0)
    assert ramp[1] - ramp[0] == pytest.approx(1.0, rel=0.02) and ramp[-1] - ramp[-2] == pytest.approx(1 / 11.0)
    with pytest.raises(ConfigError, match="arrival"):
        arrival_times(3, 1.0, arrival="uniform")


async def test_goodput_counts_only_answers_within_every_limit() -> None:
    """Streamed answers: 0.5 s before the first token, then 20 tokens in 1.5 s, on 4 slots."""

    async def study() -> hybrid.RunResult:
        slow_decode = {"sim-small": ModelProfile(ttft_s=0.5, prompt_tps=1e12, completion_tps=20 / 1.5, jitter=0.0)}
        config = SimConfig(seed=3, slots=4, profiles=slow_decode)
        queries = [Query(f"q{i}", f"question {i}", stream=True, max_tokens=20) for i in range(8)]
        async with Orchestrator(sim.backend(config), max_concurrency=8) as orch:
            return await orch.run(queries)

    run = await hybrid.simulate(study)
    frame = run.to_frame()
    # The first content arrives with the first of 8 pieces (3 tokens after 0.5 s); four queries
    # wait 2 s for a slot first, which their time to first token includes.
    assert (frame["completion_tokens"] == 20).all()
    assert sorted(frame["ttft_s"].round(6)) == [0.725] * 4 + [2.725] * 4
    wall = run.metrics.wall_s
    assert goodput(run, SLO(ttft_s=1.0)) == pytest.approx(4 / wall)
    assert goodput(run, SLO(tpot_s=0.05)) == 0.0  # (2.0 - 0.725) / 19 tokens = 0.067 s per token
    assert goodput(run, SLO(tpot_s=0.1)) == pytest.approx(8 / wall)
    assert goodput(run, SLO(ttft_s=3.0, tpot_s=0.1, e2e_s=2.5)) == pytest.approx(4 / wall)
    assert goodput(run, SLO(e2e_s=10.0)) == pytest.approx(run.metrics.throughput_qps)
    unstreamed = run.to_frame().assign(ttft_s=None)
    with pytest.raises(ConfigError, match="stream=True"):
        goodput(unstreamed, SLO(ttft_s=1.0), wall_s=1.0)
    with pytest.raises(ConfigError, match="at least one limit"):
        SLO()


async def test_the_sla_search_finds_the_servers_known_capacity() -> None:
    """Closed loop: the highest concurrency with p99 <= 1.5 s is the 8 slots, exactly.  Open loop
    (constant arrivals): the highest rate with p99 <= 2 s is within 10% of 8 answers a second."""
    queries = bench.make_queries(160)

    async def search(over: str, limit: float, high: float) -> pd.DataFrame:
        return await sla_search(sim.backend(EIGHT_SLOTS), queries, p99_limit_s=limit, over=over, high=high)

    by_concurrency = await hybrid.simulate(search, "concurrency", 1.5, 64)
    assert by_concurrency.attrs["best"] == 8
    assert len(by_concurrency) <= 8  # bisection: a handful of probes, not a sweep of 64
    by_rate = await hybrid.simulate(search, "rate", 2.0, 32.0)
    assert by_rate.attrs["best"] == pytest.approx(8.0, rel=0.1)
    assert by_rate["met"].any() and not by_rate["met"].all()


async def test_a_sweep_flags_efficiency_that_rises_while_throughput_is_flat() -> None:
    levels = (1, 2, 4, 8, 16, 32)
    frame = await hybrid.simulate(bench.sweep, sim.backend(EIGHT_SLOTS), bench.make_queries(64), levels=levels)
    by_level = frame.set_index("concurrency")
    assert list(by_level["throughput_qps"].round(3)) == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert list(by_level["speedup"].round(3)) == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert list(by_level["efficiency_misleading"]) == [False, False, False, False, True, True]
    assert frame.attrs["saturated_at"] == 8
    assert by_level.loc[32, "mean_server_queue_s"] > 2.0  # where the "efficiency" went
    stopped = await hybrid.simulate(
        bench.sweep, sim.backend(EIGHT_SLOTS), bench.make_queries(64), levels=levels, stop_when_saturated=True
    )
    assert list(stopped["concurrency"]) == [1, 2, 4, 8, 16]


@pytest.mark.parametrize("slots", [4, 8, 16])
async def test_a_sweep_says_a_server_saturates_at_its_slots(slots: int) -> None:
    """The plateau is the sweep's highest throughput; the saturation point the smallest level
    within PLATEAU_TOLERANCE of it, which for a simulator with N slots is N, not the level after."""
    config = SimConfig(seed=2, slots=slots, profiles=ONE_SECOND)
    levels = (1, 2, 4, 8, 16, 32, 64)
    frame = await hybrid.simulate(bench.sweep, sim.backend(config), bench.make_queries(64), levels=levels)
    assert frame.attrs["saturated_at"] == slots
    rising = await hybrid.simulate(bench.sweep, sim.backend(config), bench.make_queries(64), levels=(1, 2, slots))
    assert rising.attrs["saturated_at"] is None  # still rising at the last level: no plateau seen


@pytest.mark.heavy
async def test_benchmarks_warn_when_the_server_shares_the_clients_process() -> None:
    async with sim.serve(SimConfig(seed=1, time_scale=0.0)) as server:
        backend = HTTPBackend(base_url=server.url, api_key=server.api_key, model="sim-small")
        async with Orchestrator(backend) as orch:
            with pytest.warns(SharedProcessWarning, match="sim.serve_process"):
                await bench.compare(orch, bench.make_queries(2), repeats=1)
    async with sim.serve_process(SimConfig(seed=1, time_scale=0.0)) as server:
        backend = HTTPBackend(base_url=server.url, api_key=server.api_key, model="sim-small")
        async with Orchestrator(backend) as orch:
            frame = await bench.compare(orch, bench.make_queries(2), repeats=1)  # no warning (errors on warnings)
    assert (frame["succeeded"] == 2).all()


@pytest.mark.looptime
async def test_open_loop_shows_one_bar_not_one_per_arrival(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An open loop is one replayed run with one bar; a bar per arrival would flood a notebook with widgets."""
    from hybrid.testing import Answer, FakeBackend

    monkeypatch.delenv("HYBRID_PROGRESS", raising=False)
    monkeypatch.delenv("CI", raising=False)
    async with Orchestrator(FakeBackend(default=Answer(delay=0.5)), progress=True) as orch:
        frame = await bench.open_loop(orch, bench.make_queries(30), rate_qps=10.0)
    assert len(frame) == 30 and frame["ok"].all()
    shown = capsys.readouterr().err
    assert "hybrid replay" in shown and "30/30" in shown
    assert shown.count("hybrid replay") == shown.count("hybrid")
