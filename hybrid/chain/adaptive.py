"""Adaptive concurrency (``max_concurrency="auto"``): as many queries in flight as the server keeps
up with, and never a request the server said not to send yet.

One object plays two parts.  As the orchestrator's *slot gate* (``async with``) it admits up to
``limit`` queries at once, and ``limit`` moves by AIMD, as TCP's congestion window does:

* it grows while queries wait for a slot and the server keeps up: by one per answer at first
  (slow start: the limit doubles per round trip), by one per ``limit`` answers once the server has
  pushed back; "keeps up" means the server reports (almost) no queueing (``ServerReport.queue_s``
  at most a tenth of its work) or, when it reports nothing, the latency stays within twice the
  shortest seen;
* when the server queued a request it steps down, once per round trip: to the share of the limit
  the server was serving (Little's law on its reported queue and work), or by one without them;
* it halves on a 429 (or a 503 from an overloaded server), once per round trip, since a burst of
  429s is one signal, not many;
* it never exceeds ``ceiling``.

As a *link of the call chain* (closest to the backend, after the client-side rate limits) it holds
every attempt while the server has asked for a pause: a 429's ``Retry-After`` starts one for all
queries, not only the one that got it.  It also reads ``x-ratelimit-remaining-requests`` /
``-tokens`` from each answer, subtracts what was sent after that request, and when nothing would
be left waits out ``x-ratelimit-reset-*`` before the next request, then sends one probe and waits
for its answer to learn what the window holds.  So a limit is slowed for before it is hit.

Each change of the limit is kept (``trace``, loop times): a run's metrics carry its part as
``concurrency_trace`` and :func:`hybrid.plots.concurrency` draws it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from types import TracebackType

from hybrid.chain import Attempt, Next
from hybrid.errors import QueryError, RateLimited, ServerError, check_int
from hybrid.query import Completion, Query
from hybrid.tokens import count_message_tokens

#: A server queue above this fraction of its work means it is not keeping up.
QUEUE_TOLERANCE = 0.1
#: Without server timings: a latency above this multiple of the shortest seen means the same.
LATENCY_TOLERANCE = 2.0
#: The pause after a 429 that gave no Retry-After.
DEFAULT_PAUSE_S = 1.0


class AdaptiveConcurrency:
    """The slot gate and chain link of ``max_concurrency="auto"`` (see the module docstring)."""

    def __init__(self, ceiling: int) -> None:
        check_int("concurrency_ceiling (the most queries 'auto' may have in flight)", ceiling, minimum=1)
        self.ceiling = ceiling
        self.limit = 1
        self.slow_start = True
        self.in_flight = 0
        self._waiting = 0  # queries waiting for a slot: demand beyond the limit
        self._tickets = 0  # the next arrival's place in line
        self._serving = 0  # the place in line admitted next
        self._abandoned: set[int] = set()
        #: (loop time, limit) at every change; the first entry is when the gate opened.
        self.trace: list[tuple[float, int]] = []
        self.pause_until = -math.inf
        self._grown = 0  # answers since the last additive step
        self._last_decrease = -math.inf
        self._fastest = math.inf
        self._queued_shares: deque[float] = deque()  # queue / (queue + service) of recent answers
        self._changed: asyncio.Condition | None = None
        # Rate-limit bookkeeping: attempts in flight (seq -> tokens charged), the newest report's room.
        self._seq = 0
        self._reported = 0  # the newest request whose report is in _requests_left / _tokens_left
        self._sent: dict[int, int] = {}
        self._requests_left: int | None = None
        self._tokens_left: int | None = None
        self._probing = False
        self._mean_completion = 0.0  # completion tokens per answer
        self._answers = 0
        self._mean_charge = 0.0  # tokens charged per request sent
        self._sends = 0

    def open(self, now: float) -> None:
        """Bind to the running loop (the orchestrator opens it with its other per-loop state)."""
        self._changed = asyncio.Condition()
        self.trace.append((now, self.limit))

    # -- the slot gate -------------------------------------------------------------------------
    async def __aenter__(self) -> None:
        changed = self._gate()
        async with changed:
            # First come, first served: a query that just finished must not jump the ones waiting.
            ticket, self._tickets = self._tickets, self._tickets + 1
            self._waiting += 1
            try:
                await changed.wait_for(lambda: self.in_flight < self.limit and self._serving == ticket)
            except BaseException:
                self._abandoned.add(ticket)
                self._skip_abandoned()
                changed.notify_all()
                raise
            finally:
                self._waiting -= 1
            self._serving += 1
            self._skip_abandoned()
            self.in_flight += 1
            changed.notify_all()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        changed = self._gate()
        async with changed:
            self.in_flight -= 1
            changed.notify_all()

    def _skip_abandoned(self) -> None:
        """Tickets of queries cancelled while they waited are never served: pass over them."""
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1

    def _gate(self) -> asyncio.Condition:
        if self._changed is None:
            raise RuntimeError("AdaptiveConcurrency.open() was not called")  # the orchestrator always does
        return self._changed

    def _set_limit(self, limit: int) -> None:
        limit = max(1, min(self.ceiling, limit))
        if limit != self.limit:
            self.limit = limit
            self.trace.append((asyncio.get_running_loop().time(), limit))

    # -- the chain link ------------------------------------------------------------------------
    async def __call__(self, query: Query, attempt: Attempt, call_next: Next) -> Completion:
        clock = asyncio.get_running_loop().time
        charge = self._charge(query)
        await self._wait_for_room(charge)
        self._seq += 1
        seq = self._seq
        self._sent[seq] = charge
        sent = clock()
        try:
            completion = await call_next(query, attempt)
        except QueryError as exc:
            await self._pushed_back(exc, seq, sent, clock())
            raise
        await self._answered(completion, seq, clock() - sent, clock())
        return completion

    def _charge(self, query: Query) -> int:
        """The tokens a request is charged against TPM: its prompt plus ``max_tokens`` (as OpenAI
        charges), or the mean completion seen so far when it sets none."""
        completion = query.max_tokens if query.max_tokens is not None else round(self._mean_completion)
        charge = count_message_tokens(query.messages()) + completion
        self._sends += 1
        self._mean_charge += (charge - self._mean_charge) / self._sends
        return charge

    async def _wait_for_room(self, charge: int) -> None:
        """Hold this attempt while the server asked for a pause, or while its last report (less what
        was sent after it) leaves no room for one more request."""
        changed = self._gate()
        now = asyncio.get_running_loop().time
        async with changed:
            while True:
                if now() < self.pause_until:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), self.pause_until - now())
                    continue
                if not self._no_room(charge):
                    return
                if self._probing or not self._sent:
                    # The reset has passed, or nothing in flight will tell more: send one probe, and
                    # hold the others until an answer says what the window holds.
                    self._probing = False
                    self._requests_left, self._tokens_left = 0, None
                    return
                await changed.wait()

    def _no_room(self, charge: int) -> bool:
        requests_out = self._requests_left is not None and self._requests_left - len(self._sent) <= 0
        tokens_out = self._tokens_left is not None and self._tokens_left - sum(self._sent.values()) < charge
        return requests_out or tokens_out

    async def _pushed_back(self, error: QueryError, seq: int, sent: float, now: float) -> None:
        """A 429 or an overloaded server: halve the limit (once per round trip); a 429 pauses every
        attempt for its Retry-After."""
        changed = self._gate()
        async with changed:
            self._sent.pop(seq, None)
            overloaded = isinstance(error, ServerError) and error.status == 503
            if (isinstance(error, RateLimited) or overloaded) and sent > self._last_decrease:
                self._last_decrease = now
                self.slow_start = False
                self._set_limit(self.limit // 2)
            if isinstance(error, RateLimited):
                wait = DEFAULT_PAUSE_S if error.retry_after_s is None else error.retry_after_s
                self.pause_until = max(self.pause_until, now + wait)
                self._probing = True
            changed.notify_all()

    async def _answered(self, completion: Completion, seq: int, latency: float, now: float) -> None:
        """Read the answer's report: the room left in the server's window (what was sent before this
        request reached the server before it too, so only later sends are subtracted), and whether
        the server keeps up."""
        changed = self._gate()
        async with changed:
            for earlier in [s for s in self._sent if s <= seq]:
                del self._sent[earlier]
            self._answers += 1
            self._mean_completion += (completion.usage.completion_tokens - self._mean_completion) / self._answers
            report = completion.server
            if report is not None and seq > self._reported:  # an older request's report is staler
                self._reported = seq
                self._requests_left, self._tokens_left = report.remaining_requests, report.remaining_tokens
                if self._no_room(max(1, round(self._mean_charge))):  # room for a typical request
                    resets = [r for r in (report.reset_requests_s, report.reset_tokens_s) if r is not None]
                    self.pause_until = max(self.pause_until, now + max(resets, default=DEFAULT_PAUSE_S))
                    self._probing = True
            if self._keeps_up(completion, latency):
                self._grow()
            else:
                self._not_keeping_up(now - latency, now)
            changed.notify_all()

    def _not_keeping_up(self, sent: float, now: float) -> None:
        """The server queued the request: leave slow start and step the limit down, once per round
        trip (only an answer sent after the last step reflects it).  With the server's timings the
        step goes straight to what it serves at once, by Little's law: of ``limit`` requests in
        flight, the share of their time spent in service (over the last ``limit`` answers) is being
        served; otherwise by one."""
        self.slow_start = False
        self._grown = 0
        if sent <= self._last_decrease:
            return
        self._last_decrease = now
        target = self.limit - 1
        if self._queued_shares:
            served = self.limit * (1.0 - sum(self._queued_shares) / len(self._queued_shares))
            target = min(target, math.ceil(served - 0.5))
        self._set_limit(target)

    def _keeps_up(self, completion: Completion, latency: float) -> bool:
        report = completion.server
        if report is not None and report.queue_s is not None and report.service_s:
            self._queued_shares.append(report.queue_s / (report.queue_s + report.service_s))
            while len(self._queued_shares) > self.limit:
                self._queued_shares.popleft()
            return report.queue_s <= QUEUE_TOLERANCE * report.service_s
        self._fastest = min(self._fastest, latency)
        return latency <= LATENCY_TOLERANCE * self._fastest

    def _grow(self) -> None:
        if not self._waiting:
            return  # the limit is not what holds the run back: no evidence more would be served
        if self.slow_start:
            self._set_limit(self.limit + 1)
            return
        self._grown += 1
        if self._grown >= self.limit:
            self._grown = 0
            self._set_limit(self.limit + 1)
