"""uvloop against asyncio's own loop, side by side in one run: the simulator and the kit's client.

For each loop (asyncio's default, then uvloop) this script starts the simulator in its own process
on that loop (``sim.serve_process(..., uvloop=...)``, i.e. ``hybrid sim --uvloop``) and runs the
kit's ``HTTPBackend`` client on the same kind of loop (``run_sync(..., uvloop=...)``), at time
scale 0 (answers take no simulated time) and concurrency 64, and reports:

* the client's calls/s and CPU per call (this process);
* the simulator's CPU per request (its process, from psutil) and so the requests/s it can serve on
  one core: ``1 / CPU per request``.

Goal: the simulator serves at least twice what the fastest client in the kit sends, so a client
benchmark never measures the simulator.  On a 2-core machine the client and the server share the
cores, so capacity is measured as CPU per request, not as a wall-clock race.

    .venv/bin/python benchmarks/uvloop_speed.py [--requests 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import psutil

from hybrid import HTTPBackend, Orchestrator, Query, run_sync, sim
from hybrid.provenance import machine_info


async def measure(requests: int, uvloop: bool) -> dict[str, float]:
    queries = [Query(f"q{i}", f"Question {i}: one word.") for i in range(requests)]
    async with sim.serve_process(sim.SimConfig(seed=1, time_scale=0.0), uvloop=uvloop) as server:
        backend = HTTPBackend(base_url=server.url, api_key=server.api_key, model="sim-small")
        child = psutil.Process(server.pid)
        async with Orchestrator(backend, max_concurrency=64, timeout=None, progress=False) as orch:
            await orch.run(queries[:500])  # warm up connections and caches
            server_cpu = sum(child.cpu_times()[:2])
            client_cpu, started = time.process_time(), time.perf_counter()
            run = await orch.run(queries)
            wall = time.perf_counter() - started
            client_cpu = time.process_time() - client_cpu
            server_cpu = sum(child.cpu_times()[:2]) - server_cpu
    assert run.metrics.succeeded == requests, "the simulator answered an error"
    return {
        "client_calls_per_s": requests / wall,
        "client_cpu_per_call_ms": client_cpu / requests * 1000,
        "server_cpu_per_request_ms": server_cpu / requests * 1000,
        "server_capacity_per_core": requests / server_cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(machine_info())
    samples: dict[str, list[dict[str, float]]] = {"asyncio": [], "uvloop": []}
    for _ in range(args.rounds):  # alternate, so drift on a shared machine hits both alike
        for name in samples:
            samples[name].append(run_sync(measure(args.requests, name == "uvloop"), uvloop=name == "uvloop"))
    medians = {name: {k: statistics.median(s[k] for s in runs) for k in runs[0]} for name, runs in samples.items()}
    for name, m in medians.items():
        print(
            f"{name:8}: client {m['client_calls_per_s']:7.0f} calls/s ({m['client_cpu_per_call_ms']:.3f} ms CPU per "
            f"call); simulator {m['server_cpu_per_request_ms']:.3f} ms CPU per request = "
            f"{m['server_capacity_per_core']:7.0f} requests/s per core"
        )
    fastest_client = max(m["client_calls_per_s"] for m in medians.values())
    for name, m in medians.items():
        print(
            f"simulator on {name}: serves {m['server_capacity_per_core'] / fastest_client:.2f}x the fastest client "
            f"({fastest_client:.0f} calls/s); goal >= 2x"
        )
    # Round by round (each round measures both loops within a minute), so a reader sees the spread,
    # not only the medians: the goal holds only if it holds in the worst round.
    for name, runs in samples.items():
        ratios = [
            run["server_capacity_per_core"] / max(s[i]["client_calls_per_s"] for s in samples.values())
            for i, run in enumerate(runs)
        ]
        listed = ", ".join(f"{r:.2f}x" for r in ratios)
        print(f"simulator on {name}, round by round: {listed} (worst {min(ratios):.2f}x)")
    for key in ("client_calls_per_s", "server_capacity_per_core"):
        print(f"uvloop / asyncio, {key}: {medians['uvloop'][key] / medians['asyncio'][key]:.2f}x")


if __name__ == "__main__":
    main()
