"""The simulator's CPU per request, this source tree against another, side by side in one run.

A change to the simulator is judged by its own cost, not by a wall rate that the client sets: this
script runs the simulator process (``hybrid sim --uvloop``) from each tree in turn, alternating
rounds so the machine's drift hits both alike, with the same client (this tree's HTTPBackend on
uvloop, 20,000 distinct prompts at time scale 0, 64 in flight), and prints each side's CPU per
request (psutil, the child process) and the client's CPU per call.  Make the other tree with
``git worktree add /tmp/old <commit>``.

    .venv/bin/python benchmarks/sim_cost.py /tmp/old [--requests 20000] [--rounds 4]
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import psutil
from side_by_side import HERE, trees_from_arguments

from hybrid import HTTPBackend, Orchestrator, Query, run_sync, sim


async def measure(tree: Path, requests: int) -> tuple[float, float]:
    """Server CPU per request and client CPU per call (ms), the simulator run from ``tree``."""
    # `python -m hybrid` puts the working directory first on sys.path, then PYTHONPATH.
    os.environ["PYTHONPATH"] = str(tree)
    os.chdir(tree)
    queries = [Query(f"q{i}", f"Question {i}: one word.") for i in range(requests)]
    async with sim.serve_process(sim.SimConfig(seed=1, time_scale=0.0), uvloop=True) as server:
        backend = HTTPBackend(base_url=server.url, api_key=server.api_key, model="sim-small")
        child = psutil.Process(server.pid)
        async with Orchestrator(backend, max_concurrency=64, timeout=None, progress=False) as orch:
            await orch.run([Query("warm", f"warm-up {i}") for i in range(500)])
            server_cpu, client_cpu = sum(child.cpu_times()[:2]), time.process_time()
            run = await orch.run(queries)
            server_cpu = sum(child.cpu_times()[:2]) - server_cpu
            client_cpu = time.process_time() - client_cpu
    assert run.metrics.succeeded == requests, "the simulator answered an error"
    return server_cpu / requests * 1000, client_cpu / requests * 1000


def main() -> None:
    args, trees = trees_from_arguments(__doc__.splitlines()[0], rounds=4)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    try:
        for _ in range(args.rounds):
            for name, tree in trees.items():
                samples[name].append(run_sync(measure(tree, args.requests), uvloop=True))
    finally:
        os.environ.pop("PYTHONPATH", None)
        os.chdir(HERE)
    medians = {name: statistics.median(s for s, _ in runs) for name, runs in samples.items()}
    for name, runs in samples.items():
        print(
            f"{name:>12}: simulator {medians[name]:.3f} ms CPU per request (samples "
            f"{', '.join(f'{s:.3f}' for s, _ in runs)}); client {statistics.median(c for _, c in runs):.3f} ms per call"
        )
    other = str(args.other)
    print(f"the other tree's simulator / this tree's: {medians[other] / medians['this tree']:.2f}x the CPU per request")


if __name__ == "__main__":
    main()
