"""The simulator in-process (``sim.backend``) and whole studies on a virtual clock (``hybrid.simulate``).

The equivalence test runs one seeded study both ways: through ``sim.backend`` on a virtual clock
and through ``sim.serve`` + ``HTTPBackend`` over loopback in real time.  Everything the latency
model does not decide (texts, tokens, error kinds, attempts) must be equal; timings can only be
longer over HTTP (the transport adds, never removes), by a bounded ratio.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from typing import Any

import pandas as pd
import pytest

import hybrid
from hybrid import ConfigError, HTTPBackend, Orchestrator, Query, Retry, RunResult, sim
from hybrid.sim import Faults, ModelProfile, SimConfig


#: Answers whose time is exactly ``ttft_s``: no jitter, token throughput too high to add anything.
def exact(ttft_s: float) -> ModelProfile:
    return ModelProfile(ttft_s=ttft_s, prompt_tps=1e12, completion_tps=1e12, jitter=0.0)


FAULTY = SimConfig(
    seed=11,
    time_scale=0.2,
    profiles={"sim-small": ModelProfile(ttft_s=0.5, prompt_tps=8000.0, completion_tps=400.0, jitter=0.1)},
    faults=Faults(server_error=0.2, malformed=0.1, truncate=0.1, rate_limit=0.1, no_usage=0.1, retry_after_s=0.1),
)
STUDY = [Query(f"q{i}", f"Question number {i}: name a colour.", stream=i % 2 == 0) for i in range(24)]


async def faulty_study(backend: Any) -> RunResult:
    async with Orchestrator(backend, retry=Retry(attempts=2, base=0.05, jitter=0.0), timeout=30) as orch:
        return await orch.run(STUDY, raise_if_all_failed=False)


def outcome(run: RunResult) -> list[tuple[Any, ...]]:
    return [(r.name, r.text, r.usage, r.error.kind if r.error else "ok", r.attempts) for r in run.results]


async def test_in_process_and_served_simulators_give_the_same_study() -> None:
    virtual = await hybrid.simulate(faulty_study, sim.backend(FAULTY))
    async with sim.serve(FAULTY) as server:
        served = await faulty_study(HTTPBackend(base_url=server.url, api_key=server.api_key, model="sim-small"))
    assert outcome(virtual) == outcome(served)
    kinds = {row[3] for row in outcome(virtual)}
    assert {"ok", "invalid_response"} <= kinds  # the faults did strike, and were classified alike
    pairs = [(v.latency_s, s.latency_s) for v, s in zip(virtual.results, served.results, strict=True) if v.ok]
    assert all(over_http >= in_model - 1e-3 for in_model, over_http in pairs)  # the wire only adds time


async def gathered_pair() -> RunResult:
    config = SimConfig(seed=1, profiles={"a": exact(8.5), "b": exact(7.2)})
    async with Orchestrator(sim.backend(config, model="a")) as orch:
        return await orch.run([Query("long", "first"), Query("short", "second", model="b")])


async def test_a_study_on_a_virtual_clock_has_the_models_timings_exactly() -> None:
    run = await hybrid.simulate(gathered_pair)
    m = run.metrics
    assert [r.latency_s for r in run.results] == [8.5, 7.2]
    assert m.wall_s == 8.5 and m.parallel_efficiency == pytest.approx(15.7 / 8.5, abs=1e-12)
    assert round(m.parallel_efficiency, 3) == 1.847 and m.percent_of_ideal == pytest.approx(1.0)


@pytest.mark.heavy
def test_a_study_gives_the_same_frame_bit_for_bit_beside_a_busy_process() -> None:
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        first = hybrid.run_sync(hybrid.simulate(faulty_study, sim.backend(FAULTY)))
        second = hybrid.run_sync(hybrid.simulate(faulty_study, sim.backend(FAULTY)))
    finally:
        hog.kill()
        hog.wait()
    pd.testing.assert_frame_equal(first.to_frame(), second.to_frame(), check_exact=True)
    assert first.metrics.wall_s == second.metrics.wall_s > 0


async def every_feature() -> dict[str, Any]:
    """Pipeline, stream, Retry-After, a timeout and a client-side RPM limit, all in one study."""
    config = SimConfig(
        seed=3,
        profiles={"sim-small": exact(2.0)},
        faults=Faults(fail_first=1, fail_first_status=429, retry_after_s=5.0),
    )
    backend = sim.backend(config)
    out: dict[str, Any] = {}
    async with Orchestrator(backend, retry=Retry(attempts=3, jitter=0.0), timeout=60) as orch:
        out["retried"] = await orch.run([Query("q", "hello")])
        out["pipeline"] = await orch.pipeline(
            [[Query("a", "first")], [Query("b", "summarise {{a}}", system="about {{a}}")]]
        )
        async with orch.stream([Query("s1", "one", stream=True), Query("s2", "two", stream=True)]) as events:
            out["events"] = [type(e).__name__ async for e in events]
    hanging = sim.backend(SimConfig(seed=3, profiles={"sim-small": exact(2.0)}, faults=Faults(hang=1.0)))
    async with Orchestrator(hanging, timeout=7.5, retry=Retry.never()) as orch:
        out["timeout"] = await orch.run([Query("h", "x")], raise_if_all_failed=False)
    async with Orchestrator(sim.backend(SimConfig(seed=3, profiles={"sim-small": exact(1.0)})), rpm=2) as orch:
        out["limited"] = await orch.run([Query(f"r{i}", f"limit {i}") for i in range(3)])
    return out


async def test_every_orchestrator_feature_runs_unchanged_on_the_virtual_clock() -> None:
    out = await hybrid.simulate(every_feature)
    retried = out["retried"]["q"]
    assert retried.ok and retried.attempts == 2 and retried.latency_s == 7.0  # waited Retry-After 5 s, then 2 s
    stages = out["pipeline"]
    assert stages["b"].ok and stages["b"].started_s == stages["a"].finished_s
    assert out["events"].count("QueryFinished") == 2 and out["events"][-1] == "RunFinished"
    timed_out = out["timeout"]["h"]
    assert timed_out.error is not None and timed_out.error.kind == "timeout" and timed_out.latency_s == 7.5
    assert [r.queue_s for r in out["limited"].results] == [0.0, 0.0, 30.0]  # 2 rpm: a burst of two, then 30 s


async def test_threads_mode_is_refused_in_process_with_advice() -> None:
    async with Orchestrator(sim.backend()) as orch:
        with pytest.raises(ConfigError, match=r"sim\.serve"):
            await orch.run([Query("q", "x")], mode="threads")


def test_unknown_models_are_refused_when_the_backend_is_made() -> None:
    with pytest.raises(ConfigError, match="model"):
        sim.backend(model="gpt-9")


async def test_interrupting_a_simulation_cancels_it_and_stops_its_thread() -> None:
    started = threading.Event()

    async def study_waiting_for_the_world() -> None:
        started.set()
        await asyncio.Event().wait()  # no timer to jump to: it waits for real, until cancelled

    task = asyncio.ensure_future(hybrid.simulate(study_waiting_for_the_world))
    assert await asyncio.to_thread(started.wait, 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not [t for t in threading.enumerate() if t.name == "hybrid-virtual-time"]


async def test_a_studys_error_reaches_the_caller() -> None:
    async def broken() -> None:
        raise ValueError("bad study")

    with pytest.raises(ValueError, match="bad study"):
        await hybrid.simulate(broken)


async def test_the_progress_bar_counts_every_query_of_a_simulated_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("HYBRID_PROGRESS", raising=False)

    async def study() -> RunResult:
        async with Orchestrator(sim.backend(SimConfig(seed=2)), progress=True) as orch:
            return await orch.run([Query(f"p{i}", f"progress {i}") for i in range(5)])

    run = await hybrid.simulate(study)
    assert run.ok and "5/5" in capsys.readouterr().err
