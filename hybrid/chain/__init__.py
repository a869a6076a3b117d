"""The call chain: what happens on every attempt of a query, as a chain of small links.

The orchestrator decides *when* a query goes and how often it is retried; for each attempt it
calls the chain, whose last step is the backend.  A link is an async callable that receives the
query, the :class:`Attempt` and the next step, and may wait before passing on (rate limits),
answer without passing on (a cache), or look at what comes back (a recorder)::

    attempt ──> link 1 ──> link 2 ──> ... ──> send (stamps Attempt.sent_at) ──> backend.complete

Because links run per attempt, a retry is limited, cached and recorded like a first try.  Each link
lives in a module of its own in this package; :func:`compose` joins them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from hybrid.query import Completion, Query


@dataclass(slots=True)
class Attempt:
    """One try of one query: its row ``index``, its ``number`` (1-based), and when its request
    left (``sent_at``, loop time), set by the last step of the chain; None if it never left."""

    index: int
    number: int
    sent_at: float | None = None
    #: Sent through the provider's Batch API (``mode="batch"``): priced at the model's batch price.
    batch: bool = False
    #: Told the loop time when the request leaves (the orchestrator starts the query's clock then).
    on_sent: Callable[[float], None] | None = field(default=None, repr=False)

    def mark_sent(self, at: float) -> None:
        self.sent_at = at
        if self.on_sent is not None:
            self.on_sent(at)


#: The rest of the chain, as seen from a link.
Next = Callable[[Query, Attempt], Awaitable[Completion]]


class Link(Protocol):
    """One step of the chain: do something, then (usually) ``await call_next(query, attempt)``."""

    async def __call__(self, query: Query, attempt: Attempt, call_next: Next) -> Completion: ...


def compose(links: Sequence[Link], last: Next) -> Next:
    """The chain ``links[0] -> links[1] -> ... -> last`` as one callable."""
    call = last
    for link in reversed(links):
        call = _bind(link, call)
    return call


def _bind(link: Link, call_next: Next) -> Next:
    async def step(query: Query, attempt: Attempt) -> Completion:
        return await link(query, attempt, call_next)

    return step
