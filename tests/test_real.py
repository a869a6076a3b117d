"""The kit against a real llama.cpp server with Gemma 3 270M (``make test-real``).

Marked ``real``: excluded from ``make test``; skipped, with the reason, where the real extra is not
installed.
"""

from __future__ import annotations

import os

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


async def test_gather_beats_sequential_by_more_than_two_at_eight_requests() -> None:
    async with real.serve(slots=8) as server:
        backend = HTTPBackend(base_url=server.url, api_key=server.api_key, model=server.model)
        async with Orchestrator(backend, max_concurrency=8, timeout=300) as orch:
            queries = sweep_queries(8, max_tokens=32)
            sequential = await orch.run(queries, mode="sequential")
            gathered = await orch.run(queries)
        stats = await server.fetch_stats()
    speedup = sequential.metrics.wall_s / gathered.metrics.wall_s
    assert sequential.ok and gathered.ok
    assert speedup > 2.0, f"speedup {speedup:.2f}"
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


async def test_the_calibrated_profile_reproduces_the_real_sweep_within_20_percent() -> None:
    from hybrid import bench, sim
    from hybrid.calibrate import compare_sweeps

    levels = (1, 4, 8, 16)
    async with real.serve(slots=8) as server:
        lean = HTTPBackend(base_url=server.url, api_key=server.api_key, model=server.model)
        measured = await bench.sweep(lean, sweep_queries(16, max_tokens=32), levels=levels, repeats=3, timeout=300)
    config = sim.SimConfig(seed=1, time_scale=1.0, slots=8)
    async with sim.serve_process(config) as simulated:
        backend = HTTPBackend(base_url=simulated.url, api_key=simulated.api_key, model="gemma3-270m-cpu")
        modelled = await bench.sweep(backend, sweep_queries(16, max_tokens=32), levels=levels, timeout=300)
    table = compare_sweeps(measured, modelled)
    assert ((table["sim_over_real"] - 1).abs() <= 0.2).all(), table.to_string()
