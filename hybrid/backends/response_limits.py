"""How much one HTTP response may hold, and how a body the server cannot deliver is reported.

A server that never stops sending (an endless 200 body, error body or event stream) would otherwise
be buffered until the query's timeout: gigabytes within seconds, enough to kill a notebook kernel.
Every response the HTTP backends read passes through a :class:`ResponseMeter`, which fails the
query with :class:`~hybrid.errors.InvalidResponse` as soon as the response grows past
``max_response_bytes`` (default 32 MiB, a constructor argument of both backends), or, in an event
stream, as soon as one line grows past :data:`MAX_EVENT_LINE_BYTES` (a real chunk is a few hundred
bytes).  Memory per query is thus bounded whatever the server does.

``HTTPBackend`` counts the bytes aiohttp hands over (after decompression); ``OpenAIBackend`` counts
the bytes on the wire, through a response hook that wraps httpx2's body stream
(:func:`httpx2_event_hooks`), because the SDK reads bodies itself.  The same hooks stamp when
each request leaves (:class:`~hybrid.backends.send_stamp.SendStamp`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2

from hybrid.backends.send_stamp import SendStamp
from hybrid.errors import InvalidResponse

#: The default cap on one response, in bytes.
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
#: The longest line an event stream may send.
MAX_EVENT_LINE_BYTES = 512 * 1024


class ResponseMeter:
    """Counts one response's bytes as they arrive and raises once a limit is passed."""

    __slots__ = ("_line", "event_stream", "max_bytes", "received")

    def __init__(self, max_bytes: int, *, event_stream: bool) -> None:
        self.max_bytes = max_bytes
        self.event_stream = event_stream
        self.received = 0
        self._line = 0  # bytes of the event-stream line not yet ended

    def count(self, data: bytes) -> bytes:
        """``data``, after checking that the response (and its current line) stays within limits."""
        self.received += len(data)
        if self.received > self.max_bytes:
            raise InvalidResponse(
                f"The response grew past max_response_bytes={self.max_bytes:,}; the server kept sending. "
                "Pass a larger max_response_bytes= to the backend if such answers are expected."
            )
        if self.event_stream:
            self._check_lines(data)
        return data

    def _check_lines(self, data: bytes) -> None:
        first_end = data.find(b"\n")
        if first_end < 0:
            self._line += len(data)
            longest = self._line
        else:
            longest = max(self._line + first_end, max(map(len, data[first_end + 1 :].split(b"\n"))))
            self._line = len(data) - data.rfind(b"\n") - 1
        if longest > MAX_EVENT_LINE_BYTES:
            raise InvalidResponse(
                f"The event stream sent a line longer than {MAX_EVENT_LINE_BYTES:,} bytes; it is not a chat stream."
            )


def undecodable(detail: str) -> InvalidResponse:
    """The error for a body that does not match its ``Content-Encoding`` (the same on both backends)."""
    return InvalidResponse(f"The server's answer could not be decoded (Content-Encoding does not match it): {detail}")


def redirect_loop(detail: str) -> InvalidResponse:
    """The error for a server that keeps redirecting (the same on both backends)."""
    return InvalidResponse(f"The server redirected too many times: {detail}")


def _meter_for(response: httpx2.Response, max_bytes: int) -> ResponseMeter:
    event_stream = response.headers.get("content-type", "").startswith("text/event-stream")
    return ResponseMeter(max_bytes, event_stream=event_stream)


class _MeteredAsyncStream(httpx2.AsyncByteStream):
    def __init__(self, inner: Any, meter: ResponseMeter) -> None:
        self._inner = inner
        self._meter = meter

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._inner:
            yield self._meter.count(part)

    async def aclose(self) -> None:
        await self._inner.aclose()


class _MeteredSyncStream(httpx2.SyncByteStream):
    def __init__(self, inner: Any, meter: ResponseMeter) -> None:
        self._inner = inner
        self._meter = meter

    def __iter__(self) -> Iterator[bytes]:
        for part in self._inner:
            yield self._meter.count(part)

    def close(self) -> None:
        self._inner.close()


#: Only the connect phase has an HTTP-level timeout; the per-query timeout is the orchestrator's scope.
SDK_HTTP_TIMEOUT = httpx2.Timeout(None, connect=30.0)


def sdk_client_settings(max_connections: int, max_response_bytes: int) -> dict[str, Any]:
    """What an official SDK's async httpx2 client is made with (OpenAI's and Anthropic's take the
    same): a pool of ``max_connections`` kept alive, only a connect timeout, the metering hooks."""
    return {
        "limits": httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        "timeout": SDK_HTTP_TIMEOUT,
        "event_hooks": httpx2_event_hooks(max_response_bytes),
    }


def httpx2_event_hooks(max_bytes: int, *, blocking: bool = False) -> dict[str, list[Any]]:
    """``event_hooks=`` for an httpx2 client: each response's body stream is metered before anyone
    reads it, and each request's :class:`SendStamp` is stamped as it leaves."""
    if blocking:

        def sent_sync(request: httpx2.Request) -> None:
            SendStamp.stamp()

        def meter_sync(response: httpx2.Response) -> None:
            response.stream = _MeteredSyncStream(response.stream, _meter_for(response, max_bytes))

        return {"request": [sent_sync], "response": [meter_sync]}

    async def sent_async(request: httpx2.Request) -> None:
        SendStamp.stamp()

    async def meter_async(response: httpx2.Response) -> None:
        response.stream = _MeteredAsyncStream(response.stream, _meter_for(response, max_bytes))

    return {"request": [sent_async], "response": [meter_async]}
