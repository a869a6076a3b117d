"""The kit against a real llama.cpp server with Gemma 3 270M (``make test-real``).

Marked ``real``: excluded from ``make test``; skipped, with the reason, where the real extra is not
installed.
"""

from __future__ import annotations

import os
import statistics

import pytest

from hybrid import HTTPBackend, OpenAIBackend, Orchestrator, Query, real
from hybrid.calibrate import sweep_queries

pytestmark = [
    pytest.mark.real,
    pytest.mark.skipif(real.available() is not None, reason=f"real extra not installed: {real.available()}"),
]


@pytest.mark.parametrize("backend_cls", [OpenAIBackend, HTTPBackend])
async def test_backends_get_usage_streaming_usage_and_ttft(backend_cls: type) -> None:
    async with real.serve(slots=4) as server:
        backend = backend_cls(base_url=server.url, api_key=server.api_key, model=server.model)
        async with Orchestrator(backend, max_concurrency=4, timeout=120) as orch:
            run = await orch.run(
                [
                    Query("plain", "The capital of France is", max_tokens=12, temperature=0.0),
                    Query("streamed", "The capital of France is", max_tokens=12, temperature=0.0, stream=True),
                ]
            )
    plain, streamed = run.results
    assert run.ok and plain.text and streamed.text
    for result in (plain, streamed):
        assert result.usage.prompt_tokens > 0 and 0 < result.usage.completion_tokens <= 12
        assert not result.usage.estimated  # real usage, from the body and from the final stream chunk
    assert plain.usage.prompt_tokens == streamed.usage.prompt_tokens
    assert streamed.ttft_s is not None and 0 < streamed.ttft_s < streamed.latency_s


@pytest.mark.timeout(300)  # a warm-up, then three sequential and three gathered runs of 8 x 32 tokens
async def test_gather_beats_sequential_by_more_than_two_at_eight_requests() -> None:
    """Median of three alternating pairs, after a gathered warm-up: the first batch of 8 on a fresh
    server pays one-off set-up (seen once as a 1.79x pair among 2.2-2.4x ones)."""
    from hybrid.calibrate import warm_up

    speedups = []
    async with real.serve(slots=8) as server:
        backend = HTTPBackend(base_url=server.url, api_key=server.api_key, model=server.model)
        async with Orchestrator(backend, max_concurrency=8, timeout=300) as orch:
            await warm_up(orch, sweep_queries(8, max_tokens=4, prefix="warm"))
            for repeat in range(3):
                queries = sweep_queries(8, max_tokens=32, prefix=f"r{repeat}-")
                sequential = await orch.run(queries, mode="sequential")
                gathered = await orch.run(queries)
                assert sequential.ok and gathered.ok
                speedups.append(sequential.metrics.wall_s / gathered.metrics.wall_s)
        stats = await server.fetch_stats()
    speedup = statistics.median(speedups)
    assert speedup > 2.0, f"speedups {speedups}"
    assert stats["in_flight"] == 0 and stats["completion_tokens_total"] > 0


async def test_the_server_process_is_never_left_running() -> None:
    async with real.serve(slots=2) as server:
        pid = server.pid
        os.kill(pid, 0)  # alive inside the block
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(RuntimeError):
        async with real.serve(slots=2) as server:
            pid = server.pid
            raise RuntimeError("a failing block still stops the server")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.timeout(300)  # lone requests, then a real and a simulated sweep: about two minutes
async def test_a_profile_calibrated_here_reproduces_the_real_sweep_within_20_percent() -> None:
    """Calibrate against the real server, then simulate its sweep: the walls agree within 20%.

    The fit is made in the same session as the sweep it is checked on, because this shared machine
    runs llama.cpp faster or slower from one hour to the next (fits of the same server have differed
    by 24% in decode and 36% in prefill); the shipped ``gemma3-270m-cpu`` profile is one such fit, so
    it must stay within that drift of this one (a factor of 1.5), not match it."""
    from hybrid import bench, sim
    from hybrid.calibrate import compare_sweeps, fit_profile, measure_single, warm_up
    from hybrid.sim.config import PROFILES

    levels, slots, tokens = (1, 4, 8, 16), 8, 32
    async with real.serve(slots=slots) as server:
        lone = HTTPBackend(base_url=server.url, api_key=server.api_key, model=server.model)
        async with Orchestrator(lone, max_concurrency=1, timeout=300) as orch:
            await warm_up(orch, sweep_queries(2, max_tokens=8, prefix="warm"))
            single = await measure_single(orch)
        lean = HTTPBackend(base_url=server.url, api_key=server.api_key, model=server.model)
        measured = await bench.sweep(lean, sweep_queries(16, max_tokens=tokens), levels=levels, repeats=3, timeout=300)
    per_query = measured[["prompt_tokens", "completion_tokens"]].sum() / measured["queries"].sum()
    profile = fit_profile(
        single,
        measured,
        slots=slots,
        prompt_tokens=per_query["prompt_tokens"],
        completion_tokens=per_query["completion_tokens"],
    )
    config = sim.SimConfig(seed=1, time_scale=1.0, slots=slots, profiles={"fitted": profile})
    async with sim.serve_process(config) as simulated:
        backend = HTTPBackend(base_url=simulated.url, api_key=simulated.api_key, model="fitted")
        modelled = await bench.sweep(backend, sweep_queries(16, max_tokens=tokens), levels=levels, timeout=300)
    table = compare_sweeps(measured, modelled)
    assert ((table["sim_over_real"] - 1).abs() <= 0.2).all(), (profile, table.to_string())
    shipped = PROFILES["gemma3-270m-cpu"]
    assert 1 / 1.5 <= profile.completion_tps / shipped.completion_tps <= 1.5, (profile, shipped)
    assert 1 / 1.5 <= profile.prompt_tps / shipped.prompt_tps <= 1.5, (profile, shipped)
