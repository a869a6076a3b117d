"""The benchmark-science proofs, with their numbers: decomposition, SLA search, comparison, auto.

1. Decomposition: over loopback (simulator process, both HTTP backends, streamed and not) the
   parts of each query's latency add up to it, and the server's reported parts never exceed what
   the client measured (the rest, network, is never negative); the mean parts are printed.
2. SLA search: against a simulator of known capacity (8 slots, 1 s answers: 8 in flight, 8/s),
   the highest concurrency with p99 <= 1.5 s and the highest constant rate with p99 <= 2 s.
3. compare_runs: 100 seeded pairs of one configuration, and 100 with 20% more latency.
4. max_concurrency="auto" against RPM and TPM limits: share of the limit's throughput, 429s.

Everything but (1) runs on the virtual clock (exact, the same on every machine).

    .venv/bin/python benchmarks/bench_science.py
"""

from __future__ import annotations

import asyncio
from collections import Counter

import hybrid
from hybrid import HTTPBackend, OpenAIBackend, Orchestrator, Query, Retry, RunResult, bench, sim
from hybrid.bench import sla_search
from hybrid.provenance import machine_info
from hybrid.sim import ModelProfile, SimConfig

PARTS = ("retry_s", "client_s", "server_queue_s", "server_s", "network_s")


def profile(latency_s: float, jitter: float = 0.0) -> dict[str, ModelProfile]:
    return {"sim-small": ModelProfile(ttft_s=latency_s, prompt_tps=1e12, completion_tps=1e12, jitter=jitter)}


async def decomposition() -> None:
    config = SimConfig(seed=3, slots=8, time_scale=0.2, profiles=profile(1.0, jitter=0.2))
    async with sim.serve_process(config) as server:
        for backend_cls in (HTTPBackend, OpenAIBackend):
            backend = backend_cls(base_url=server.url, api_key=server.api_key, model="sim-small")
            async with Orchestrator(backend, max_concurrency=16, timeout=None) as orch:
                run = await orch.run([Query(f"q{i}", f"question {i}", stream=i % 2 == 0) for i in range(200)])
            rows = run.to_frame()
            gap = (rows[list(PARTS)].fillna(0).sum(axis=1) - rows["latency_s"]).abs() / rows["latency_s"]
            # The rest (network) is what the measured parts leave: negative would mean a part over-reported.
            rest = (rows["network_s"] / rows["latency_s"]).min()
            means = {p: round(float(rows[p].mean()) * 1000, 2) for p in PARTS}
            print(
                f"  {backend_cls.__name__}: worst |sum of parts - latency| / latency = {gap.max():.1e}, smallest "
                f"rest / latency = {rest:.4f} (>= 0: no part over-reported); mean ms {means}"
            )


async def searches() -> None:
    eight = SimConfig(seed=2, slots=8, profiles=profile(1.0))
    queries = bench.make_queries(160)
    by_concurrency = await sla_search(sim.backend(eight), queries, p99_limit_s=1.5, over="concurrency", high=64)
    by_rate = await sla_search(sim.backend(eight), queries, p99_limit_s=2.0, over="rate", high=32.0)
    print(f"  concurrency: best {by_concurrency.attrs['best']} (capacity 8), {len(by_concurrency)} probes")
    best = by_rate.attrs["best"]
    print(f"  rate: best {best:.2f}/s (capacity 8/s, {best / 8 - 1:+.1%}), {len(by_rate)} probes")


async def comparisons() -> None:
    queries = bench.make_queries(150)

    async def run_at(seed: int, latency: float) -> RunResult:
        backend = sim.backend(SimConfig(seed=seed, slots=64, profiles=profile(latency, jitter=0.2)))
        async with Orchestrator(backend, max_concurrency=16) as orch:
            return await orch.run(queries)

    same, slower = Counter(), Counter()
    for i in range(100):
        base = await run_at(i, 1.0)
        same[bench.compare_runs(base, await run_at(1000 + i, 1.0), resamples=1000).verdict] += 1
        slower[bench.compare_runs(base, await run_at(2000 + i, 1.2), resamples=1000).verdict] += 1
    print(f"  same configuration: {dict(same)}; 20% more latency: {dict(slower)}")


async def adaptive() -> None:
    for limits in ({"rpm": 120}, {"tpm": 6000}):
        backend = sim.backend(SimConfig(seed=5, slots=64, profiles=profile(1.0), **limits))
        async with Orchestrator(
            backend, max_concurrency="auto", retry=Retry(attempts=5), timeout=None, progress=False
        ) as orch:
            run = await orch.run(bench.make_queries(1000, max_tokens=50))
        rejected = backend.engine.stats()["by_status"].get("429", 0)
        if "rpm" in limits:
            share = run.metrics.succeeded / run.metrics.wall_s / (limits["rpm"] / 60)
        else:
            charged = sum(r.usage.prompt_tokens + 50 for r in run.results if r.ok)
            share = charged / run.metrics.wall_s / (limits["tpm"] / 60)
        print(
            f"  {limits}: {share:.1%} of the limit's throughput, {rejected} x 429 in {run.metrics.attempts} "
            f"attempts ({rejected / run.metrics.attempts:.2%})"
        )


def main() -> None:
    print(machine_info())
    print("1. decomposition over loopback (real clock):")
    asyncio.run(decomposition())
    for title, study in (
        ("2. SLA search (virtual clock):", searches),
        ("3. compare_runs, 100 seeded pairs each (virtual clock):", comparisons),
        ("4. max_concurrency='auto' against rate limits (virtual clock):", adaptive),
    ):
        print(title)
        asyncio.run(hybrid.simulate(study))


if __name__ == "__main__":
    main()
