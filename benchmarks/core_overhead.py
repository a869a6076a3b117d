"""The async core, measured side by side against what a user would write by hand.

Run with the simulator in its own process:

1. Calls/s at time scale 0, concurrency 64 (alternating, median of repeats):
   ``OpenAIBackend`` through the orchestrator vs a raw ``AsyncOpenAI()`` + semaphore + gather
   (goal >= 1.5x); ``HTTPBackend`` through the orchestrator vs a raw aiohttp POST loop (goal >= 0.8x).
2. Orchestration CPU per query, with a backend that answers instantly (goal <= 50 us).
3. Percent of ideal at 0.2 s simulated latency, 1,000 queries, ``max_concurrency=256`` (ideal wall
   0.8 s) for both backends, the raw SDK and a raw aiohttp loop (goal: HTTPBackend >= 75% of the
   nominal 0.8 s).
4. 10,000 queries at 1 s simulated latency, ``max_concurrency=1000``: no loss, no pool or connect
   timeouts.

    .venv/bin/python benchmarks/core_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager

from hybrid import HTTPBackend, OpenAIBackend, Orchestrator, Query, sim
from hybrid.backends import Backend
from hybrid.bench import make_queries
from hybrid.bench.peers import HandCall, by_hand, peers, raw_aiohttp, raw_openai
from hybrid.metrics import ideal_wall
from hybrid.process import free_port, stop
from hybrid.provenance import machine_info
from hybrid.query import Completion, Usage
from hybrid.sim import ModelProfile, SimConfig


class InstantBackend:
    """Answers at once without I/O, so what remains is the orchestrator's own cost (a bare
    implementation of the Backend protocol: no scripting or call log, unlike hybrid.testing.FakeBackend)."""

    _ANSWER = Completion(text="ok", usage=Usage(prompt_tokens=1, completion_tokens=1), model="instant")
    model = "instant"
    supports_threads = False

    async def open(self, *, max_connections: int = 100, query_timeout: float | None = None) -> None:
        return None

    async def complete(self, query: Query) -> Completion:
        return self._ANSWER

    def complete_blocking(self, query: Query) -> Completion:
        return self._ANSWER

    async def aclose(self) -> None:
        return None


async def calls_per_second(requests: int, repeats: int) -> None:
    async with sim.serve_process(SimConfig(seed=1, time_scale=0.0)) as server:
        frame = await peers(
            server.url,
            server.api_key,
            "sim-small",
            make_queries(requests),
            concurrency=64,
            repeats=repeats,
            only=["kit OpenAIBackend", "raw AsyncOpenAI (httpx)", "kit HTTPBackend", "raw aiohttp loop"],
        )
    table = frame.groupby("peer", sort=False)[["calls_per_s", "cpu_per_call_ms"]].median()
    print(table.round(3).to_string())
    sdk = table.loc["kit OpenAIBackend", "calls_per_s"] / table.loc["raw AsyncOpenAI (httpx)", "calls_per_s"]
    http = table.loc["kit HTTPBackend", "calls_per_s"] / table.loc["raw aiohttp loop", "calls_per_s"]
    print(f"OpenAIBackend / raw AsyncOpenAI() = {sdk:.2f}x (goal >= 1.5x: {_verdict(sdk >= 1.5)})")
    print(f"HTTPBackend / raw aiohttp loop    = {http:.2f}x (goal >= 0.8x: {_verdict(http >= 0.8)})")


async def orchestration_cpu(n: int) -> None:
    async with Orchestrator(InstantBackend(), max_concurrency=64, timeout=30.0) as orch:
        queries = make_queries(n)
        await orch.run(queries[:1000])
        cpu0 = time.process_time()
        run = await orch.run(queries)
        cpu = time.process_time() - cpu0
    per_query_us = cpu / n * 1e6
    print(
        f"orchestration CPU per query: {per_query_us:.1f} us over {n:,} queries "
        f"(goal <= 50 us: {_verdict(per_query_us <= 50)}); {run.metrics.succeeded:,} ok"
    )


#: (wall, per-query latencies) of a client's first run on fresh connections, then its second run.
ColdWarm = list[tuple[float, list[float]]]


async def kit_runs(backend: Backend, queries: Sequence[Query], c: int) -> ColdWarm:
    """Two runs through one orchestrator: the first opens its connections, the second reuses them."""
    async with Orchestrator(backend, max_concurrency=c, timeout=60.0) as orch:
        runs = [await orch.run(queries) for _ in range(2)]
    return [(run.metrics.wall_s, [r.latency_s for r in run.results]) for run in runs]


async def hand_runs(client: AbstractAsyncContextManager[HandCall], queries: Sequence[Query], c: int) -> ColdWarm:
    """A hand-written semaphore + gather loop, run twice on one client."""
    async with client as call:
        runs = [await by_hand(call, queries, c) for _ in range(2)]
    return [(run.wall_s, run.latencies) for run in runs]


def ideal_peers(url: str, key: str, model: str, *, sdk: bool) -> dict[str, Callable[..., Awaitable[ColdWarm]]]:
    """The clients compared at 0.2 s: both backends and the raw loops (the SDK ones when ``sdk``)."""
    peers_: dict[str, Callable[..., Awaitable[ColdWarm]]] = {
        "HTTPBackend": lambda q, c: kit_runs(HTTPBackend(base_url=url, api_key=key, model=model), q, c),
        "raw aiohttp loop": lambda q, c: hand_runs(raw_aiohttp(url, key, model, c), q, c),
    }
    if sdk:
        peers_["OpenAIBackend"] = lambda q, c: kit_runs(OpenAIBackend(base_url=url, api_key=key, model=model), q, c)
        peers_["raw AsyncOpenAI"] = lambda q, c: hand_runs(raw_openai(url, key, model, aio=False), q, c)
    return peers_


async def compare_to_ideal(
    peers_: dict[str, Callable[..., Awaitable[ColdWarm]]], n: int, concurrency: int, repeats: int, label: str
) -> dict[str, float]:
    """Run every peer ``repeats`` times, alternating, after one untimed warm-up run; print the median
    walls (cold: fresh connections; warm: the same client's second run) as percent of the nominal
    ideal and of the ideal for the peer's own latencies.  Returns the median cold wall per peer."""
    queries = make_queries(n)
    nominal = math.ceil(n / concurrency) * 0.2
    await next(iter(peers_.values()))(queries, concurrency)  # warm-up: code paths, the server's reply cache
    samples: dict[str, list[ColdWarm]] = {name: [] for name in peers_}
    for _ in range(repeats):
        for name, runs in peers_.items():
            samples[name].append(await runs(queries, concurrency))
    cold_walls: dict[str, float] = {}
    for name, runs_ in samples.items():
        line = [f"  {label}{name:<17}"]
        for which, kind in ((0, "cold"), (1, "warm")):
            walls = [r[which][0] for r in runs_]
            wall = statistics.median(walls)
            own = statistics.median(ideal_wall(r[which][1], concurrency) / r[which][0] for r in runs_)
            line.append(f"{kind} {wall:.2f}s = {nominal / wall:.0%} nominal, {own:.0%} own")
            if kind == "cold":
                cold_walls[name] = wall
        spread = ", ".join(f"{r[0][0]:.2f}" for r in runs_)
        print(" | ".join(line) + f" (cold samples {spread})")
    return cold_walls


async def percent_of_ideal(n: int, repeats: int, latency_s: float = 0.2, concurrency: int = 256) -> None:
    """Two views of "percent of ideal": the design's (same measured latencies, perfect scheduler)
    and the issue's nominal one (the server's 0.2 s per query, so ideal wall = ceil(n / c) x 0.2 s)."""
    profile = {"sim-small": ModelProfile(ttft_s=latency_s, prompt_tps=1e9, completion_tps=1e9, jitter=0.0)}
    config = SimConfig(seed=1, time_scale=1.0, slots=4096, profiles=profile)
    nominal = math.ceil(n / concurrency) * latency_s
    print(
        f"{n} queries at {latency_s} s, max_concurrency={concurrency}: nominal ideal wall {nominal:.2f} s; "
        f"medians of {repeats} alternating repeats"
    )
    async with sim.serve_process(config) as server:
        walls = await compare_to_ideal(
            ideal_peers(server.url, server.api_key, "sim-small", sdk=True), n, concurrency, repeats, ""
        )
    share = nominal / walls["HTTPBackend"]
    print(f"  HTTPBackend, fresh connections: {share:.0%} of nominal ideal (goal >= 75%: {_verdict(share >= 0.75)})")


BARE_SERVER = """
import asyncio, sys
from aiohttp import web
BODY = (b'{"id":"x","object":"chat.completion","created":0,"model":"m","choices":[{"index":0,"message":'
        b'{"role":"assistant","content":"hello there"},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}')
async def handler(request):
    await request.read()
    await asyncio.sleep(0.2)
    return web.Response(body=BODY, content_type="application/json")
app = web.Application()
app.router.add_post("/v1/chat/completions", handler)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


async def bare_server_floor(n: int, repeats: int, concurrency: int = 256) -> None:
    """The same 0.2 s x 1,000 run against a bare aiohttp server (a constant answer after 0.2 s),
    to separate the simulator's cost from the client's."""
    import sys

    port = free_port()
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", BARE_SERVER, str(port))
    try:
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        peers_ = ideal_peers(f"http://127.0.0.1:{port}/v1", "k", "m", sdk=False)
        await compare_to_ideal(peers_, n, concurrency, repeats, "bare server: ")
    finally:
        await stop(process)


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


async def ten_thousand(n: int, concurrency: int) -> None:
    profile = {"sim-small": ModelProfile(ttft_s=1.0, prompt_tps=1e9, completion_tps=1e9, jitter=0.05)}
    config = SimConfig(seed=1, time_scale=1.0, slots=concurrency * 2, profiles=profile)
    async with sim.serve_process(config) as server:
        backend = HTTPBackend(base_url=server.url, api_key=server.api_key, model="sim-small")
        async with Orchestrator(backend, max_concurrency=concurrency, timeout=120.0) as orch:
            run = await orch.run(make_queries(n))
        stats = await server.fetch_stats()
    kinds = run.to_frame()["error_kind"].value_counts().to_dict()
    m = run.metrics
    print(
        f"{n:,} queries at 1 s, max_concurrency={concurrency}: {m.succeeded:,} ok, {m.failed} failed {kinds}, "
        f"wall {m.wall_s:.1f}s (ideal {n / concurrency:.0f}s), {m.throughput_qps:.0f} q/s, peak in flight "
        f"{stats['peak_in_flight']}, loss: {n - len(run.results)}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    info = machine_info()
    print(f"machine: {info['cpu_model']}, {info['cpu_count']} cores; commit {info['commit']}\n")
    await calls_per_second(500 if args.quick else 3000, 1 if args.quick else 3)
    await orchestration_cpu(2000 if args.quick else 20000)
    await percent_of_ideal(1000, 2 if args.quick else 5)
    await bare_server_floor(1000, 2 if args.quick else 5)
    await ten_thousand(2000 if args.quick else 10000, 1000)


if __name__ == "__main__":
    asyncio.run(main())
