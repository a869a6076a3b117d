"""Client-side request and token rate limits (RPM/TPM) for real, metered APIs.

Two ``aiolimiter.AsyncLimiter`` leaky buckets over a minute: one counts requests, the other tokens
with a weighted acquire (prompt tokens plus the ``max_tokens`` the query may use, which is how
providers charge a request against TPM).  Staying under the limits on the client side avoids 429s
instead of paying for them with retries.
"""

from __future__ import annotations

from aiolimiter import AsyncLimiter

from hybrid.errors import ConfigError
from hybrid.query import Query
from hybrid.tokens import count_message_tokens


class RateLimits:
    """Waits, before each attempt, until sending one more request stays under ``rpm`` and ``tpm``."""

    def __init__(self, *, rpm: int | None = None, tpm: int | None = None) -> None:
        for name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer (per minute) or None, got {value!r}.")
        self.rpm, self.tpm = rpm, tpm
        self._requests = AsyncLimiter(rpm, 60.0) if rpm else None
        self._tokens = AsyncLimiter(tpm, 60.0) if tpm else None

    @property
    def active(self) -> bool:
        return self._requests is not None or self._tokens is not None

    async def acquire(self, query: Query) -> None:
        if self._requests is not None:
            await self._requests.acquire()
        if self._tokens is not None and self.tpm is not None:
            weight = count_message_tokens(query.messages()) + (query.max_tokens or 0)  # type: ignore[arg-type]
            await self._tokens.acquire(min(weight, self.tpm))
