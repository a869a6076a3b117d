"""Client-side request and token rate limits (RPM/TPM) for real, metered APIs: a link of the chain.

Two ``aiolimiter.AsyncLimiter`` leaky buckets over a minute: one counts requests, the other tokens
with a weighted acquire (prompt tokens plus the ``max_tokens`` the query may use, which is how
providers charge a request against TPM).  The link takes its share *per attempt*, so retries are
limited like first tries.  Staying under the limits on the client side avoids 429s instead of
paying for them with retries.

A leaky bucket of ``rpm`` per minute admits a burst of up to ``rpm`` requests at once, then one
every ``60 / rpm`` seconds; aiolimiter reads the running loop's clock, so its waits are exact in
virtual time.  The waits happen inside the query's timeout scope.  ``window_s`` (the
orchestrator's ``rate_window_s``) is the window the provider counts over: OpenAI counts per
minute, Azure OpenAI per 1 or 10 seconds; a shorter window holds the same rate with smaller
bursts (a bucket of ``rpm * window_s / 60``).
"""

from __future__ import annotations

from aiolimiter import AsyncLimiter

from hybrid.chain import Attempt, Next
from hybrid.errors import check_int, check_number
from hybrid.query import Completion, Query
from hybrid.tokens import count_message_tokens


class RateLimits:
    """A chain link that waits, before each attempt, until one more request stays under ``rpm`` and ``tpm``."""

    def __init__(self, *, rpm: int | None = None, tpm: int | None = None, window_s: float = 60.0) -> None:
        for name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None:
                check_int(f"{name} (requests or tokens per minute, or None)", value, minimum=1)
        check_number("rate_window_s", window_s, positive=True, maximum=60.0, unit="seconds")
        self.rpm, self.tpm, self.window_s = rpm, tpm, window_s
        share = window_s / 60.0  # of a minute's quota, per window
        self._requests = AsyncLimiter(max(1.0, rpm * share), window_s) if rpm else None
        self._tokens = AsyncLimiter(max(1.0, tpm * share), window_s) if tpm else None

    @property
    def active(self) -> bool:
        return self._requests is not None or self._tokens is not None

    async def __call__(self, query: Query, attempt: Attempt, call_next: Next) -> Completion:
        if self._requests is not None:
            await self._requests.acquire()
        if self._tokens is not None and self.tpm is not None:
            weight = count_message_tokens(query.messages()) + (query.max_tokens or 0)
            await self._tokens.acquire(min(weight, self._tokens.max_rate))
        return await call_next(query, attempt)
