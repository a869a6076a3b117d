"""The simulator's engine: admission, capacity, rate limits, faults, pacing and counters.

It knows nothing about HTTP or JSON: :mod:`hybrid.sim.openai_protocol` turns requests into
:class:`~hybrid.sim.model.Reply` lookups and the engine's decisions into OpenAI-shaped answers, so
another wire format (files, batches) or an in-process backend can reuse the same engine.

Decisions are raised as exceptions the protocol layer shapes: :class:`Rejected` (an error status
with headers: 429 from the rate limits or a fault, 503 when the queue is full, injected 5xx) and
:class:`Drop` (close the connection without an answer).  Every wait is on the running loop's
clock (``asyncio.sleep``, ``loop.time()``), so the engine runs the same on a virtual clock.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from hybrid.sim.config import ModelProfile, SimConfig
from hybrid.sim.model import FaultPlan, Pace, Reply, ReplyModel, pace
from hybrid.sim.prefix_cache import PrefixCache


class Rejected(Exception):
    """Answer with an error status: OpenAI's ``error`` fields and any headers (Retry-After...)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}


class Drop(Exception):
    """Close the connection without an answer (the ``drop`` and ``truncate`` faults)."""


class SlidingWindow:
    """Requests and tokens seen over the last ``window_s`` seconds, for RPM/TPM limits."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._events: deque[tuple[float, int]] = deque()
        self.tokens = 0

    def purge(self, now: float) -> None:
        while self._events and self._events[0][0] <= now - self.window_s:
            self.tokens -= self._events.popleft()[1]

    @property
    def requests(self) -> int:
        return len(self._events)

    def wait_until_free(self, now: float, tokens_needed: int, tpm: int | None) -> float:
        """Seconds until the window has room for one more request of ``tokens_needed``."""
        freed = self.tokens
        for at, tokens in self._events:
            freed -= tokens
            if tpm is None or freed + tokens_needed <= tpm:
                return max(0.0, at + self.window_s - now)
        return self.window_s

    def add(self, now: float, tokens: int) -> None:
        self._events.append((now, tokens))
        self.tokens += tokens


class Engine:
    """One simulated server's state: its model, faults, capacity, limits and counters."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.replies = ReplyModel(config.seed, config.scripts, config.profiles, answers=config.answers)
        self.faults = FaultPlan(config.faults, config.seed)
        self._slots = asyncio.Semaphore(config.slots)
        self._window = SlidingWindow(config.limit_window_s)
        self.busy = 0
        self._waiting = 0
        self.requests = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.disconnects = 0
        self.by_status: Counter[int] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0
        #: Each model's prefix cache, for the models whose profile has one.
        self.prefix_caches = {
            name: PrefixCache(profile.prefix_cache_tokens)
            for name, profile in config.profiles.items()
            if profile.prefix_cache_tokens
        }
        self._in_flight = _InFlight(self)
        #: Set by the runner: how many client connections the server holds open now.
        self.open_connections: Callable[[], int] = lambda: 0

    def stats(self) -> dict[str, Any]:
        """Counters since start: requests seen, in flight now, peak in flight, by status, disconnects."""
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "queued": self._waiting,
            "busy_slots": self.busy,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "disconnects": self.disconnects,
            "open_connections": self.open_connections(),
            "faults": dict(sorted(self.faults.injected.items())),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
        }

    def tracked(self) -> _InFlight:
        """``with engine.tracked():`` counts one request while it is in flight."""
        return self._in_flight

    def admit(self, reply: Reply, max_tokens: int | None) -> dict[str, str]:
        """Apply RPM/TPM limits; return the ``x-ratelimit-*`` headers, or raise a 429.

        Like OpenAI, a request is charged its prompt plus ``max_tokens`` when given (the most it
        may use), else its actual completion.
        """
        cfg = self.config
        if cfg.rpm is None and cfg.tpm is None:
            return {}
        now = asyncio.get_running_loop().time()
        window = self._window
        window.purge(now)
        tokens = reply.prompt_tokens + (max_tokens if max_tokens is not None else reply.completion_tokens)

        def full() -> tuple[bool, bool]:
            return (
                cfg.rpm is not None and window.requests + 1 > cfg.rpm,
                cfg.tpm is not None and window.tokens + tokens > cfg.tpm,
            )

        over_requests, over_tokens = full()
        if not (over_requests or over_tokens):
            window.add(now, tokens)
        # Reset: seconds until the window has room again (for a rejected request: for it; for an
        # admitted one: for one more of its size; 0 while there is room), so a client that reads
        # x-ratelimit-remaining-* = 0 knows how long to hold its next request.
        wait = window.wait_until_free(now, tokens, cfg.tpm) if any(full()) else 0.0
        headers: dict[str, str] = {}
        if cfg.rpm is not None:
            headers["x-ratelimit-limit-requests"] = str(cfg.rpm)
            headers["x-ratelimit-remaining-requests"] = str(max(0, cfg.rpm - window.requests))
            headers["x-ratelimit-reset-requests"] = f"{wait:.3f}s"
        if cfg.tpm is not None:
            headers["x-ratelimit-limit-tokens"] = str(cfg.tpm)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, cfg.tpm - window.tokens))
            headers["x-ratelimit-reset-tokens"] = f"{wait:.3f}s"
        if over_requests or over_tokens:
            what = "requests" if over_requests else "tokens"
            headers["retry-after"] = str(max(1, math.ceil(wait)))
            headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
            raise Rejected(
                429,
                f"Rate limit reached for {what} per minute. Retry after {wait:.3f}s.",
                type_=what,
                code="rate_limit_exceeded",
                headers=headers,
            )
        return headers

    async def before_answer(self, fault: str | None) -> None:
        """Faults that strike before the model runs: error statuses, a hang, a dropped connection."""
        faults = self.config.faults
        if fault == "fail_first":
            status = faults.fail_first_status
            if status == 429:
                fault = "rate_limit"
            else:
                raise Rejected(status, f"Injected failure (status {status}).", type_="server_error")
        if fault == "rate_limit":
            retry = faults.retry_after_s
            raise Rejected(
                429,
                "Rate limit reached (injected). Retry after the indicated time.",
                type_="requests",
                code="rate_limit_exceeded",
                headers={"retry-after": str(math.ceil(retry)), "retry-after-ms": str(round(retry * 1000))},
            )
        if fault == "rate_limit_bare":
            raise Rejected(429, "Too many requests (injected).", type_="requests", code="rate_limit_exceeded")
        if fault == "server_error":
            raise Rejected(500, "The server had an error processing your request (injected).", type_="server_error")
        if fault == "unavailable":
            raise Rejected(503, "The engine is currently overloaded (injected).", type_="server_error")
        if fault == "hang":
            await asyncio.sleep(faults.hang_s)
            raise Rejected(504, "Gave up hanging.", type_="server_error")
        if fault == "drop":
            raise Drop

    async def take_slot(
        self, reply: Reply, model: str, profile: ModelProfile, clock: Callable[[], float]
    ) -> tuple[Pace, float, int]:
        """Take one of the server's slots to answer ``reply`` (queueing for one first, or 503 when
        ``max_queue`` are already waiting); returns the request's pace, the seconds it queued and
        its prompt tokens found in ``model``'s prefix cache (looked up once it has its slot, when
        its prefill starts).
        The caller gives it back with :meth:`release_slot` in a ``finally`` (a plain pair rather
        than a context manager: this is on every request's path).  ``clock`` is the running loop's
        ``time``, which the caller already holds (each ``get_running_loop`` costs a ``getpid``)."""
        if self.config.max_queue is not None and self._waiting >= self.config.max_queue and self._slots.locked():
            raise Rejected(503, "The server is overloaded; retry later.", type_="server_error", code="overloaded")
        arrived = clock()
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        self.busy += 1
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens
        cache = self.prefix_caches.get(model)
        cached = 0 if cache is None else min(cache.take(reply.blocks), reply.prompt_tokens)
        self.cached_tokens += cached
        request_pace = pace(profile, reply, seed=self.config.seed, time_scale=self.config.time_scale, cached=cached)
        return request_pace, clock() - arrived, cached

    def release_slot(self) -> None:
        self.busy -= 1
        self._slots.release()


class _InFlight:
    """The context :meth:`Engine.tracked` returns.  It keeps no state of a request's own, so one
    instance serves every request (a generator-based context manager per request cost more than
    the counting)."""

    __slots__ = ("engine",)

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __enter__(self) -> None:
        engine = self.engine
        engine.requests += 1
        engine.in_flight += 1
        if engine.in_flight > engine.peak_in_flight:
            engine.peak_in_flight = engine.in_flight

    def __exit__(self, *exc_info: object) -> None:
        self.engine.in_flight -= 1


class Pacer:
    """Paces a request in steps without a timer per tiny step: waits shorter than ``MIN_SLEEP_S``
    are owed and paid together, so a fast profile costs one sleep, not eight."""

    MIN_SLEEP_S = 0.001

    def __init__(self) -> None:
        self.owed = 0.0

    async def wait(self, seconds: float) -> None:
        self.owed += seconds
        if self.owed >= self.MIN_SLEEP_S:
            await self.settle()

    async def settle(self) -> None:
        """Pay what is owed, unless it is below the timer's resolution anyway."""
        owed, self.owed = self.owed, 0.0
        if owed >= self.MIN_SLEEP_S:
            await asyncio.sleep(owed)
