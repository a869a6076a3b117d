"""Load and soak runs (``make soak``): many queries, many in flight, faults, nothing lost.

1. 10,000 queries, ``max_concurrency=1000``, ~1 s simulated latency: no loss, no pool or connect
   timeouts; peak client RSS, throughput and client CPU per call reported.
2. 50,000 queries with 5% mixed faults, no retries: every query accounted for (ok + failed =
   submitted), and the error counts per kind match what the simulator says it injected.

The simulator runs in its own process.  Both use HTTPBackend (the backend meant for high rates);
pass ``--backend openai`` to soak the SDK path instead.

    .venv/bin/python benchmarks/soak.py [--backend http|openai] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
from collections import Counter

from hybrid import HTTPBackend, OpenAIBackend, Orchestrator, Retry, sim
from hybrid.bench import make_queries
from hybrid.provenance import machine_info
from hybrid.sim import Faults, ModelProfile, SimConfig

#: What each injected fault becomes on the client, with retries off.
EXPECTED_KIND = {
    "rate_limit": "rate_limited",
    "rate_limit_bare": "rate_limited",
    "server_error": "server_error",
    "unavailable": "server_error",
    "hang": "timeout",
    "drop": "connection_failed",
    "malformed": "invalid_response",
    "truncate": "invalid_response",
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def wide(backend_cls: type, n: int, concurrency: int) -> None:
    profile = {"sim-small": ModelProfile(ttft_s=1.0, prompt_tps=1e9, completion_tps=1e9, jitter=0.05)}
    async with sim.serve_process(SimConfig(seed=1, time_scale=1.0, slots=concurrency * 2, profiles=profile)) as server:
        backend = backend_cls(base_url=server.url, api_key=server.api_key, model="sim-small")
        async with Orchestrator(backend, max_concurrency=concurrency, timeout=120.0) as orch:
            run = await orch.run(make_queries(n))
        stats = await server.fetch_stats()
    m = run.metrics
    kinds = Counter(r.error.kind for r in run.results if r.error)
    print(
        f"[wide] {n:,} queries, max_concurrency={concurrency}, 1 s latency: {m.succeeded:,} ok, {m.failed} failed "
        f"{dict(kinds)}; results {len(run.results):,} (loss {n - len(run.results)}); wall {m.wall_s:.1f}s, "
        f"{m.throughput_qps:,.0f} q/s; client CPU {m.cpu_per_call_ms:.2f} ms/call; peak client RSS "
        f"{peak_rss_mb():.0f} MB; server peak in flight {stats['peak_in_flight']}"
    )
    assert len(run.results) == n and m.failed == 0, "queries were lost or failed"


async def faulty(backend_cls: type, n: int) -> None:
    faults = Faults(
        rate_limit=0.006,
        rate_limit_bare=0.006,
        server_error=0.007,
        unavailable=0.006,
        hang=0.005,
        drop=0.007,
        malformed=0.007,
        truncate=0.006,
        no_usage=0.0,
        retry_after_s=0.0,
        hang_s=30.0,
    )
    async with sim.serve_process(SimConfig(seed=2, time_scale=0.0, faults=faults)) as server:
        backend = backend_cls(base_url=server.url, api_key=server.api_key, model="sim-small")
        async with Orchestrator(backend, max_concurrency=256, timeout=2.0, retry=Retry.never()) as orch:
            run = await orch.run(make_queries(n, stream=False))
        stats = await server.fetch_stats()
    m = run.metrics
    got = Counter(r.error.kind for r in run.results if r.error)
    expected: Counter[str] = Counter()
    for kind, count in stats["faults"].items():
        expected[EXPECTED_KIND[kind]] += count
    print(f"[faults] {n:,} queries, {sum(stats['faults'].values()):,} faults injected {stats['faults']}")
    print(
        f"         ok {m.succeeded:,} + failed {m.failed:,} = {m.succeeded + m.failed:,} of {n:,} submitted; "
        f"wall {m.wall_s:.1f}s, {len(run.results) / m.wall_s:,.0f} q/s, client CPU {m.cpu_per_call_ms:.2f} ms/call, "
        f"peak client RSS {peak_rss_mb():.0f} MB"
    )
    print(f"         errors by kind: client {dict(sorted(got.items()))} vs simulator {dict(sorted(expected.items()))}")
    assert m.succeeded + m.failed == n == len(run.results), "a query went missing"
    assert got == expected, "client error counts differ from what the simulator injected"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=("http", "openai"), default="http")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    backend_cls = HTTPBackend if args.backend == "http" else OpenAIBackend
    info = machine_info()
    print(f"machine: {info['cpu_model']}, {info['cpu_count']} cores; commit {info['commit']}; backend {args.backend}")
    await wide(backend_cls, 2000 if args.quick else 10_000, 1000)
    await faulty(backend_cls, 5000 if args.quick else 50_000)


if __name__ == "__main__":
    asyncio.run(main())
