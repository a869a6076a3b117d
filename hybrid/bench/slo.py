"""Service-level objectives: goodput, and the highest load that still meets a latency limit.

Throughput counts every answer; *goodput* (as vLLM's ``bench serve`` reports it) counts only the
answers a user would have accepted: those meeting every limit of an :class:`SLO` (time to first
token, time per output token after it, end to end), per second of the run.  A server pushed past
its capacity can keep its throughput while its goodput collapses.

:func:`sla_search` finds the highest concurrency (closed loop: ``max_concurrency``) or request
rate (open loop: :func:`hybrid.bench.open_loop`) whose p99 latency stays within a limit, by
bisection: each probe is one measured run, so a search of 6-8 probes maps a server's capacity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from hybrid.backends import Backend
from hybrid.bench.arrivals import open_loop
from hybrid.errors import ConfigError, check_choice, check_number
from hybrid.metrics import percentile
from hybrid.query import Query
from hybrid.results import RunResult


@dataclass(frozen=True, slots=True)
class SLO:
    """Limits a good answer meets, in seconds; None leaves that limit out.

    ``ttft_s``: time to first token; ``tpot_s``: mean time per output token after the first;
    ``e2e_s``: from when the request was due (its arrival, or the run's start) to its last byte,
    client queue included.  ``ttft_s`` and ``tpot_s`` need streamed queries (``Query(stream=True)``):
    only a stream shows when the first token came.
    """

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("ttft_s", "tpot_s", "e2e_s"):
            value = getattr(self, name)
            if value is not None:
                check_number(f"SLO({name}=...)", value, positive=True, unit="seconds")
        if self.ttft_s is None and self.tpot_s is None and self.e2e_s is None:
            raise ConfigError("An SLO needs at least one limit: SLO(ttft_s=..., tpot_s=..., e2e_s=...).")

    @property
    def needs_stream(self) -> bool:
        return self.ttft_s is not None or self.tpot_s is not None

    def met(self, rows: pd.DataFrame) -> pd.Series:
        """For each row (``ok``, ``latency_s``, ``queue_s``, ``ttft_s``, ``completion_tokens``),
        whether it meets every limit; a failed row never does."""
        good = rows["ok"].astype(bool).copy()
        if self.needs_stream and rows["ttft_s"].isna().any():
            raise ConfigError(
                "This SLO limits ttft_s or tpot_s, which only streamed answers show: build the queries with "
                "Query(..., stream=True), or use SLO(e2e_s=...) alone."
            )
        if self.ttft_s is not None:
            good &= rows["ttft_s"].astype(float) <= self.ttft_s
        if self.tpot_s is not None:
            good &= tpot(rows) <= self.tpot_s
        if self.e2e_s is not None:
            good &= (rows["queue_s"] + rows["latency_s"]) <= self.e2e_s
        return good


def tpot(rows: pd.DataFrame) -> pd.Series:
    """Mean time per output token after the first: ``(latency - ttft) / (completion tokens - 1)``
    (0 for a one-token answer, as vLLM counts it)."""
    decode = rows["latency_s"].astype(float) - rows["ttft_s"].astype(float)
    tokens = (rows["completion_tokens"].astype(float) - 1.0).clip(lower=1.0)
    return (decode / tokens).where(rows["completion_tokens"] > 1, 0.0)


def goodput(data: RunResult | pd.DataFrame, slo: SLO, *, wall_s: float | None = None) -> float:
    """Answers meeting ``slo`` per second: of a run (over its wall), or of an :func:`open_loop`
    frame (over its ``attrs["wall_s"]``, or ``wall_s``)."""
    wall: float | None
    if isinstance(data, RunResult):
        rows = data.to_frame()
        rows = rows[rows["origin"] == "sent"]
        wall = data.metrics.wall_s
    else:
        rows, wall = data, data.attrs.get("wall_s", wall_s)
    if wall is None or not wall > 0:
        raise ConfigError("goodput needs the run's wall time: pass wall_s=... for a frame without attrs['wall_s'].")
    return float(slo.met(rows).sum()) / wall


async def sla_search(
    backend: Backend,
    queries: Sequence[Query],
    *,
    p99_limit_s: float,
    over: str = "concurrency",
    low: float = 1.0,
    high: float = 64.0,
    tolerance: float = 0.05,
    arrival: str = "constant",
    seed: int = 0,
    **orchestrator: Any,
) -> pd.DataFrame:
    """The highest load whose p99 latency is within ``p99_limit_s``, by bisection between ``low``
    (assumed to meet it; checked) and ``high``.

    ``over="concurrency"``: closed loop, each probe a run of ``queries`` at ``max_concurrency`` =
    the level (integer bisection; p99 of ``latency_s``).  ``over="rate"``: open loop, each probe
    :func:`hybrid.bench.open_loop` at that many requests per second (``arrival`` as there; p99 of
    queue + latency, what a user waits), until ``high / low`` is within ``1 + tolerance``.

    One row per probe (``level``, ``p99_s``, ``met``, ``throughput_qps``); ``attrs["best"]`` is the
    highest level that met the limit (None if even ``low`` did not).  ``orchestrator`` holds the
    probes' other settings (``timeout=``, ``retry=``...; no progress bars unless ``progress=``).
    """
    from hybrid.orchestrator import Orchestrator

    check_choice("over", over, ("concurrency", "rate"))
    check_number("p99_limit_s", p99_limit_s, positive=True, unit="seconds")
    check_number("low", low, minimum=1.0 if over == "concurrency" else None, positive=True)
    check_number("high", high, minimum=low)
    check_number("tolerance", tolerance, positive=True)
    orchestrator.setdefault("progress", False)  # a bar per probe would say little; the probes table says it
    probes: list[dict[str, Any]] = []

    async def probe(level: float) -> bool:
        if over == "concurrency":
            async with Orchestrator(backend, max_concurrency=int(level), **orchestrator) as orch:
                run = await orch.run(queries, raise_if_all_failed=False)
            p99, throughput = run.metrics.p99_latency_s, run.metrics.throughput_qps
        else:
            async with Orchestrator(backend, max_concurrency=len(queries), **orchestrator) as orch:
                frame = await open_loop(orch, queries, rate_qps=level, arrival=arrival, seed=seed)
            ok = frame[frame["ok"]]
            p99 = percentile(list(ok["queue_s"] + ok["latency_s"]), 99)
            throughput = len(ok) / frame.attrs["wall_s"]
        met = not math.isnan(p99) and p99 <= p99_limit_s
        probes.append({"level": level, "p99_s": p99, "met": met, "throughput_qps": throughput})
        return met

    best: float | None = None
    lo, hi = (int(low), int(high)) if over == "concurrency" else (low, high)
    if await probe(lo):
        best = lo
        if await probe(hi):
            best = hi
        else:
            while (hi - lo > 1) if over == "concurrency" else (hi / lo > 1 + tolerance):
                mid = (lo + hi) // 2 if over == "concurrency" else math.sqrt(lo * hi)
                if await probe(mid):
                    lo = best = mid
                else:
                    hi = mid
    frame = pd.DataFrame(probes)
    frame.attrs["best"] = best
    frame.attrs["over"] = over
    return frame
