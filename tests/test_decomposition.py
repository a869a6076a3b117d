"""Where a query's latency goes: client queue, retries, the client's own time, the server's queue and
work (as the server reports them), and the rest.

On a virtual clock with the in-process simulator every part is exact; over loopback (the served
simulator, both HTTP backends, streamed and not) the parts are checked for what the wire can
promise: each is non-negative and together they make the measured latency, within 1% per query.
"""

from __future__ import annotations

import pytest

import hybrid
from hybrid import HTTPBackend, OpenAIBackend, Orchestrator, Query, RateLimited, Retry, ServerReport, sim
from hybrid.backends.openai_wire import duration_seconds, server_report
from hybrid.sim import ModelProfile, SimConfig
from hybrid.testing import Answer, Fail, FakeBackend

PARTS = ("retry_s", "client_s", "server_queue_s", "server_s", "network_s")


def exact(ttft_s: float) -> ModelProfile:
    return ModelProfile(ttft_s=ttft_s, prompt_tps=1e12, completion_tps=1e12, jitter=0.0)


def parts_sum(row: dict) -> float:
    return sum(row[p] or 0.0 for p in PARTS)


async def test_server_queue_and_work_are_exact_on_a_virtual_clock() -> None:
    """Two slots, four queries of exactly 1 s each at once: two wait 1 s in the server's queue."""

    async def study() -> hybrid.RunResult:
        backend = sim.backend(SimConfig(seed=1, slots=2, profiles={"sim-small": exact(1.0)}))
        async with Orchestrator(backend, max_concurrency=4) as orch:
            return await orch.run([Query(f"q{i}", f"hello {i}", stream=i % 2 == 0) for i in range(4)])

    run = await hybrid.simulate(study)
    frame = run.to_frame()
    assert sorted(frame["server_queue_s"].round(6)) == [0.0, 0.0, 1.0, 1.0]
    assert list(frame["server_s"].round(6)) == [1.0] * 4
    assert list(frame["network_s"].round(6)) == [0.0] * 4
    assert list(frame["client_s"]) == [0.0] * 4
    for row in frame.to_dict("records"):
        assert parts_sum(row) == pytest.approx(row["latency_s"], abs=1e-9)
    m = run.metrics
    assert (m.mean_server_queue_s, m.mean_server_s, m.mean_network_s) == pytest.approx((0.5, 1.0, 0.0), abs=1e-6)


@pytest.mark.looptime
async def test_failed_attempts_and_backoff_are_the_retry_part() -> None:
    fake = FakeBackend(
        {
            "q": [
                Fail(RateLimited("busy", retry_after_s=2.0), delay=0.5),
                Answer(delay=1.0, server=ServerReport(service_s=0.75)),
            ]
        }
    )
    async with Orchestrator(fake, retry=Retry(attempts=2, jitter=0.0)) as orch:
        run = await orch.run([Query("q", "hi")])
    row = run.to_frame().iloc[0]
    assert row["latency_s"] == pytest.approx(3.5)
    assert row["retry_s"] == pytest.approx(2.5)  # the 0.5 s attempt and the 2 s the server asked for
    assert row["server_s"] == pytest.approx(0.75)
    assert row["server_queue_s"] is None
    assert row["network_s"] == pytest.approx(0.25)  # what the server did not account for


@pytest.mark.parametrize("backend_cls", [HTTPBackend, OpenAIBackend])
async def test_parts_add_up_to_the_latency_over_loopback(backend_cls: type) -> None:
    config = SimConfig(seed=3, slots=2, profiles={"sim-small": exact(0.5)})
    async with sim.serve(config) as server:
        backend = backend_cls(base_url=server.url, api_key=server.api_key, model="sim-small")
        async with Orchestrator(backend, max_concurrency=4, timeout=None) as orch:
            run = await orch.run([Query(f"q{i}", f"hello {i}", stream=i % 2 == 0) for i in range(4)])
    for row in run.to_frame().to_dict("records"):
        assert all(row[p] is not None and row[p] >= 0.0 for p in PARTS), row
        assert parts_sum(row) == pytest.approx(row["latency_s"], rel=0.01)
        assert row["server_s"] >= 0.5  # the server's work, as it reported it
    queued = sorted(run.to_frame()["server_queue_s"])
    assert queued[0] < 0.25 and queued[-1] > 0.25  # two waited for the two slots, two did not
    assert sum(q > 0.25 for q in queued) == 2


def test_server_report_reads_each_servers_dialect() -> None:
    llama = server_report({}, {"prompt_n": 9, "prompt_ms": 120.5, "predicted_n": 30, "predicted_ms": 879.5})
    assert llama == ServerReport(service_s=1.0)
    openai = server_report({"openai-processing-ms": "250", "x-ratelimit-remaining-requests": "59"})
    assert openai == ServerReport(service_s=0.25, remaining_requests=59)
    simulator = server_report({"x-hybrid-queue-ms": "100", "openai-processing-ms": "350"})
    assert (simulator.queue_s, simulator.service_s) == pytest.approx((0.1, 0.25))
    assert server_report({"openai-processing-ms": "soon", "x-ratelimit-remaining-tokens": "-3"}) is None
    assert server_report({"content-type": "application/json"}, {"prompt_ms": "x"}) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("120ms", 0.12), ("1h2m3.5s", 3723.5), ("0.25", 0.25), ("2x", None), ("", None)],
)
def test_rate_limit_reset_durations(text: str, seconds: float | None) -> None:
    assert duration_seconds(text) == (None if seconds is None else pytest.approx(seconds))


def test_a_rest_that_is_only_float_rounding_is_zero_not_a_tiny_negative_time() -> None:
    """0.3 s of latency reported as 0.1 s queued and 0.2 s served leaves 0.3 - 0.1 - 0.2, which in
    floats is -2.8e-17: the network part is 0, never a negative duration printed as -2.78e-17 s."""
    from hybrid.orchestrator import latency_parts
    from hybrid.query import Completion, Usage

    completion = Completion(text="x", usage=Usage(), model="m", server=ServerReport(queue_s=0.1, service_s=0.2))
    parts = latency_parts(0.3, 0.0, 5.0, completion)
    assert 0.3 - 0.1 - 0.2 < 0 and parts["network_s"] == 0.0
    late = Completion(text="x", usage=Usage(), model="m", server=ServerReport(queue_s=0.1, service_s=0.1))
    assert latency_parts(0.3, 0.0, 5.0, late)["network_s"] == pytest.approx(0.1)
