"""HTTPBackend's own CPU per call, this source tree against another, side by side in one run.

A change under ``HTTPBackend`` (its codec, its transport) is judged by the client's CPU per call,
not by a wall rate the server sets.  One simulator process (this tree's, ``--uvloop``, time scale
0) serves every round; each round runs the client in a fresh process from each tree in turn,
alternating so the machine's drift hits both alike.  The client calls ``backend.complete``
directly (64 in flight, distinct prompts, uvloop), so the orchestrator's cost is not in the
number, and the CPU is the client process's own (``time.process_time``).  Make the other tree with
``git worktree add /tmp/old <commit>``.

    .venv/bin/python benchmarks/http_backend_cost.py /tmp/old [--requests 20000] [--rounds 5]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from side_by_side import trees_from_arguments

from hybrid import run_sync, sim

#: The client, run from a tree: prints its CPU per call in microseconds.
CLIENT = """
import asyncio, json, sys, time
import uvloop
from hybrid import HTTPBackend, Query

url, key, requests = sys.argv[1], sys.argv[2], int(sys.argv[3])

async def main():
    backend = HTTPBackend(base_url=url, api_key=key, model="sim-small")
    await backend.open(max_connections=64, query_timeout=None)
    slots = asyncio.Semaphore(64)

    async def one(query):
        async with slots:
            return await backend.complete(query)

    try:
        await asyncio.gather(*(one(Query("warm", f"warm-up {i}")) for i in range(500)))
        queries = [Query(f"q{i}", f"Question {i}: one word.") for i in range(requests)]
        cpu = time.process_time()
        await asyncio.gather(*(one(query) for query in queries))
        cpu = time.process_time() - cpu
    finally:
        await backend.aclose()
    print(json.dumps({"us_per_call": cpu / requests * 1e6}))

uvloop.run(main())
"""


def measure(tree: Path, url: str, key: str, requests: int) -> float:
    """The client's CPU per call (µs), the kit imported from ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, url, key, str(requests)],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(json.loads(out.splitlines()[-1])["us_per_call"])


async def serve_and_measure(trees: dict[str, Path], requests: int, rounds: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in trees}
    async with sim.serve_process(sim.SimConfig(seed=1, time_scale=0.0), uvloop=True) as server:
        for number in range(rounds):
            for name, tree in trees.items():
                samples[name].append(measure(tree, server.url, server.api_key, requests))
            print(f"round {number + 1}: " + ", ".join(f"{name} {s[-1]:.1f} µs" for name, s in samples.items()))
    return samples


def main() -> None:
    args, trees = trees_from_arguments(__doc__.splitlines()[0], rounds=5)
    samples = run_sync(serve_and_measure(trees, args.requests, args.rounds))
    mine, other = samples["this tree"], samples[str(args.other)]
    ratios = [a / b for a, b in zip(mine, other, strict=True)]
    medians = f"this tree {statistics.median(mine):.1f} µs, other {statistics.median(other):.1f} µs"
    print(f"client CPU per call, median: {medians}")
    per_round = ", ".join(f"{r:.3f}" for r in ratios)
    print(f"ratio this/other per round: {per_round}; median {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
