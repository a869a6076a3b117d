"""When to try a failed query again, and how long to wait first.

The orchestrator is the only retry loop in the kit (the SDK's own retries are off), so one policy
governs every backend.  Backoff is exponential with jitter, so that many queries failing together
spread their retries out instead of hitting the server again in lockstep.  A server's Retry-After
(``retry-after-ms`` first, then ``Retry-After``) takes precedence over the exponential schedule:
the wait is never shorter than what the server asked for, up to ``retry_after_cap``.

Why not tenacity: its ``AsyncRetrying`` can be given a custom wait that reads Retry-After from the
exception, but the per-query attempt count, the one timeout scope around all attempts, and
``CancelledError`` passing straight through are simpler to see in the ten-line loop of
:meth:`hybrid.orchestrator.Orchestrator` than in a callback configuration.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hybrid.errors import QueryError, RateLimited, check_int, check_number

#: Extra wait on top of a server's Retry-After, as a fraction of it, times ``jitter``.
RETRY_AFTER_SPREAD = 0.1


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """Retry policy: up to ``attempts`` tries per query, backoff ``base * 2**(n-1)`` capped at ``cap``.

    ``jitter`` in [0, 1] is the random fraction taken off each backoff ("full jitter" at 1: the wait
    is uniform in ``[0, backoff]``; none at 0).  Only errors marked ``retryable`` are retried.
    """

    attempts: int = 3
    base: float = 0.5
    cap: float = 20.0
    jitter: float = 1.0
    retry_after_cap: float = 60.0

    def __post_init__(self) -> None:
        check_int("Retry(attempts=...) (1 = no retries)", self.attempts, minimum=1)
        for name in ("base", "cap", "retry_after_cap"):
            check_number(f"Retry({name}=...)", getattr(self, name), minimum=0.0, unit="seconds")
        check_number("Retry(jitter=...)", self.jitter, minimum=0.0, maximum=1.0)

    @classmethod
    def never(cls) -> Retry:
        """One attempt per query, no retries."""
        return cls(attempts=1)

    def should_retry(self, error: QueryError, attempt: int) -> bool:
        """Whether attempt number ``attempt`` (1-based), which failed with ``error``, gets another try."""
        return error.retryable and attempt < self.attempts

    def backoff(self, attempt: int) -> float:
        """The un-jittered wait after failed attempt ``attempt``: exponential, capped."""
        return min(self.cap, self.base * 2.0 ** (attempt - 1))

    def delay(self, attempt: int, error: QueryError, rng: random.Random) -> float:
        """Seconds to wait after failed attempt ``attempt`` before the next one."""
        retry_after = error.retry_after_s if isinstance(error, RateLimited) else None
        if retry_after is not None:
            wait = retry_after * (1.0 + RETRY_AFTER_SPREAD * self.jitter * rng.random())
            return min(max(wait, retry_after), self.retry_after_cap)
        return self.backoff(attempt) * (1.0 - self.jitter * rng.random())
