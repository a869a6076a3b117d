"""The events of :meth:`Orchestrator.stream <hybrid.orchestrator.Orchestrator.stream>`: a query
started, a streamed query's tokens so far, a query finished, the run finished.  Times are seconds
since the run started.

An orchestrator's ``observers`` (callables, e.g. :func:`hybrid.otel.instrument`'s) see the same
events of every run, ``run``, ``stream`` or ``pipeline``, framed by :class:`RunStarted` and
:class:`RunFinished`; that is how a tool watches runs while the engine knows nothing of it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hybrid.query import QueryResult
from hybrid.results import RunResult


@dataclass(frozen=True, slots=True)
class RunStarted:
    """A run begins (observers only; a stream starts with its first query): its store name (None
    without one), its mode, how many queries it has, and the backend's default model."""

    name: str | None
    mode: str
    queries: int
    model: str


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
#: What an orchestrator's observers see: every event of every run, framed by its start and end.
Observed = RunStarted | Event
Observer = Callable[[Observed], None]
