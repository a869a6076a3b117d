"""The response cache's table: answers by request fingerprint (errors are never cached)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import NamedTuple

import orjson

from hybrid.query import Completion, Query, Usage
from hybrid.store.base import StoreFile


class Recorded(NamedTuple):
    """A query some run of the store answered ok: where a replay miss looks for what changed."""

    run: str
    row: int
    fingerprint: str
    query: Query
    default_model: str


class AnswerCache(StoreFile):
    """Cached answers (part of :class:`~hybrid.store.Store`; :mod:`hybrid.chain.cache` is the link
    that uses them)."""

    def cached(self, fingerprint: str, *, max_age_s: float | None = None) -> Completion | None:
        """The cached answer for ``fingerprint``, if any (and younger than ``max_age_s``)."""
        rows = self._read(
            "SELECT text, model, finish_reason, prompt_tokens, completion_tokens, tokens_estimated, created_at "
            "FROM cache WHERE fingerprint = ?",
            (fingerprint,),
        )
        if not rows:
            return None
        text, model, finish, prompt, completion, estimated, created = rows[0]
        if max_age_s is not None and time.time() - created > max_age_s:
            return None
        usage = Usage(prompt_tokens=prompt, completion_tokens=completion, estimated=bool(estimated))
        return Completion(text=text, usage=usage, model=model, finish_reason=finish, cached=True)

    def cached_many(self, fingerprints: Iterable[str], *, max_age_s: float | None = None) -> dict[str, Completion]:
        """The cached answers among ``fingerprints``, in a few queries (a run's look-up, done once)."""
        wanted = list(dict.fromkeys(fingerprints))
        found: dict[str, Completion] = {}
        oldest = -math.inf if max_age_s is None else time.time() - max_age_s
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = self._read(
                "SELECT fingerprint, text, model, finish_reason, prompt_tokens, completion_tokens, tokens_estimated "
                f"FROM cache WHERE created_at >= ? AND fingerprint IN ({', '.join('?' * len(chunk))})",
                (oldest, *chunk),
            )
            for key, text, model, finish, prompt, completion, estimated in rows:
                usage = Usage(prompt_tokens=prompt, completion_tokens=completion, estimated=bool(estimated))
                found[key] = Completion(text=text, usage=usage, model=model, finish_reason=finish, cached=True)
        return found

    def recorded(self) -> dict[str, list[Recorded]]:
        """Every query answered ok by a run of this store, by query name: the answers sent first
        (where the recording was made, rather than a replay of it), newest first.  Read once, when
        a replay first misses (a miss is rare, and this walks the results table)."""
        self.flush()
        rows = self._read(
            "SELECT runs.name, r.idx, r.fingerprint, r.name, r.query, runs.settings FROM results r "
            "JOIN runs ON runs.id = r.run_id WHERE r.error_kind IS NULL "
            "ORDER BY r.origin != 'sent', r.recorded_at DESC"
        )
        found: dict[str, list[Recorded]] = {}
        for run, index, key, name, query, settings in rows:
            model = orjson.loads(settings).get("model") or ""
            found.setdefault(name, []).append(Recorded(run, index, key, Query(name, **orjson.loads(query)), model))
        return found

    def cached_servers(self, fingerprint: str) -> int:
        """How many servers' answers to ``fingerprint`` the cache holds (keys ``fingerprint@server``)."""
        rows = self._read("SELECT COUNT(*) FROM cache WHERE fingerprint LIKE ? || '@%'", (fingerprint,))
        return int(rows[0][0])

    def cache(self, fingerprint: str, completion: Completion) -> None:
        """Queue ``completion`` as the cached answer for ``fingerprint`` (errors are never cached)."""
        usage = completion.usage
        self._enqueue(
            "INSERT OR REPLACE INTO cache VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                fingerprint,
                completion.text,
                completion.model,
                completion.finish_reason,
                usage.prompt_tokens,
                usage.completion_tokens,
                int(usage.estimated),
                time.time(),
            ),
        )
