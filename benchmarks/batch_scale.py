"""100,000 queries through the Batch API: all answered, in order, in bounded client memory.

The simulator runs in its own process (``sim.serve_process``) at time scale 0, so the client's
peak RSS (``ru_maxrss``) is the kit's alone: building 100,000 JSONL lines, two input files of
50,000 (the provider's limit), polling, downloading two output files and mapping every line back
by ``custom_id``.  Goal: all ok, input order kept, peak client RSS under 1 GB.  For comparison the
same run is timed with the store on (every row and both batch ids written to SQLite).

    .venv/bin/python benchmarks/batch_scale.py [N]
"""

from __future__ import annotations

import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path

from hybrid import Batch, OpenAIBackend, Orchestrator, Query, Store, sim
from hybrid.provenance import machine_info


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


async def one_run(url: str, key: str, queries: list[Query], store: Store | None) -> tuple[float, int]:
    backend = OpenAIBackend(base_url=url, api_key=key, model="sim-small")
    async with Orchestrator(backend, store=store) as orch:
        start = time.perf_counter()
        run = await orch.run(queries, mode=Batch(poll_s=0.5), name=None if store is None else "scale")
        took = time.perf_counter() - start
    assert run.ok, run.summary()
    assert [r.name for r in run.results] == [q.name for q in queries]
    return took, run.metrics.batched


async def main(n: int) -> None:
    print(machine_info())
    queries = [Query(f"q{i}", f"Summarise item {i} in one line.", max_tokens=24) for i in range(n)]
    print(f"before: peak RSS {rss_mb():.0f} MB with {n:,} queries built")
    async with sim.serve_process(sim.SimConfig(seed=1, time_scale=0.0)) as server:
        took, batched = await one_run(server.url, server.api_key, queries, None)
        print(f"batch, no store: {batched:,} rows in {took:.1f} s; peak client RSS {rss_mb():.0f} MB")
        with tempfile.TemporaryDirectory() as folder:
            store = Store(Path(folder) / "runs.sqlite")
            took, batched = await one_run(server.url, server.api_key, queries, store)
            jobs = store.remote_jobs("scale")
            store.close()
        print(
            f"batch, store on: {batched:,} rows in {took:.1f} s; {len(jobs)} batch ids saved; "
            f"peak client RSS {rss_mb():.0f} MB"
        )
    assert rss_mb() < 1024, "peak client RSS over 1 GB"


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
