"""The response cache, a link of the call chain: an answer already in the store is not paid for twice.

Keyed by :func:`~hybrid.fingerprint.fingerprint` (model, messages, sampling parameters, response
format, sample index; never concurrency, timeouts or retries).  A hit answers without passing on
(no rate-limit token, no request) and the row comes back with ``origin="cache"``, cost 0 and no
latency; a miss is sent and, when it succeeds, stored.  Errors are never cached.  ``mode`` is
``"on"`` (read and write), ``"read"`` (use what is there, add nothing) or ``"write"`` (refresh:
always send, store the answers); ``max_age_s`` ignores entries older than that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from hybrid.chain import Attempt, Next
from hybrid.fingerprint import fingerprint
from hybrid.query import Completion, Query

if TYPE_CHECKING:
    from hybrid.store import Store

CACHE_MODES = ("on", "read", "write")


class ResponseCache:
    """A link answering from (and filling) ``store``'s cache (see the module docstring)."""

    def __init__(self, store: Store, *, mode: str, default_model: str, max_age_s: float | None) -> None:
        self.store = store
        self.mode = mode
        self.default_model = default_model
        self.max_age_s = max_age_s
        self._known: dict[str, Completion | None] = {}

    def prefetch(self, queries: Sequence[Query]) -> None:
        """Look a run's queries up in one go, so each hit is a dict look-up rather than a query."""
        if self.mode == "write":
            return
        keys = [fingerprint(query, self.default_model) for query in queries]
        unknown = [key for key in keys if self._known.get(key) is None]
        found = self.store.cached_many(unknown, max_age_s=self.max_age_s)
        # What this link stored itself is known at once, committed or not; the rest is as the store says.
        self._known.update({key: found.get(key) for key in unknown})

    def lookup(self, query: Query) -> Completion | None:
        """The cached answer to ``query``, if the mode reads and there is one."""
        if self.mode not in ("on", "read"):
            return None
        key = fingerprint(query, self.default_model)
        return self._known[key] if key in self._known else self.store.cached(key, max_age_s=self.max_age_s)

    def remember(self, query: Query, completion: Completion) -> None:
        """Store a fresh answer to ``query``, if the mode writes."""
        if self.mode in ("on", "write"):
            key = fingerprint(query, self.default_model)
            self.store.cache(key, completion)
            self._known[key] = replace(completion, cached=True)

    async def __call__(self, query: Query, attempt: Attempt, call_next: Next) -> Completion:
        hit = self.lookup(query)
        if hit is not None:
            return hit
        completion = await call_next(query, attempt)
        self.remember(query, completion)
        return completion
