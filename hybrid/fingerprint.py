"""What determines an answer, as one stable key: the cache's key, and how resume recognises a query.

The fingerprint covers the model (the query's, else the backend's), the messages, the sampling
parameters (``max_tokens``, ``temperature``), the response format and the sample index
(:attr:`Query.sample`, so repeated samples at temperature > 0 stay distinct).  It never covers
operational settings (concurrency, timeouts, retries, streaming, the query's name or metadata):
changing how a query is sent does not change what it asks.
"""

from __future__ import annotations

import functools
import hashlib

import orjson

from hybrid.query import Query

#: Bump when the fingerprint's content changes, so old cache entries stop matching.
FINGERPRINT_VERSION = 1


#: The fingerprint's parts as a person names them (a replay miss says which of them changed).
PART_NAMES = {
    "model": "model",
    "messages": "messages",
    "max_tokens": "sampling parameter max_tokens",
    "temperature": "sampling parameter temperature",
    "json_mode": "response format (json_mode)",
    "sample": "sample index",
}


def fingerprint_parts(query: Query, default_model: str) -> dict[str, object]:
    """What the fingerprint hashes, part by part (the keys of :data:`PART_NAMES`)."""
    return {
        "model": query.model or default_model,
        "messages": query.messages(),
        "max_tokens": query.max_tokens,
        "temperature": query.temperature,
        "json_mode": query.json_mode,
        "sample": query.sample,
    }


@functools.lru_cache(maxsize=65536)
def fingerprint(query: Query, default_model: str) -> str:
    """A hex SHA-256 of what determines ``query``'s answer (see the module docstring).  Memoised:
    the cache, resume and the store each ask for it, and a grid asks again on every re-run."""
    content = {"v": FINGERPRINT_VERSION, **fingerprint_parts(query, default_model)}
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()
