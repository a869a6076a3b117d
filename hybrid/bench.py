"""The benchmark harness: sequential vs threads vs gather, concurrency sweeps, open-loop load, peers.

Every function keeps raw samples (one row per repeat, per-query latencies in a column) and derives
the summary from them, so a noisy repeat is visible rather than averaged away.  Modes and peers are
measured alternately within each repeat, so drift on a shared machine hits them all alike.

* :func:`compare` — the same queries in each mode, ``repeats`` times; speedup vs sequential.
* :func:`sweep` — the same queries at each ``max_concurrency``; shows the knee where the server's
  slots (or a rate limit) run out, with efficiency against the ideal.
* :func:`open_loop` — Poisson arrivals at a request rate, as real traffic arrives; queue time grows
  as the rate nears capacity.
* :func:`peers` — the kit against what a user would write by hand (raw ``AsyncOpenAI`` + gather on
  either transport, a raw aiohttp loop, a thread pool over the sync SDK, ``langchain-openai``).
* :func:`run_suites` — what ``hybrid bench`` runs; writes CSV/JSON and plots under
  ``benchmarks/results/`` with machine info and the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import openai
import orjson
import pandas as pd

from hybrid import plots
from hybrid.backends import Backend, HTTPBackend, OpenAIBackend
from hybrid.errors import AllQueriesFailed
from hybrid.orchestrator import Orchestrator
from hybrid.provenance import machine_info
from hybrid.query import Query
from hybrid.results import RunResult

SUITES = ("scenario", "sweep", "peers")


def make_queries(n: int, *, prefix: str = "q", stream: bool = False, max_tokens: int | None = None) -> list[Query]:
    """``n`` distinct short queries (distinct prompts, so the simulator varies its answers)."""
    return [
        Query(
            f"{prefix}{i}",
            f"Benchmark question {i}: summarise item {i} in two sentences.",
            stream=stream,
            max_tokens=max_tokens,
        )
        for i in range(n)
    ]


def run_row(run: RunResult, **labels: Any) -> dict[str, Any]:
    """One raw sample: a run's metrics as a flat row, plus its per-query latencies."""
    m = run.metrics
    return {
        **labels,
        "queries": m.queries,
        "succeeded": m.succeeded,
        "failed": m.failed,
        "wall_s": m.wall_s,
        "throughput_qps": m.throughput_qps,
        "p50_latency_s": m.p50_latency_s,
        "p95_latency_s": m.p95_latency_s,
        "p99_latency_s": m.p99_latency_s,
        "mean_queue_s": m.mean_queue_s,
        "mean_ttft_s": m.mean_ttft_s,
        "retries": m.retries,
        "cpu_per_call_ms": m.cpu_per_call_ms,
        "parallel_efficiency": m.parallel_efficiency,
        "ideal_efficiency": m.ideal_efficiency,
        "percent_of_ideal": m.percent_of_ideal,
        "prompt_tokens": m.prompt_tokens,
        "completion_tokens": m.completion_tokens,
        "total_tokens": m.total_tokens,
        "completion_tokens_per_s": m.completion_tokens / m.wall_s if m.wall_s > 0 else 0.0,
        "latencies": tuple(r.latency_s for r in run.results),
    }


async def run_keeping_failures(orch: Orchestrator, queries: Sequence[Query], mode: str = "gather") -> RunResult:
    """``orch.run``, returning the run even when every query failed (a measurement keeps its rows)."""
    try:
        return await orch.run(queries, mode=mode)  # type: ignore[arg-type]
    except AllQueriesFailed as exc:
        return exc.run


async def compare(
    orch: Orchestrator,
    queries: Sequence[Query],
    *,
    modes: Sequence[str] = ("sequential", "threads", "gather"),
    repeats: int = 3,
) -> pd.DataFrame:
    """Each mode ``repeats`` times, alternating; one row per (repeat, mode) with ``speedup`` vs
    the median sequential wall (NaN if sequential was not measured)."""
    if type(orch.backend).complete_blocking is Backend.complete_blocking:
        modes = [m for m in modes if m != "threads"]
    rows = [
        run_row(await run_keeping_failures(orch, queries, mode), mode=mode, repeat=repeat)
        for repeat in range(repeats)
        for mode in modes
    ]
    frame = pd.DataFrame(rows)
    sequential = frame.loc[frame["mode"] == "sequential", "wall_s"]
    frame["speedup"] = sequential.median() / frame["wall_s"] if len(sequential) else float("nan")
    return frame


def summarize(frame: pd.DataFrame, by: str = "mode") -> pd.DataFrame:
    """Median of the raw samples per group (``mode``, ``concurrency``, ``peer``...)."""
    numeric = frame.drop(columns=["latencies", "repeat"], errors="ignore").select_dtypes("number")
    return numeric.groupby(frame[by], sort=False).median()


async def sweep(
    backend: Backend,
    queries: Sequence[Query],
    *,
    levels: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
    repeats: int = 1,
    **orchestrator: Any,
) -> pd.DataFrame:
    """Run the same queries at each concurrency level; one row per (repeat, level)."""
    rows = []
    for repeat in range(repeats):
        for level in levels:
            async with Orchestrator(backend, max_concurrency=level, **orchestrator) as orch:
                run = await run_keeping_failures(orch, queries, "gather")
            rows.append(run_row(run, concurrency=level, repeat=repeat))
    frame = pd.DataFrame(rows)
    frame["speedup"] = frame.loc[frame["concurrency"] == min(levels), "wall_s"].median() / frame["wall_s"]
    return frame


async def open_loop(orch: Orchestrator, queries: Sequence[Query], *, rate_qps: float, seed: int = 0) -> pd.DataFrame:
    """Submit queries at Poisson arrival times (mean ``rate_qps``); one row per query.

    Unlike ``run`` (a closed batch), arrivals do not wait for earlier answers, so queue time shows
    what real traffic at that rate would see.
    """
    rng = random.Random(seed)
    start = time.perf_counter()

    async def arrive(query: Query, at: float) -> dict[str, Any]:
        await asyncio.sleep(max(0.0, at - (time.perf_counter() - start)))
        run = await run_keeping_failures(orch, [query], "gather")
        r = run.results[0]
        return {
            "name": r.name,
            "arrival_s": at,
            "ok": r.ok,
            "latency_s": r.latency_s,
            "queue_s": r.queue_s,
            "attempts": r.attempts,
            "error_kind": None if r.error is None else r.error.kind,
        }

    at, arrivals = 0.0, []
    for query in queries:
        at += rng.expovariate(rate_qps)
        arrivals.append(arrive(query, at))
    frame = pd.DataFrame(await asyncio.gather(*arrivals))
    frame.attrs["rate_qps"] = rate_qps
    frame.attrs["wall_s"] = time.perf_counter() - start
    return frame


# -- peers ------------------------------------------------------------------------------------
PeerRunner = Callable[[str, str, str, Sequence[Query], int], Awaitable[int]]


async def _peer_kit(
    backend_cls: type[Backend], url: str, key: str, model: str, queries: Sequence[Query], c: int
) -> int:
    async with Orchestrator(
        backend_cls(base_url=url, api_key=key, model=model), max_concurrency=c, timeout=None
    ) as orch:
        run = await run_keeping_failures(orch, queries, "gather")
    return run.metrics.succeeded


#: A hand-written client's call for one query: True when the server answered.
HandCall = Callable[[Query], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class HandRun:
    """One batch through a hand-written loop: answers, wall, and each answered query's latency
    (timed inside the semaphore, so without its wait for a slot, as the kit times ``latency_s``)."""

    succeeded: int
    wall_s: float
    latencies: list[float]


async def by_hand(call: HandCall, queries: Sequence[Query], c: int) -> HandRun:
    """What a user writes by hand around a client: a semaphore of ``c`` and ``gather``."""
    semaphore = asyncio.Semaphore(c)

    async def one(q: Query) -> float | None:
        async with semaphore:
            t0 = time.perf_counter()
            answered = await call(q)
            return time.perf_counter() - t0 if answered else None

    start = time.perf_counter()
    results = await asyncio.gather(*(one(q) for q in queries), return_exceptions=True)
    wall = time.perf_counter() - start
    latencies = [r for r in results if isinstance(r, float)]
    return HandRun(succeeded=len(latencies), wall_s=wall, latencies=latencies)


@contextlib.asynccontextmanager
async def raw_openai(url: str, key: str, model: str, *, aio: bool) -> AsyncIterator[HandCall]:
    """One ``AsyncOpenAI`` as a user makes it (httpx transport, or the SDK's aiohttp one)."""
    http_client = openai.DefaultAioHttpClient() if aio else None
    async with openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, http_client=http_client) as client:

        async def call(q: Query) -> bool:
            await client.chat.completions.create(model=model, messages=q.messages())  # type: ignore[arg-type]
            return True

        yield call


@contextlib.asynccontextmanager
async def raw_aiohttp(url: str, key: str, model: str, c: int) -> AsyncIterator[HandCall]:
    """The floor: bare aiohttp POSTs on one session, no parsing beyond reading the body."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c), headers=headers) as session:

        async def call(q: Query) -> bool:
            body = orjson.dumps({"model": model, "messages": q.messages()})
            async with session.post(url + "/chat/completions", data=body) as response:
                await response.read()
                return response.status == 200

        yield call


async def _peer_raw_openai(url: str, key: str, model: str, queries: Sequence[Query], c: int, *, aio: bool) -> int:
    async with raw_openai(url, key, model, aio=aio) as call:
        return (await by_hand(call, queries, c)).succeeded


async def _peer_raw_aiohttp(url: str, key: str, model: str, queries: Sequence[Query], c: int) -> int:
    async with raw_aiohttp(url, key, model, c) as call:
        return (await by_hand(call, queries, c)).succeeded


def _threads_blocking(url: str, key: str, model: str, queries: Sequence[Query], c: int) -> int:
    limits = httpx2.Limits(max_connections=c, max_keepalive_connections=c)
    with openai.OpenAI(
        base_url=url, api_key=key, max_retries=0, http_client=openai.DefaultHttpxClient(limits=limits)
    ) as client:

        def one(q: Query) -> bool:
            try:
                client.chat.completions.create(model=model, messages=q.messages())  # type: ignore[arg-type]
            except openai.OpenAIError:
                return False
            return True

        with ThreadPoolExecutor(max_workers=c) as pool:
            return sum(pool.map(one, queries))


async def _peer_threads(url: str, key: str, model: str, queries: Sequence[Query], c: int) -> int:
    """The seeds' legacy pattern: ThreadPoolExecutor over the sync SDK (run off the loop)."""
    return await asyncio.to_thread(_threads_blocking, url, key, model, queries, c)


async def _peer_langchain(url: str, key: str, model: str, queries: Sequence[Query], c: int) -> int:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=url, api_key=key, model=model, max_retries=0)  # type: ignore[arg-type]
    replies = await llm.abatch([q.prompt for q in queries], config={"max_concurrency": c}, return_exceptions=True)
    return sum(not isinstance(r, BaseException) for r in replies)


def available_peers() -> dict[str, PeerRunner]:
    """The peers this installation can run (``langchain`` only with the ``peers`` extra)."""
    peers: dict[str, PeerRunner] = {
        "kit OpenAIBackend": lambda *a: _peer_kit(OpenAIBackend, *a),
        "kit HTTPBackend": lambda *a: _peer_kit(HTTPBackend, *a),
        "raw AsyncOpenAI (httpx)": lambda *a: _peer_raw_openai(*a, aio=False),
        "raw AsyncOpenAI (aiohttp)": lambda *a: _peer_raw_openai(*a, aio=True),
        "raw aiohttp loop": _peer_raw_aiohttp,
        "threads + sync OpenAI": _peer_threads,
    }
    try:
        import langchain_openai  # noqa: F401
    except ImportError:
        return peers
    peers["langchain ChatOpenAI.abatch"] = _peer_langchain
    return peers


async def peers(
    url: str,
    api_key: str,
    model: str,
    queries: Sequence[Query],
    *,
    concurrency: int = 64,
    repeats: int = 3,
    only: Sequence[str] | None = None,
    fetch_stats: Callable[[], Awaitable[dict[str, Any]]] | None = None,
) -> pd.DataFrame:
    """Every peer on the same workload, alternating, ``repeats`` times; one row per (repeat, peer).

    ``calls_per_s`` and client ``cpu_per_call_ms`` come from wall time and this process's CPU time
    (run the server in another process so its CPU is not counted).  ``ratio_to_kit`` divides each
    peer's median calls/s by that of ``kit OpenAIBackend``.
    """
    runners = {name: run for name, run in available_peers().items() if only is None or name in only}
    rows = []
    for repeat in range(repeats):
        for name, runner in runners.items():
            wall0, cpu0 = time.perf_counter(), time.process_time()
            ok = await runner(url, api_key, model, queries, concurrency)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            rows.append(
                {
                    "peer": name,
                    "repeat": repeat,
                    "queries": len(queries),
                    "succeeded": ok,
                    "wall_s": wall,
                    "calls_per_s": len(queries) / wall,
                    "cpu_per_call_ms": cpu / len(queries) * 1000,
                }
            )
    frame = pd.DataFrame(rows)
    medians = frame.groupby("peer")["calls_per_s"].median()
    reference = medians.get("kit OpenAIBackend", medians.iloc[0])
    frame["ratio_to_kit"] = frame["peer"].map(medians) / reference
    return frame


# -- suites -----------------------------------------------------------------------------------
async def run_suites(names: Sequence[str], *, out_dir: Path, quick: bool = False) -> int:
    """``hybrid bench``: run the named suites against a simulator process; write results and plots."""
    from hybrid.sim.config import ModelProfile, SimConfig
    from hybrid.sim.serve import serve_process

    unknown = [n for n in names if n not in SUITES]
    if unknown:
        print(f"hybrid bench: unknown suite(s) {unknown}; choose from {', '.join(SUITES)}")
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = machine_info()
    written: list[Path] = []

    def save(name: str, frame: pd.DataFrame, extra: dict[str, Any] | None = None) -> None:
        csv = out_dir / f"{name}.csv"
        frame.drop(columns=["latencies"], errors="ignore").to_csv(csv, index=False)
        raw = frame.to_dict(orient="records")
        (out_dir / f"{name}.json").write_text(
            json.dumps({"machine": meta, **(extra or {}), "samples": raw}, indent=1, default=str)
        )
        written.extend([csv, out_dir / f"{name}.json"])

    if "scenario" in names:
        from hybrid.demo import compare_runs, measure

        scale = 0.05 if quick else 0.1
        legacy, hybrid, _ = await measure(time_scale=scale)
        summary = compare_runs(legacy, hybrid, time_scale=scale)
        save("scenario", pd.DataFrame([{k: v for k, v in summary.items() if not isinstance(v, list)}]))
        plots.timeline({"legacy": legacy, "hybrid": hybrid}).savefig(out_dir / "scenario_timeline.png", dpi=60)
        written.append(out_dir / "scenario_timeline.png")
        print(f"scenario: speedup {summary['speedup']:.2f}x, token reduction {summary['token_reduction']:.1%}")

    if "sweep" in names:
        # A server with 8 slots and 0.2 s per answer: throughput rises until 8 in flight, then queues.
        profile = {"sim-small": ModelProfile(ttft_s=2.0, prompt_tps=1e6, completion_tps=1e6, jitter=0.05)}
        config = SimConfig(seed=1, time_scale=0.1, slots=8, profiles=profile)
        async with serve_process(config) as server:
            backend = HTTPBackend(base_url=server.url, api_key=server.api_key, model="sim-small")
            frame = await sweep(backend, make_queries(32 if quick else 64), levels=(1, 2, 4, 8, 16, 32), timeout=None)
        save("sweep", frame, {"server": "8 slots, 0.2 s per answer"})
        plots.efficiency(frame, title="Concurrency sweep: a server with 8 slots").savefig(
            out_dir / "sweep_efficiency.png", dpi=60
        )
        written.append(out_dir / "sweep_efficiency.png")
        print(summarize(frame, "concurrency")[["wall_s", "throughput_qps", "parallel_efficiency", "percent_of_ideal"]])

    if "peers" in names:
        async with serve_process(SimConfig(seed=1, time_scale=0.0)) as server:
            frame = await peers(
                server.url,
                server.api_key,
                "sim-small",
                make_queries(300 if quick else 2000),
                concurrency=64,
                repeats=1 if quick else 3,
            )
        save("peers", frame, {"workload": "time scale 0, concurrency 64, server in its own process"})
        table = frame.groupby("peer", sort=False)[["calls_per_s", "cpu_per_call_ms", "ratio_to_kit"]].median()
        print(table.round(3).to_string())
    print("Wrote:", *(f"  {p}" for p in written), sep="\n")
    return 0
