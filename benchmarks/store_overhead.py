"""What the run store and the response cache cost, side by side in one run.

1. ``HTTPBackend`` at time scale 0 against a simulator in its own process, concurrency 64, 5,000
   queries: calls/s with the store off and on, alternating, median of 5 (goal: on >= 0.9x off).
2. Cache hits: 10,000 queries answered from the cache (the same grid again, from a new
   orchestrator, so from the file), in queries/s (goal: >= 20,000/s).

    .venv/bin/python benchmarks/store_overhead.py
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from hybrid import HTTPBackend, Orchestrator, Query, Store, sim
from hybrid.provenance import machine_info
from hybrid.testing import FakeBackend

CALLS = 5000
HITS = 10_000


async def calls_per_s(url: str, key: str, store: Store | None) -> float:
    queries = [Query(f"q{i}", f"store overhead {i}") for i in range(CALLS)]
    backend = HTTPBackend(base_url=url, api_key=key, model="sim-small")
    async with Orchestrator(backend, max_concurrency=64, timeout=None, store=store) as orch:
        start = time.perf_counter()
        run = await orch.run(queries)
        took = time.perf_counter() - start
    assert run.ok
    return CALLS / took


async def main() -> None:
    print(machine_info())
    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder) / "bench.sqlite")
        async with sim.serve_process(sim.SimConfig(seed=1, time_scale=0.0)) as server:
            off, on = [], []
            for _ in range(5):
                off.append(await calls_per_s(server.url, server.api_key, None))
                on.append(await calls_per_s(server.url, server.api_key, store))
        print("pairs (off, on):", ", ".join(f"({a:,.0f}, {b:,.0f})" for a, b in zip(off, on, strict=True)))
        off_median, on_median = statistics.median(off), statistics.median(on)
        print(
            f"HTTPBackend, time scale 0, c=64: store off {off_median:,.0f} calls/s, on {on_median:,.0f} calls/s; "
            f"ratio {on_median / off_median:.2f}x (goal >= 0.9x)"
        )

        grid = [Query(f"h{i}", f"cache hit {i}") for i in range(HITS)]
        async with Orchestrator(FakeBackend(), store=store, cache=True, max_concurrency=64) as orch:
            await orch.run(grid)  # fills the cache
        # A new orchestrator (a re-run in a new session): every hit comes from the file, not from memory.
        async with Orchestrator(FakeBackend(), store=store, cache=True, max_concurrency=64) as orch:
            start = time.perf_counter()
            again = await orch.run(grid)
            took = time.perf_counter() - start
        assert again.metrics.from_cache == HITS
        print(f"cache hits: {HITS:,} in {took:.2f} s = {HITS / took:,.0f} queries/s (goal >= 20,000/s)")
        store.close()


if __name__ == "__main__":
    asyncio.run(main())
