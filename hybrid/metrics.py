"""Run metrics, defined once (ARCHITECTURE.md, "Metrics").

* ``wall_s``: first query submitted to last result.
* ``parallel_efficiency = sum(latency_s) / wall_s`` — the seeds' figure; 1.0 means no overlap,
  2.0 means two queries' worth of waiting fitted in one query's time.
* ``ideal_efficiency``: the same ratio for a perfect scheduler with the same per-query latencies
  and the same concurrency limit, stage by stage (longest-first list scheduling, which is what a
  semaphore-fed pool achieves at best; for unlimited concurrency it is ``sum / max``).
* ``percent_of_ideal = parallel_efficiency / ideal_efficiency``.  Both are NaN when the
  concurrency is not known (``concurrency=None``: a run merged from resumed segments that ran at
  different limits, or a run saved by a kit too old to record it): no ideal can be computed then.
* client CPU per call: process CPU seconds during the run divided by the calls made (attempts).

Rows that did not go over the wire in this run (``origin`` ``"cache"`` or ``"resumed"``) are
counted (``queries``, ``succeeded``, ``from_cache``, ``resumed``, tokens) but kept out of every
timing (latency, efficiency, ideal, throughput) and of attempts; cache hits cost 0 and resumed
rows were paid for in an earlier run, so neither adds to the run's cost.  Mixing in
answers that took no time would make a run look faster than any server is.

Rows the provider's Batch API answered (``origin="batch"``) have no latency of their own (a batch
answers all at once, hours later): they count in ``batched``, attempts (lines submitted) and
throughput over the wall, not in latency or efficiency; their cost is also reported apart as
``batch_cost_usd`` (the batch price), so ``cost_usd - batch_cost_usd`` is the synchronous part.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hybrid.query import QueryResult


def percentile(values: Sequence[float], q: float, *, is_sorted: bool = False) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = values if is_sorted else sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when the denominator is 0 or not finite (a run that took no
    time, or no tokens): a comparison of such runs has no meaningful ratio, and must not crash."""
    if not denominator or not math.isfinite(denominator):
        return math.nan
    return numerator / denominator


def ideal_wall(latencies: Sequence[float], concurrency: int) -> float:
    """Makespan of the latencies on ``concurrency`` workers, longest first (LPT list scheduling)."""
    if not latencies:
        return 0.0
    workers = [0.0] * max(1, min(concurrency, len(latencies)))
    for latency in sorted(latencies, reverse=True):
        heapq.heapreplace(workers, workers[0] + latency)
    return max(workers)


def _mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are known; None when none is."""
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


@dataclass(frozen=True, slots=True)
class BudgetState:
    """A hard budget (``budget_usd=``) as a run ended: its limit, what the orchestrator's attempts
    have spent so far (what the provider may bill), what attempts still in flight hold, and what
    was reserved and given back unspent.  The budget belongs to the orchestrator, so the numbers
    cover every run it made, up to this one's end."""

    limit_usd: float
    spent_usd: float
    reserved_usd: float
    released_usd: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RunMetrics:
    """Aggregate numbers of one run; every field is derived from the per-query results."""

    queries: int
    succeeded: int
    failed: int
    wall_s: float
    sum_latency_s: float
    parallel_efficiency: float
    ideal_efficiency: float
    percent_of_ideal: float
    #: The concurrency limit the run ran at; None when not known (see the module docstring).
    concurrency: int | None
    p50_latency_s: float
    p95_latency_s: float
    p99_latency_s: float
    max_latency_s: float
    mean_queue_s: float
    mean_ttft_s: float | None
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    tokens_estimated: bool
    attempts: int
    retries: int
    cpu_s: float
    cpu_per_call_ms: float
    throughput_qps: float
    cost_usd: float | None
    from_cache: int = 0
    resumed: int = 0
    batched: int = 0
    batch_cost_usd: float | None = None
    #: Where the answered rows' latency went, on average (each row's parts add up to its latency;
    #: ARCHITECTURE.md, "Metrics"): earlier attempts and backoff, the client before the request
    #: left, the server's queue and work (None when the server reported none), and the rest.
    mean_retry_s: float | None = None
    mean_client_s: float | None = None
    mean_server_queue_s: float | None = None
    mean_server_s: float | None = None
    mean_network_s: float | None = None
    #: ``max_concurrency="auto"``: (seconds into the run, concurrency limit) at each change.
    concurrency_trace: tuple[tuple[float, int], ...] = ()
    #: With ``budget_usd=``: the budget as the run ended.
    budget: BudgetState | None = None

    @classmethod
    def compute(
        cls,
        results: Sequence[QueryResult],
        *,
        wall_s: float,
        cpu_s: float,
        concurrency: int | None,
        concurrency_trace: Sequence[tuple[float, int]] = (),
        budget: BudgetState | None = None,
    ) -> RunMetrics:
        sent = [r for r in results if r.attempts > 0 and r.origin == "sent"]
        split = [r for r in sent if r.network_s is not None]
        latencies = sorted(r.latency_s for r in sent)
        total = sum(latencies)
        stages: dict[int | None, list[float]] = {}
        for r in sent:
            stages.setdefault(r.stage, []).append(r.latency_s)
        efficiency = total / wall_s if wall_s > 0 else 0.0
        if concurrency is None:
            ideal = math.nan
        else:
            ideal_s = sum(ideal_wall(stage, concurrency) for stage in stages.values())
            ideal = total / ideal_s if ideal_s > 0 else 0.0
        ttfts = [r.ttft_s for r in sent if r.ttft_s is not None]
        batched = [r for r in results if r.origin == "batch"]
        attempts = sum(r.attempts for r in sent) + sum(r.attempts for r in batched)
        batch_costs = [r.cost_usd for r in batched if r.cost_usd is not None]
        # This run's cost: what was sent, plus cache hits at 0; resumed rows were paid for earlier.
        costs = [r.cost_usd for r in results if r.cost_usd is not None and r.origin != "resumed"]
        succeeded = sum(r.ok for r in results)
        return cls(
            queries=len(results),
            succeeded=succeeded,
            failed=len(results) - succeeded,
            wall_s=wall_s,
            sum_latency_s=total,
            parallel_efficiency=efficiency,
            ideal_efficiency=ideal,
            percent_of_ideal=efficiency / ideal if ideal > 0 else ideal,  # 0 with nothing sent, NaN unknown
            concurrency=concurrency,
            p50_latency_s=percentile(latencies, 50, is_sorted=True),
            p95_latency_s=percentile(latencies, 95, is_sorted=True),
            p99_latency_s=percentile(latencies, 99, is_sorted=True),
            max_latency_s=max(latencies, default=math.nan),
            mean_queue_s=sum(r.queue_s for r in sent) / len(sent) if sent else math.nan,
            mean_ttft_s=sum(ttfts) / len(ttfts) if ttfts else None,
            prompt_tokens=sum(r.usage.prompt_tokens for r in results),
            completion_tokens=sum(r.usage.completion_tokens for r in results),
            total_tokens=sum(r.usage.total_tokens for r in results),
            tokens_estimated=any(r.usage.estimated for r in results if r.ok),
            attempts=attempts,
            retries=sum(r.retries for r in sent),
            cpu_s=cpu_s,
            cpu_per_call_ms=cpu_s / attempts * 1000.0 if attempts else math.nan,
            throughput_qps=(sum(r.ok for r in sent) + sum(r.ok for r in batched)) / wall_s if wall_s > 0 else 0.0,
            cost_usd=sum(costs) if costs else None,
            from_cache=sum(r.origin == "cache" and r.ok for r in results),
            resumed=sum(r.origin == "resumed" for r in results),
            batched=len(batched),
            batch_cost_usd=sum(batch_costs) if batch_costs else None,
            mean_retry_s=_mean(r.retry_s for r in split),
            mean_client_s=_mean(r.client_s for r in split),
            mean_server_queue_s=_mean(r.server_queue_s for r in split),
            mean_server_s=_mean(r.server_s for r in split),
            mean_network_s=_mean(r.network_s for r in split),
            concurrency_trace=tuple(concurrency_trace),
            budget=budget,
        )

    @classmethod
    def unavailable(cls, results: Sequence[QueryResult], *, wall_s: float) -> RunMetrics:
        """Counts only (timings NaN): what a run reports if :meth:`compute` failed on bad data."""
        succeeded = sum(r.ok for r in results)
        nan = math.nan
        return cls(
            queries=len(results),
            succeeded=succeeded,
            failed=len(results) - succeeded,
            wall_s=wall_s,
            sum_latency_s=nan,
            parallel_efficiency=nan,
            ideal_efficiency=nan,
            percent_of_ideal=nan,
            concurrency=None,
            p50_latency_s=nan,
            p95_latency_s=nan,
            p99_latency_s=nan,
            max_latency_s=nan,
            mean_queue_s=nan,
            mean_ttft_s=None,
            prompt_tokens=0,
            completion_tokens=0,
            total_tokens=0,
            tokens_estimated=True,
            attempts=sum(r.attempts for r in results),
            retries=sum(r.retries for r in results),
            cpu_s=nan,
            cpu_per_call_ms=nan,
            throughput_qps=nan,
            cost_usd=None,
        )
