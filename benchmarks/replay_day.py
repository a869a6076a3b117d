"""A day of traffic replayed on the virtual clock: how long it takes, and how much memory.

A synthetic 24-hour trace (arrivals following a day's curve: quiet at night, busy by day; two
thirds of prompts start with one of four shared system prefixes; with ``--sessions``, two thirds
of arrivals open a two- to four-turn session with think time instead of a single request) is
replayed with ``bench.replay`` through ``sim.backend()`` on a
virtual clock (``hybrid.simulate``), against a simulator with a prefix cache, 64 slots and
``max_concurrency=256``.  Printed: requests, sessions, real seconds, requests per real second,
the virtual wall, the process's peak memory (``ru_maxrss``, and its rise over the trace alone:
``tracemalloc`` would slow the run several times over), the run's flags.

Goal (issue 34): 200,000 requests in under 60 s of real time on the 2-core machine; 1,000,000 is
recorded.

    .venv/bin/python benchmarks/replay_day.py [--requests 200000] [--sessions]
"""

from __future__ import annotations

import argparse
import math
import random
import resource
import time

import hybrid
from hybrid import Orchestrator, bench, sim, workload
from hybrid.provenance import machine_info

DAY_S = 24 * 3600.0


def day_trace(requests: int, *, sessions: bool = False, seed: int = 0) -> workload.Workload:
    """``requests`` requests over a day, more by day than by night (see the module docstring)."""
    rng = random.Random(seed)
    made: list[workload.Request] = []
    session = 0
    while len(made) < requests:
        # a day's curve: rate proportional to 1.2 - cos(2 pi t / day), drawn by rejection
        t = rng.uniform(0, DAY_S)
        if rng.uniform(0, 2.2) > 1.2 - math.cos(2 * math.pi * t / DAY_S):
            continue
        turns = rng.randint(2, 4) if sessions and rng.random() < 2 / 3 else 1
        prefix = f"system-{rng.randrange(4)}" if rng.random() < 2 / 3 else None
        for turn in range(1, min(turns, requests - len(made)) + 1):
            made.append(
                workload.Request(
                    t=t,
                    name=f"s{session}/{turn}" if turns > 1 else f"r{session}",
                    prompt_tokens=rng.randint(40, 120),
                    prefix=prefix,
                    prefix_tokens=32 if prefix else 0,
                    session=f"s{session}" if turns > 1 else None,
                    turn=turn,
                    max_tokens=rng.randint(16, 64),
                    think_s=rng.uniform(2, 30) if turn > 1 else 0.0,
                )
            )
        session += 1
    made.sort(key=lambda r: r.t)
    return workload.Workload(tuple(made), source="a synthetic day")


async def study(trace: workload.Workload) -> hybrid.RunResult:
    profile = sim.ModelProfile(ttft_s=0.2, prompt_tps=4000, completion_tps=60, prefix_cache_tokens=20_000)
    config = sim.SimConfig(seed=1, slots=64, profiles={"sim-small": profile})
    async with Orchestrator(sim.backend(config), max_concurrency=256, progress=False) as orch:
        return await bench.replay(orch, trace)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--sessions", action="store_true", help="multi-turn sessions (see the docstring)")
    args = parser.parse_args()
    built = time.perf_counter()
    trace = day_trace(args.requests, sessions=args.sessions)
    built = time.perf_counter() - built
    before = _max_rss_mib()
    start = time.perf_counter()
    run = hybrid.run_sync(hybrid.simulate(study, trace))
    real_s = time.perf_counter() - start
    print(f"machine: {machine_info()}")
    print(f"trace: {len(trace)} requests, {len(trace.sessions())} sessions, built in {built:.1f} s")
    print(f"replayed in {real_s:.1f} s real ({len(trace) / real_s:,.0f} requests per real second)")
    print(f"virtual wall {run.metrics.wall_s / 3600:.2f} h; {run.metrics.succeeded} ok; flags {run.flags or 'none'}")
    cached = sum(r.usage.cached_prompt_tokens for r in run.results)
    print(f"prompt tokens {run.metrics.prompt_tokens:,}, of them from the prefix cache {cached:,}")
    peak = _max_rss_mib()
    print(f"peak memory (max RSS) {peak:,.0f} MiB, {peak - before:,.0f} MiB above the trace alone")


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
