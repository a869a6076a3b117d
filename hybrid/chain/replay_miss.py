"""Why a replayed query has no recording: the message of a ``not_recorded`` row.

A regression suite replays answers recorded earlier (``cache="replay"``); a query that misses is
the suite telling its author that a request changed.  "Not in the cache" would leave them to diff
prompts by hand, so this finds the closest recording of a query with the same name (the fewest
fingerprint parts that differ, the newest among equals) and names what differs: the model, the
messages, a sampling parameter, the response format or the sample index.  When nothing differs,
the answer was recorded against another server, was pruned, or was keyed by an older fingerprint
version (the kit changed what it hashes), and the message says which and how to record anew.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hybrid.fingerprint import PART_NAMES, fingerprint, fingerprint_parts
from hybrid.query import Query

if TYPE_CHECKING:
    from hybrid.store import Recorded, Store

#: How to make a recording, said in every miss (the environment variable works for notebooks and
#: scripts alike; the pytest option is the same switch for a suite).
RECORD_HOW = "record it with HYBRID_CACHE=record (pytest: --hybrid-cache=record)"


class ReplayMisses:
    """Explains replay misses against one store (its recordings are read once, at the first miss)."""

    def __init__(self, store: Store, default_model: str, identity: str | None) -> None:
        self.store = store
        self.default_model = default_model
        self.identity = identity
        self._recorded: dict[str, list[Recorded]] | None = None

    def explain(self, query: Query) -> str:
        """The message of ``query``'s ``not_recorded`` row."""
        if self._recorded is None:
            self._recorded = self.store.recorded()
        head = f"Query {query.name!r} has no recorded answer in {self.store.path}, so replay sent nothing:"
        candidates = self._recorded.get(query.name, [])
        if not candidates:
            return f"{head} no query of that name was ever recorded there; {RECORD_HOW}."
        now = fingerprint_parts(query, self.default_model)
        # Each candidate's parts, once; the closest differs in the fewest (min keeps the newest of equals).
        parts = [(recorded, fingerprint_parts(recorded.query, recorded.default_model)) for recorded in candidates]
        closest, then = min(parts, key=lambda pair: sum(pair[1][part] != now[part] for part in PART_NAMES))
        where = f"run {closest.run!r}, row {closest.row}"
        changed = [part for part in PART_NAMES if then[part] != now[part]]
        if changed:
            what = ", ".join(_described(part, then[part], now[part]) for part in changed)
            return f"{head} it differs from the closest recording ({where}) in {what}. Undo the change or {RECORD_HOW}."
        if closest.fingerprint != fingerprint(query, self.default_model):
            return (
                f"{head} it was recorded ({where}) under an older fingerprint version, which this kit no longer "
                f"reads. Record the suite again with this kit: {RECORD_HOW}."
            )
        if self.store.cached_servers(closest.fingerprint):
            return (
                f"{head} the same request was recorded ({where}) against another server, not {self.identity!r}. "
                f"Point the backend at that server (or give it identity= of that server), or {RECORD_HOW}."
            )
        return (
            f"{head} the same request was recorded ({where}) but its answer is no longer in the cache (pruned, or "
            f"older than cache_max_age_s); {RECORD_HOW}."
        )


def _described(part: str, then: object, now: object) -> str:
    """``part`` as a person names it, with both values (the messages are too long to show)."""
    if part == "messages":
        return PART_NAMES[part]
    return f"{PART_NAMES[part]} (recorded {then!r}, now {now!r})"
