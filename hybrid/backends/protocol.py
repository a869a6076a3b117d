"""The backend protocol: what the orchestrator needs from anything that sends queries.

A backend knows *how* to send one query and nothing about *when*, how many at once, or how often to
retry: that is the orchestrator's.  Any object with these members is a backend; it need not
inherit from anything, speak HTTP or pretend to be OpenAI.  A wrapper (a cache, a recorder, a test
double such as :class:`hybrid.testing.FakeBackend`) implements the same five members around another.

The contract, member by member (in the manner of httpx's ``BaseTransport.handle_request``):

``model``
    The model a query without ``Query.model`` goes to; used for the result row's ``model``.

``supports_threads``
    True when :meth:`complete_blocking` exists and is safe to call from many threads at once
    (``mode="threads"`` is refused, before anything is sent, when it is false).

``async open(*, max_connections, query_timeout)``
    Make whatever clients and pools the backend needs, sized for ``max_connections`` requests at
    once.  ``query_timeout`` (seconds, or None) is the orchestrator's per-query limit: a blocking client
    must not wait longer than that, since a thread cannot be cancelled.  Called once per
    ``async with Orchestrator(...)``; may check that the endpoint is reachable and raise
    :class:`~hybrid.errors.ConfigError` with advice when it is not.

``async complete(query) -> Completion``
    Send one attempt of ``query`` and return its :class:`~hybrid.query.Completion`.  Must raise
    only :class:`~hybrid.errors.QueryError` subclasses for anything that went wrong with the
    attempt (translated once, here, at the boundary), and must let ``asyncio.CancelledError``
    through, closing the request it had in flight.  It must not retry, sleep between attempts or
    apply its own timeout: the orchestrator owns those, so every backend behaves the same.

``complete_blocking(query) -> Completion``
    The same on a synchronous client, called from a worker thread (``mode="threads"``, the
    legacy baseline).  Backends without one raise :class:`~hybrid.errors.ConfigError`.

``async aclose()``
    Release every client and connection; idempotent.  Called when the orchestrator's block exits,
    also after cancellation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from hybrid.query import Completion, Query

if TYPE_CHECKING:
    from hybrid.backends.batch_api import BatchAPI


@runtime_checkable
class Backend(Protocol):
    """Anything the orchestrator can send queries through (see the module docstring)."""

    model: str
    supports_threads: bool

    async def open(self, *, max_connections: int, query_timeout: float | None) -> None: ...

    async def complete(self, query: Query) -> Completion: ...

    def complete_blocking(self, query: Query) -> Completion: ...

    async def aclose(self) -> None: ...


# -- optional capabilities: a backend has them or not; the kit asks with isinstance ------------------
@runtime_checkable
class SupportsBatch(Protocol):
    """A backend whose provider has a Batch API (``mode="batch"``): ``OpenAIBackend`` (the SDK's
    files and batches) and ``sim.backend`` (the simulator's)."""

    def batch_api(self) -> BatchAPI: ...


@runtime_checkable
class SupportsForecast(Protocol):
    """A backend that knows its own latency model (``sim.backend``): ``orch.estimate`` asks it for
    a query's expected completion tokens and latency (and the latency's low and high) instead of
    history, and caps the forecast's concurrency at its ``slots``."""

    slots: int

    def forecast(self, query: Query) -> tuple[float, float, float, float]: ...


@runtime_checkable
class SupportsIdentity(Protocol):
    """A backend that can say which server answers (both HTTP backends and ``sim.backend``): the
    response cache keys its answers by it as well, so two servers serving the same model name never
    answer for each other.  A backend without one shares the cache with every other."""

    identity: str
