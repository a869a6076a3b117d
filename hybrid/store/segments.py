"""One run name, several segments: the first run and each resume, merged into one picture.

``orch.run(queries, name="grid", resume=True)`` sends only what is not answered ok yet, as a new
*segment* of the run ``grid``.  The store keeps every segment as it ran (``Store.load(name,
segment=k)`` gives segment ``k`` back field by field); :func:`merge` is what ``Store.load(name)``
shows for the whole:

* every query once, in its latest state: the latest segment's rows, where a row that segment only
  resumed is the row that answered it (its real latency, from the segment that sent it);
* the segments laid end to end: wall and CPU are the sums of the segments', and each row's
  ``started_s``/``finished_s`` is shifted by the walls of the segments before its own, so a
  timeline shows them one after another (gaps between segments are not time the run spent);
* cost is every paid attempt of every segment (a query that failed, was paid for and was sent
  again costs twice), so ``metrics.cost_usd`` is what the provider billed for the name;
* the concurrency limit is the segments' own when they agree; when they differ no ideal can be
  computed, so it is ``None`` and the ideal efficiency NaN, and a warning says why.

Pure functions over :class:`~hybrid.results.RunResult`: the store reads, this module decides.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import replace

from hybrid.metrics import RunMetrics
from hybrid.query import QueryResult
from hybrid.results import RunResult

#: One stored segment: the run as it ran, and each row's request fingerprint (None for a row that
#: never finished), which is how a resumed row finds the row that answered it.
Segment = tuple[RunResult, Sequence[str | None]]


def merge(segments: Sequence[Segment]) -> RunResult:
    """The segments of one run name as one :class:`RunResult` (see the module docstring)."""
    runs = [run for run, _ in segments]
    if len(runs) == 1:
        return runs[0]
    offsets = [sum(run.metrics.wall_s for run in runs[:k]) for k in range(len(runs))]
    answered: dict[tuple[str, str], QueryResult] = {}
    for (run, prints), offset in zip(segments, offsets, strict=True):
        for row, key in zip(run.results, prints, strict=True):
            if key is not None and row.ok and row.origin != "resumed":
                answered[(row.name, key)] = _shifted(row, offset)
    latest, latest_prints = segments[-1]
    rows = []
    for row, key in zip(latest.results, latest_prints, strict=True):
        earlier = answered.get((row.name, key)) if key is not None and row.origin == "resumed" else None
        if earlier is not None:
            rows.append(replace(earlier, query=row.query, index=row.index, stage=row.stage))
        else:
            rows.append(_shifted(row, offsets[-1]))
    limits = {run.metrics.concurrency for run in runs}
    concurrency = limits.pop() if len(limits) == 1 else None
    trace = [
        (at + offset, limit)
        for run, offset in zip(runs, offsets, strict=True)
        for at, limit in run.metrics.concurrency_trace
    ]
    metrics = RunMetrics.compute(
        rows,
        wall_s=sum(run.metrics.wall_s for run in runs),
        cpu_s=sum(run.metrics.cpu_s for run in runs),
        concurrency=concurrency,
        concurrency_trace=trace,
        budget=runs[-1].metrics.budget,  # the budget as the latest segment ended
    )
    metrics = replace(
        metrics,
        cost_usd=_paid(run.metrics.cost_usd for run in runs),
        batch_cost_usd=_paid(run.metrics.batch_cost_usd for run in runs),
    )
    warnings = [
        f"Merged from {len(runs)} segments (the first run and {len(runs) - 1} resume(s)): each query in its "
        "latest state; wall, CPU and cost summed over all; Store.load(name, segment=k) gives one as it ran."
    ]
    if concurrency is None:
        shown = ", ".join(str(run.metrics.concurrency) for run in runs)
        warnings.append(f"The segments ran at different concurrency limits ({shown}): the ideal is not known.")
    return RunResult(
        results=tuple(rows),
        metrics=metrics,
        mode=latest.mode,
        warnings=(*warnings, *latest.warnings),
        cancelled=latest.cancelled,
        segments=len(runs),
        diagnostics=tuple(note for run in runs for note in run.diagnostics),
        flags=tuple(dict.fromkeys(flag for run in runs for flag in run.flags)),  # any segment's, once each
        prices={model: source for run in runs for model, source in run.prices.items()},  # the latest's wins
    )


def _shifted(row: QueryResult, offset: float) -> QueryResult:
    if not offset:
        return row
    return replace(row, started_s=row.started_s + offset, finished_s=row.finished_s + offset)


def _paid(costs: Iterable[float | None]) -> float | None:
    """The sum of the known costs; None when no segment knew its cost (no prices)."""
    known = [c for c in costs if c is not None and not math.isnan(c)]
    return sum(known) if known else None
