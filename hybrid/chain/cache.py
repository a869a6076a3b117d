"""The response cache, a link of the call chain: an answer already in the store is not paid for twice.

Keyed by :func:`~hybrid.fingerprint.fingerprint` (model, messages, sampling parameters, response
format, sample index; never concurrency, timeouts or retries) and by the server that answered: the
backend's ``identity`` (:class:`~hybrid.backends.protocol.SupportsIdentity`; by default its base URL
without the port on loopback), so two servers serving one model name never answer for each other.
An entry from before the cache knew servers (a store of an earlier kit), or written through a
backend that cannot say, has no server and answers for any: such stores keep working as they did.
Resume does not use the cache: it matches a run's own rows by fingerprint alone, so a resumed run
on a restarted server never resends what it has.  A hit answers without passing on
(no rate-limit token, no request) and the row comes back with ``origin="cache"``, cost 0 and no
latency; a miss is sent and, when it succeeds, stored.  Errors are never cached.  ``mode`` is
``"record"`` (read and write; ``"on"`` is its older name), ``"replay"`` (answer only from the store:
a miss is not sent but becomes a :class:`~hybrid.errors.NotRecorded` row saying what changed, see
:mod:`hybrid.chain.replay_miss`), ``"read"`` (use what is there, send and add nothing new) or
``"write"`` (refresh: always send, store the answers); ``max_age_s`` ignores entries older than that.
The orchestrator maps ``"live"`` (no cache) to no link at all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from hybrid.chain import Attempt, Next
from hybrid.chain.replay_miss import ReplayMisses
from hybrid.errors import NotRecorded
from hybrid.fingerprint import fingerprint
from hybrid.query import Completion, Query

if TYPE_CHECKING:
    from hybrid.store import Store

#: The modes a link has ("live", no cache, is the orchestrator's, and has no link).
CACHE_MODES = ("record", "replay", "on", "read", "write")
#: The modes that read the cache and the ones that add to it.
READS = ("record", "replay", "on", "read")
WRITES = ("record", "on", "write")


class ResponseCache:
    """A link answering from (and filling) ``store``'s cache (see the module docstring)."""

    def __init__(
        self, store: Store, *, mode: str, default_model: str, max_age_s: float | None, endpoint: str | None = None
    ) -> None:
        self.store = store
        self.mode = mode
        #: Explains a replay miss (reads the store's recordings at the first one).
        self.misses = ReplayMisses(store, default_model, endpoint) if mode == "replay" else None
        self.default_model = default_model
        self.max_age_s = max_age_s
        #: The backend's identity, hashed into every key (None: a backend that cannot say).
        self.endpoint_key = None if endpoint is None else hashlib.sha256(endpoint.encode()).hexdigest()[:16]
        self._known: dict[str, Completion | None] = {}

    def _keys(self, query: Query) -> tuple[str, ...]:
        """Where ``query``'s answer may be: under this endpoint's key, then (for an entry written
        before the cache knew endpoints, or by a backend that cannot say) under the bare fingerprint."""
        bare = fingerprint(query, self.default_model)
        return (bare,) if self.endpoint_key is None else (f"{bare}@{self.endpoint_key}", bare)

    def prefetch(self, queries: Sequence[Query]) -> None:
        """Look a run's queries up in one go, so each hit is a dict look-up rather than a query."""
        if self.mode == "write":
            return
        keys = [key for query in queries for key in self._keys(query)]
        unknown = [key for key in keys if self._known.get(key) is None]
        found = self.store.cached_many(unknown, max_age_s=self.max_age_s)
        # What this link stored itself is known at once, committed or not; the rest is as the store says.
        self._known.update({key: found.get(key) for key in unknown})

    def lookup(self, query: Query) -> Completion | None:
        """The cached answer to ``query``, if the mode reads and there is one."""
        if self.mode not in READS:
            return None
        for key in self._keys(query):
            hit = self._known[key] if key in self._known else self.store.cached(key, max_age_s=self.max_age_s)
            if hit is not None:
                return hit
        return None

    def remember(self, query: Query, completion: Completion) -> None:
        """Store a fresh answer to ``query``, if the mode writes."""
        if self.mode in WRITES:
            key = self._keys(query)[0]
            self.store.cache(key, completion)
            self._known[key] = replace(completion, cached=True)

    async def __call__(self, query: Query, attempt: Attempt, call_next: Next) -> Completion:
        hit = self.lookup(query)
        if hit is not None:
            return hit
        if self.misses is not None:
            raise NotRecorded(self.misses.explain(query))
        completion = await call_next(query, attempt)
        self.remember(query, completion)
        return completion
