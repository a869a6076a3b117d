"""The benchmark harness: sequential vs threads vs gather, concurrency sweeps, open-loop load.

Every function keeps raw samples (one row per repeat, per-query latencies in a column) and derives
the summary from them, so a noisy repeat is visible rather than averaged away.  Modes and peers are
measured alternately within each repeat, so drift on a shared machine hits them all alike.

* :func:`compare` — the same queries in each mode, ``repeats`` times; speedup vs sequential.
* :func:`sweep` — the same queries at each ``max_concurrency``; shows the knee where the server's
  slots (or a rate limit) run out, with efficiency against the ideal.
* :func:`open_loop` — Poisson arrivals at a request rate, as real traffic arrives; queue time grows
  as the rate nears capacity.

Two siblings: :mod:`hybrid.bench.peers` (the kit against hand-written clients) and
:mod:`hybrid.bench.suites` (what ``hybrid bench`` runs and writes).

Timings come from the runs themselves (the loop's clock); a measurement keeps a run even when every
query failed (``raise_if_all_failed=False``), since its rows are the data.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import pandas as pd

from hybrid.backends import Backend
from hybrid.errors import ConfigError
from hybrid.orchestrator import Orchestrator
from hybrid.query import Query
from hybrid.results import RunResult


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


def _refuse_cache(cached: bool, allowed: bool) -> None:
    if cached and not allowed:
        raise ConfigError(
            "A benchmark with a response cache measures the cache: cached rows take no time and are left out "
            "of the timings. Use an orchestrator without cache=, or pass allow_cache=True if that is the point."
        )


async def compare(
    orch: Orchestrator,
    queries: Sequence[Query],
    *,
    modes: Sequence[str] = ("sequential", "threads", "gather"),
    repeats: int = 3,
    allow_cache: bool = False,
) -> pd.DataFrame:
    """Each mode ``repeats`` times, alternating; one row per (repeat, mode) with ``speedup`` vs
    the median sequential wall (NaN if sequential was not measured).  An orchestrator with a
    response cache is refused unless ``allow_cache=True``: cached rows take no time, so every
    repeat after the first would measure the cache, not the modes."""
    _refuse_cache(orch.cache is not None, allow_cache)
    if not orch.backend.supports_threads:
        modes = [m for m in modes if m != "threads"]
    rows = [
        run_row(await orch.run(queries, mode=mode, raise_if_all_failed=False), mode=mode, repeat=repeat)
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
    allow_cache: bool = False,
    **orchestrator: Any,
) -> pd.DataFrame:
    """Run the same queries at each concurrency level; one row per (repeat, level).  A response
    cache in ``orchestrator`` is refused unless ``allow_cache=True`` (see :func:`compare`)."""
    _refuse_cache(bool(orchestrator.get("cache")), allow_cache)
    rows = []
    for repeat in range(repeats):
        for level in levels:
            async with Orchestrator(backend, max_concurrency=level, **orchestrator) as orch:
                run = await orch.run(queries, raise_if_all_failed=False)
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
    clock = asyncio.get_running_loop().time
    start = clock()

    async def arrive(query: Query, at: float) -> dict[str, Any]:
        await asyncio.sleep(max(0.0, at - (clock() - start)))
        arrived = clock() - start
        run = await orch.run([query], raise_if_all_failed=False)
        r = run.results[0]
        return {
            "name": r.name,
            "arrival_s": arrived,
            "scheduled_s": at,
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
    frame.attrs["wall_s"] = clock() - start
    return frame
