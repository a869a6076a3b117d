"""``max_concurrency="auto"``: AIMD concurrency that finds what the server serves, slows down before
its rate limits, and never sends before a Retry-After has passed.

The goals run against the in-process simulator with RPM and TPM limits, on a virtual clock: at
least 90% of the limit's throughput, fewer than 2% of requests answered 429, and no attempt sent
between a 429 and the end of its Retry-After.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import hybrid
from hybrid import ConfigError, Orchestrator, Query, RateLimited, Retry, RunResult, sim
from hybrid.bench import make_queries
from hybrid.sim import ModelProfile, SimConfig
from hybrid.testing import Answer, Fail, FakeBackend

ONE_SECOND = {"sim-small": ModelProfile(ttft_s=1.0, prompt_tps=1e12, completion_tps=1e12, jitter=0.0)}


class Logged:
    """Wraps a backend: every send and every 429, in the order they happened."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.events: list[tuple[str, float, float | None]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    async def complete(self, query: Query) -> Any:
        clock = asyncio.get_running_loop().time
        self.events.append(("send", clock(), None))
        try:
            return await self.backend.complete(query)
        except RateLimited as exc:
            self.events.append(("429", clock(), exc.retry_after_s))
            raise

    def sent_during_a_pause(self) -> list[tuple[float, float]]:
        """(send time, end of the pause it broke) for every send after a 429 and before its Retry-After ran out."""
        broken, pause_end = [], -1.0
        for kind, at, retry_after in self.events:
            if kind == "429":
                pause_end = max(pause_end, at + (retry_after or 0.0))
            elif at < pause_end - 1e-9:
                broken.append((at, pause_end))
        return broken


async def auto_run(config: SimConfig, queries: list[Query]) -> tuple[RunResult, Logged]:
    backend = Logged(sim.backend(config))
    async with Orchestrator(
        backend, max_concurrency="auto", concurrency_ceiling=64, retry=Retry(attempts=5), timeout=None
    ) as orch:
        run = await orch.run(queries, raise_if_all_failed=False)
    return run, backend


@pytest.mark.parametrize(
    ("limits", "per_second"),
    [({"rpm": 120}, lambda run: run.metrics.succeeded), ({"tpm": 6000}, lambda run: charged_tokens(run))],
    ids=["rpm", "tpm"],
)
async def test_auto_reaches_the_rate_limit_without_paying_in_429s(limits: dict, per_second: Any) -> None:
    config = SimConfig(seed=5, slots=64, profiles=ONE_SECOND, limit_window_s=60.0, **limits)
    run, backend = await hybrid.simulate(auto_run, config, make_queries(1000, max_tokens=50))
    assert run.metrics.succeeded == 1000
    limit_per_s = (limits.get("rpm") or limits.get("tpm")) / 60.0
    assert per_second(run) / run.metrics.wall_s >= 0.9 * limit_per_s
    rejected = sum(kind == "429" for kind, _, _ in backend.events)
    assert rejected / run.metrics.attempts < 0.02
    assert backend.sent_during_a_pause() == []


def charged_tokens(run: RunResult) -> int:
    """What the server's TPM window charged: prompt plus max_tokens per answered request."""
    return sum(r.usage.prompt_tokens + (r.query.max_tokens or 0) for r in run.results if r.ok)


async def test_auto_settles_at_what_the_server_serves_at_once() -> None:
    """8 slots, no rate limit: the limit climbs, then the server's own queue reports bring it back
    to 8 (probing 9), far below the ceiling of 64."""
    run, _ = await hybrid.simulate(auto_run, SimConfig(seed=5, slots=8, profiles=ONE_SECOND), make_queries(400))
    trace = run.metrics.concurrency_trace
    assert trace[0] == (0.0, 1)
    assert max(limit for _, limit in trace) < 64
    settled = [limit for at, limit in trace if at > run.metrics.wall_s / 2]
    assert settled and all(6 <= limit <= 10 for limit in settled)
    assert run.metrics.throughput_qps >= 0.8 * 8  # 8 slots of 1 s, slow start included


@pytest.mark.looptime
async def test_a_retry_after_pauses_every_query_not_only_the_one_told() -> None:
    """Answers of 1 s; slow start takes the limit 1 -> 2 -> 4; q4's 429 at t=3 asks for 5 s."""
    fake = FakeBackend(
        {"q4": [Fail(RateLimited("slow down", retry_after_s=5.0), delay=1.0), Answer(delay=1.0)]},
        default=Answer(delay=1.0),
    )
    async with Orchestrator(fake, max_concurrency="auto", concurrency_ceiling=8, retry=Retry(jitter=0.0)) as orch:
        run = await orch.run([Query(f"q{i}", f"question {i}") for i in range(10)])
    assert run.ok
    assert [fake.times(f"q{i}") for i in range(4)] == [[0.0], [1.0], [1.0], [2.0]]
    assert fake.times("q4") == [2.0, 8.0]
    sends = sorted(call.at for call in fake.calls)
    assert not [at for at in sends if 3.0 < at < 8.0]  # nobody goes while the server asked to wait
    assert sends.count(8.0) > 1  # the others, held by the pause, go when it ends
    assert run.metrics.concurrency_trace[:4] == ((0.0, 1), (1.0, 2), (2.0, 3), (2.0, 4))


def test_auto_is_checked_before_anything_is_sent() -> None:
    with pytest.raises(ConfigError, match="'auto'"):
        Orchestrator(FakeBackend(), max_concurrency="fast")
    with pytest.raises(ConfigError, match="concurrency_ceiling"):
        Orchestrator(FakeBackend(), max_concurrency="auto", concurrency_ceiling=0)
    backend = hybrid.HTTPBackend(base_url="http://127.0.0.1:9/v1", api_key="k", model="m", check_reachable=False)
    auto = Orchestrator(backend, max_concurrency="auto")
    with pytest.raises(ConfigError, match="fixed max_concurrency"):
        asyncio.run(auto.run([Query("q", "hi")], mode=hybrid.RayShards(shards=2)))
