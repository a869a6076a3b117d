"""The events of :meth:`Orchestrator.stream <hybrid.orchestrator.Orchestrator.stream>`: a query
started, a streamed query's tokens so far, a query finished, the run finished.  Times are seconds
since the run started."""

from __future__ import annotations

from dataclasses import dataclass

from hybrid.query import QueryResult
from hybrid.results import RunResult


@dataclass(frozen=True, slots=True)
class QueryStarted:
    """A query got its concurrency slot and its first request is being sent."""

    index: int
    name: str
    at_s: float


@dataclass(frozen=True, slots=True)
class QueryProgress:
    """A streamed query (``Query(stream=True)``) has received ``tokens`` completion tokens so far
    (the kit's token rule; at most one event per query every ``PROGRESS_EVERY_S``)."""

    index: int
    name: str
    at_s: float
    tokens: int


@dataclass(frozen=True, slots=True)
class QueryFinished:
    """A query finished, with an answer or an error."""

    result: QueryResult


@dataclass(frozen=True, slots=True)
class RunFinished:
    """The last event of a stream: the whole run."""

    run: RunResult


Event = QueryStarted | QueryProgress | QueryFinished | RunFinished
