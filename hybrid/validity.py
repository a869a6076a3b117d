"""Is this benchmark result what it seems?  Validity flags on every run.

A run can finish with clean numbers that measure the wrong thing: a prefix cache warmed by an
earlier run, a client that was the bottleneck, a replay whose requests left late (coordinated
omission), a server that was queueing, a server sharing the client's CPU.  :func:`flags_of` names
each such fault it finds in a run's own rows and measures; ``RunResult.flags`` holds them, the
store keeps them with the run, and the viewer, the sweep table and ``hybrid runs show`` print them.
:data:`FLAGS` says what each one means and what to do.

Each rule's threshold is a named constant below; a clean run raises none
(``tests/test_validity.py``: 100 seeded runs, and one planted fault per flag).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from hybrid.metrics import RunMetrics, percentile
from hybrid.query import QueryResult

#: Client CPU over the run's wall at or above this share: the client, not the server, set the pace
#: ("client CPU per call near the wall per call at that concurrency": the two ratios are one).
CLIENT_BOUND_CPU_SHARE = 0.8
#: A replayed query that left this many seconds after it was due (at the 99th percentile) ...
COORDINATED_OMISSION_LAG_S = 0.05
#: ... and more than this share of the median latency: its latency left out the time it waited.
COORDINATED_OMISSION_LAG_SHARE = 0.1
#: The server's reported queue holds this share of the mean latency or more: it ran out of capacity
#: (the single-run form of the sweep's plateau rule, :func:`hybrid.bench.saturation_point`).
SATURATED_QUEUE_SHARE = 0.25
#: ``Query.metadata`` key a workload sets on a query that is meant to share a cached prefix.
PREFIX_KEY = "prefix"

#: Each flag and what it means for the numbers.
FLAGS = {
    "warm_cache": "the server served prompt tokens from its prefix cache that the workload did not mean to "
    "share, or a repeat ran after an identical one: throughput and TTFT are flattered "
    "(bench.sweep(..., fresh_prefix=True) salts each point)",
    "client_bound": "the client's CPU was busy for most of the wall: the client, not the server, set the pace",
    "coordinated_omission": "replayed requests left well after their scheduled time: their latency leaves out "
    "that wait (see each row's scheduled_s against started_s)",
    "saturated": "the server's own queue held a large share of the latency: it ran out of capacity",
    "server_in_process": "the server ran in the client's process and shared its CPU: serve it with "
    "sim.serve_process for numbers you can defend",
}


def flags_of(
    results: Sequence[QueryResult],
    metrics: RunMetrics,
    *,
    real_clock: bool = True,
    server_in_process: bool = False,
) -> tuple[str, ...]:
    """The validity flags of one run, in :data:`FLAGS` order.  ``real_clock`` is False for a run
    on a virtual clock, whose wall is a model's and cannot be set against real CPU time."""
    sent = [r for r in results if r.origin == "sent" and r.ok]
    found = set()
    if any(r.usage.cached_prompt_tokens and not _meant_to_share(r) for r in sent):
        found.add("warm_cache")
    if real_clock and metrics.wall_s > 0 and metrics.cpu_s / metrics.wall_s >= CLIENT_BOUND_CPU_SHARE:
        found.add("client_bound")
    lags = [r.started_s - r.scheduled_s for r in sent if r.scheduled_s is not None]
    if lags:
        bound = max(COORDINATED_OMISSION_LAG_S, COORDINATED_OMISSION_LAG_SHARE * metrics.p50_latency_s)
        if percentile(lags, 99) > bound:
            found.add("coordinated_omission")
    queued = [r.server_queue_s for r in sent if r.server_queue_s is not None]
    latency = sum(r.latency_s for r in sent)
    if queued and latency > 0 and sum(queued) / latency >= SATURATED_QUEUE_SHARE:
        found.add("saturated")
    if server_in_process:
        found.add("server_in_process")
    return ordered(found)


def described(flags: Iterable[str]) -> list[str]:
    """One line per flag: its name and what it means (``hybrid runs show``, the viewer)."""
    return [f"{flag}: {FLAGS.get(flag, 'a flag this version of the kit does not know')}" for flag in flags]


def ordered(flags: Iterable[str]) -> tuple[str, ...]:
    """``flags`` once each, in :data:`FLAGS` order."""
    found = set(flags)
    return tuple(flag for flag in FLAGS if flag in found)


def _meant_to_share(result: QueryResult) -> bool:
    metadata = result.query.metadata
    return metadata is not None and metadata.get(PREFIX_KEY) is not None
