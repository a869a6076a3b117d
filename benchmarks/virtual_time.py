"""How fast a study runs on the virtual clock.

10,000 queries of exactly 1 s simulated latency at ``max_concurrency=100`` through
``sim.backend`` inside ``hybrid.simulate``: a virtual wall of 100 s.  Printed: the virtual wall,
the real seconds it took, and their ratio; goal: under 5 s of real time on the project's 2-core
machine.  A second, streamed run shows the cost of chunk parsing (8 chunks per answer).

    .venv/bin/python benchmarks/virtual_time.py
"""

from __future__ import annotations

import time

import hybrid
from hybrid import Orchestrator, Query, RunResult, sim
from hybrid.provenance import machine_info
from hybrid.sim import ModelProfile, SimConfig

QUERIES = 10_000
CONCURRENCY = 100


async def study(stream: bool) -> RunResult:
    profile = ModelProfile(ttft_s=1.0, prompt_tps=1e12, completion_tps=1e12, jitter=0.0)
    backend = sim.backend(SimConfig(seed=1, slots=CONCURRENCY, profiles={"sim-small": profile}))
    queries = [Query(f"q{i}", f"question {i}", stream=stream) for i in range(QUERIES)]
    async with Orchestrator(backend, max_concurrency=CONCURRENCY, timeout=None) as orch:
        return await orch.run(queries)


def main() -> None:
    print(machine_info())
    for stream in (False, True):
        start = time.perf_counter()
        run = hybrid.run_sync(hybrid.simulate(study, stream))
        real = time.perf_counter() - start
        m = run.metrics
        print(
            f"{'streamed' if stream else 'plain':8}: {m.succeeded:,}/{m.queries:,} ok, virtual wall {m.wall_s:.3f} s, "
            f"real {real:.2f} s ({m.wall_s / real:.0f}x faster than real time; goal: real < 5 s)"
        )


if __name__ == "__main__":
    main()
