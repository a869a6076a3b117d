"""When a request leaves the client: the end of the client's own part of a query's latency.

A row's latency is split into the client's part, the server's and the network's (ARCHITECTURE.md,
"Metrics").  The SDK builds and sends requests itself, so the moment its request leaves is only
visible from an httpx2 ``request`` event hook; this module carries that moment from the hook back
to the backend's ``complete`` call.  ``HTTPBackend`` gets the same moment from aiohttp's
``on_request_headers_sent`` trace instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import ClassVar


class SendStamp:
    """When one request is handed to the transport (``left_at``, a reading of ``clock``, the run's
    clock).  The backend opens one per attempt (:meth:`begin` puts it in a context variable); the
    httpx2 ``request`` hook or aiohttp's trace, which run in the same task or thread just before the
    request is sent, stamp it.  The orchestrator subtracts the attempt's start: a thread pool's
    queue, the SDK's work and a busy loop all land in the client's part."""

    CURRENT: ClassVar[ContextVar[SendStamp | None]] = ContextVar("SendStamp.CURRENT", default=None)

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.left_at: float | None = None

    @classmethod
    @contextlib.contextmanager
    def begin(cls, clock: Callable[[], float]) -> Iterator[SendStamp]:
        stamp = cls(clock)
        token = cls.CURRENT.set(stamp)
        try:
            yield stamp
        finally:
            cls.CURRENT.reset(token)

    @classmethod
    def stamp(cls) -> None:
        current = cls.CURRENT.get()
        if current is not None and current.left_at is None:
            current.left_at = current.clock()
