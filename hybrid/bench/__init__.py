"""The benchmark harness: sequential vs threads vs gather, concurrency sweeps, open-loop load.

Every function keeps raw samples (one row per repeat, per-query latencies in a column) and derives
the summary from them, so a noisy repeat is visible rather than averaged away.  Modes and peers are
measured alternately within each repeat, so drift on a shared machine hits them all alike.

* :func:`compare` — the same queries in each mode, ``repeats`` times; speedup vs sequential.
* :func:`sweep` — the same queries at each ``max_concurrency``; shows the knee where the server's
  slots (or a rate limit) run out, with efficiency against the ideal.
  It reports speedup and throughput next to efficiency, flags levels where efficiency rose while
  throughput did not (``efficiency_misleading``: the server's queue counted as latency), and with
  ``stop_when_saturated`` stops once throughput stops rising and latency climbs.
* :func:`replay` (:mod:`hybrid.bench.replay`) — a workload (:mod:`hybrid.workload`: a trace, OpenTelemetry
  spans, a stored run) open-loop on its own clock, multi-turn sessions with their real answers;
  :func:`sessions` and :func:`turns` summarise what it measured.
* :func:`open_loop` — arrivals at a request rate (Poisson, bursty gamma, constant; optionally a
  linear ramp: :mod:`hybrid.bench.arrivals`), as real traffic arrives; queue time grows as the
  rate nears capacity.
* :class:`SLO`, :func:`goodput`, :func:`sla_search` (:mod:`hybrid.bench.slo`) — answers meeting
  latency limits per second, and the highest concurrency or rate whose p99 meets a limit.
* :func:`compare_runs` (:mod:`hybrid.bench.comparison`) — run B against run A with bootstrap
  confidence intervals and a verdict (``hybrid bench diff`` in CI).

Siblings: :mod:`hybrid.bench.peers` (the kit against hand-written clients) and
:mod:`hybrid.bench.suites` (what ``hybrid bench`` runs and writes).

A benchmark whose server runs in the client's own process (``sim.serve`` in the notebook's loop,
or ``sim.serve_in_thread``) charges the server's CPU to the client: :func:`compare` and
:func:`sweep` warn loudly (:class:`SharedProcessWarning`); serve it with ``sim.serve_process``.

Timings come from the runs themselves (the loop's clock); a measurement keeps a run even when every
query failed (``raise_if_all_failed=False``), since its rows are the data.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pandas as pd

from hybrid import validity
from hybrid.backends import Backend
from hybrid.bench.arrivals import arrival_times, open_loop
from hybrid.bench.comparison import Comparison, compare_runs
from hybrid.bench.replay import Replay, replay, sessions, turns
from hybrid.bench.slo import SLO, goodput, sla_search
from hybrid.errors import ConfigError
from hybrid.metrics import ratio
from hybrid.orchestrator import Orchestrator
from hybrid.query import Query
from hybrid.results import RunResult

__all__ = [
    "SLO",
    "Comparison",
    "Replay",
    "SharedProcessWarning",
    "arrival_times",
    "compare",
    "compare_runs",
    "goodput",
    "make_queries",
    "open_loop",
    "replay",
    "run_row",
    "sessions",
    "sla_search",
    "summarize",
    "sweep",
    "turns",
]

#: Throughput must rise by more than this fraction from one level to the next, or the server is saturated.
SATURATION_GAIN = 0.05
#: ... while the median latency rises by more than this fraction.
SATURATION_LATENCY_RISE = 0.2
#: A level whose throughput is within this fraction of the sweep's highest (the plateau) has reached
#: it: the saturation point is the smallest such level.  A tenth absorbs the client's own overhead
#: and jitter on a real clock; on the virtual clock the plateau is reached exactly.
PLATEAU_TOLERANCE = 0.1


class SharedProcessWarning(UserWarning):
    """The server being measured runs in the client's process: its CPU is charged to the client."""


def warn_if_server_shares_process(backend: Backend) -> None:
    """Warn when ``backend`` talks to a simulator served in this very process (``sim.serve``,
    ``sim.serve_in_thread``): a benchmark then measures client and server on the same CPU time,
    which flatters whichever client leaves the loop idle (a thread pool) and penalises ``gather``."""
    from hybrid.process import IN_PROCESS_URLS

    url = getattr(backend, "base_url", None)
    if url in IN_PROCESS_URLS:
        warnings.warn(
            f"The server at {url} runs in this process: its CPU is charged to the client being measured, "
            "so threads vs gather comparisons are skewed. Serve it with `async with sim.serve_process(config) "
            "as server:` (its own process) for numbers you can defend.",
            SharedProcessWarning,
            stacklevel=3,
        )


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
    """One raw sample: a run's metrics as a flat row, its validity ``flags`` (``flags=`` among the
    labels replaces them) and its per-query latencies."""
    m = run.metrics
    flags = labels.pop("flags", run.flags)
    return {
        **labels,
        "flags": flags,
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
        "mean_retry_s": m.mean_retry_s,
        "mean_client_s": m.mean_client_s,
        "mean_server_queue_s": m.mean_server_queue_s,
        "mean_server_s": m.mean_server_s,
        "mean_network_s": m.mean_network_s,
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
    warn_if_server_shares_process(orch.backend)
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
    stop_when_saturated: bool = False,
    fresh_prefix: bool = False,
    **orchestrator: Any,
) -> pd.DataFrame:
    """Run the same queries at each concurrency level; one row per (repeat, level).

    Beside each level's metrics: ``speedup`` (the lowest level's median wall / this wall; with level
    1 first, the speedup over sequential), ``throughput_gain`` (median throughput over the previous
    level's) and ``efficiency_misleading``: efficiency rose by more than a tenth while throughput
    rose by less than ``SATURATION_GAIN`` — the extra "efficiency" is time spent in the server's
    queue, not work done.  ``attrs["saturated_at"]`` is where the server saturated
    (:func:`saturation_point`: the smallest level within ``PLATEAU_TOLERANCE`` of the highest
    throughput; None while throughput still rose at the last level).  ``stop_when_saturated`` stops
    after the first level where throughput stopped rising (gain below ``SATURATION_GAIN``) and the
    median latency climbed by more than ``SATURATION_LATENCY_RISE``.

    A response cache in ``orchestrator`` is refused unless ``allow_cache=True`` (see :func:`compare`).

    Each row's ``flags`` are its run's (:mod:`hybrid.validity`) plus the sweep's own: ``warm_cache``
    on every point after the first, which sends the very prompts an earlier point sent (a server's
    prefix cache answers them faster than new traffic would be), and ``saturated`` on levels above
    ``saturated_at``.  ``fresh_prefix=True`` starts every point's prompts with words of its own
    (``[sweep point 3]``), so no point meets another's cache: shared prefixes within a point still
    share, as the queries mean them to.
    """
    _refuse_cache(bool(orchestrator.get("cache")), allow_cache)
    warn_if_server_shares_process(backend)
    rows: list[dict[str, Any]] = []
    previous: dict[str, float] | None = None
    for point, (level, repeat) in enumerate((level, repeat) for level in levels for repeat in range(repeats)):
        sent = [salted(q, point) for q in queries] if fresh_prefix else queries
        async with Orchestrator(backend, max_concurrency=level, **orchestrator) as orch:
            run = await orch.run(sent, raise_if_all_failed=False)
        repeated = point > 0 and not fresh_prefix  # these very prompts were sent before
        flags = validity.ordered((*run.flags, "warm_cache")) if repeated else run.flags
        rows.append(run_row(run, concurrency=level, repeat=repeat, flags=flags))
        if repeat < repeats - 1:
            continue
        here = pd.DataFrame(rows[-repeats:])[["throughput_qps", "p50_latency_s", "parallel_efficiency"]].median()
        if previous is not None:
            gain = _gain(here["throughput_qps"], previous["throughput_qps"])
            for row in rows[-repeats:]:
                row["throughput_gain"] = gain
                row["efficiency_misleading"] = (
                    _gain(here["parallel_efficiency"], previous["parallel_efficiency"]) > 0.1 and gain < SATURATION_GAIN
                )
            rising_latency = _gain(here["p50_latency_s"], previous["p50_latency_s"]) > SATURATION_LATENCY_RISE
            if stop_when_saturated and gain < SATURATION_GAIN and rising_latency:
                break
        previous = dict(here)
    frame = pd.DataFrame(rows)
    for column, first in (("throughput_gain", float("nan")), ("efficiency_misleading", False)):
        frame[column] = frame[column].fillna(first) if column in frame else first
    frame["efficiency_misleading"] = frame["efficiency_misleading"].astype(bool)
    lowest = frame["concurrency"].min()
    frame["speedup"] = frame.loc[frame["concurrency"] == lowest, "wall_s"].median() / frame["wall_s"]
    saturated_at = frame.attrs["saturated_at"] = saturation_point(frame)
    if saturated_at is not None:
        beyond = frame["concurrency"] > saturated_at
        frame.loc[beyond, "flags"] = frame.loc[beyond, "flags"].map(lambda f: validity.ordered((*f, "saturated")))
    return frame


def salted(query: Query, point: int) -> Query:
    """``query`` with words of sweep point ``point``'s own before its prompt (``fresh_prefix``)."""
    return replace(query, prompt=f"[sweep point {point}] {query.prompt}")


def saturation_point(frame: pd.DataFrame) -> int | None:
    """Where a sweep's throughput reached its plateau: the plateau is the highest median throughput
    of any level, the saturation point the smallest level whose median throughput is within
    ``PLATEAU_TOLERANCE`` of it.  None when only the last level gets there (throughput was still
    rising: the sweep never saw the plateau)."""
    throughput = summarize(frame, "concurrency")["throughput_qps"].dropna().sort_index()
    if len(throughput) < 2:
        return None
    reached = throughput[throughput >= (1 - PLATEAU_TOLERANCE) * throughput.max()]
    first = reached.index[0]
    return None if first == throughput.index[-1] else int(first)


def _gain(now: float, before: float) -> float:
    """The relative rise from ``before`` to ``now``; no rise when either is unknown or ``before`` is 0."""
    rise = ratio(now, before) - 1.0
    return 0.0 if math.isnan(rise) else rise
