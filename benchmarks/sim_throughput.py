"""How fast is the simulator itself?  It must never be the bottleneck of a client benchmark.

The simulator runs in its own process (``sim.serve_process``); this script is the client, a raw
aiohttp loop.  Goals on a 2-core machine: >= 2,000 non-streaming requests/s at time scale 0 and
concurrency 64; 5,000 concurrent hung requests held under 300 MB of server RSS.

    .venv/bin/python benchmarks/sim_throughput.py [--requests 20000] [--hung 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
import orjson
import psutil

from hybrid import Query, sim
from hybrid.bench.peers import by_hand, raw_aiohttp
from hybrid.provenance import machine_info


async def throughput(requests: int, concurrency: int) -> tuple[float, float, float, float]:
    """Requests/s of a raw aiohttp loop against a simulator process at time scale 0, the server's
    and the client's CPU per request (ms), and the server's RSS.  The wall rate is the pair's: on
    two cores the client is usually the slower; the server's CPU per request is its own capacity."""
    query = Query("hello", "hello")
    async with (
        sim.serve_process(sim.SimConfig(seed=1, time_scale=0.0)) as server,
        raw_aiohttp(server.url, server.api_key, "sim-small", concurrency) as call,
    ):
        await by_hand(call, [query] * 500, concurrency)  # warm up connections and caches
        child = psutil.Process(server.pid)
        server_cpu, client_cpu = sum(child.cpu_times()[:2]), time.process_time()
        run = await by_hand(call, [query] * requests, concurrency)
        server_cpu = sum(child.cpu_times()[:2]) - server_cpu
        client_cpu = time.process_time() - client_cpu
        assert run.succeeded == requests, "the simulator answered an error"
        rss = child.memory_info().rss / 2**20
    return requests / run.wall_s, server_cpu / requests * 1000, client_cpu / requests * 1000, rss


async def hung(count: int) -> tuple[int, float, dict[str, object]]:
    """Hold ``count`` hung requests open at once; return how many were in flight and the server RSS."""
    config = sim.SimConfig(time_scale=0.0, faults=sim.Faults(hang=1.0))
    async with sim.serve_process(config) as server:
        base_rss = psutil.Process(server.pid).memory_info().rss / 2**20
        body = orjson.dumps({"model": "sim-small", "messages": [{"role": "user", "content": "hang"}]})
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one() -> None:
                async with session.post(server.url + "/chat/completions", data=body) as response:
                    await response.read()

            tasks = [asyncio.create_task(one()) for _ in range(count)]
            stats: dict[str, object] = {}
            for _ in range(600):
                await asyncio.sleep(0.1)
                stats = await server.fetch_stats()
                if stats["in_flight"] >= count:  # type: ignore[operator]
                    break
            rss = psutil.Process(server.pid).memory_info().rss / 2**20
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.5)
        after = await server.fetch_stats()
    print(
        f"  server RSS before {base_rss:.0f} MB; in flight after cancelling all: {after['in_flight']}, "
        f"disconnects counted: {after['disconnects']}"
    )
    return int(stats["in_flight"]), rss, after  # type: ignore[call-overload]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--hung", type=int, default=5000)
    args = parser.parse_args()
    info = machine_info()
    print(f"machine: {info['cpu_model']}, {info['cpu_count']} cores; commit {info['commit']}")
    rps, server_ms, client_ms, rss = await throughput(args.requests, args.concurrency)
    print(
        f"throughput: {rps:,.0f} requests/s at concurrency {args.concurrency}, time scale 0 "
        f"(goal >= 2,000: {'met' if rps >= 2000 else 'MISSED'}); server RSS {rss:.0f} MB"
    )
    print(
        f"  CPU per request: server {server_ms:.3f} ms ({1000 / server_ms:,.0f} requests/s per core), "
        f"raw aiohttp client {client_ms:.3f} ms"
    )
    held, rss, _ = await hung(args.hung)
    print(
        f"hung: {held:,} requests in flight at once, server RSS {rss:.0f} MB "
        f"(goal {args.hung:,} under 300 MB: {'met' if held >= args.hung and rss < 300 else 'MISSED'})"
    )


if __name__ == "__main__":
    asyncio.run(main())
