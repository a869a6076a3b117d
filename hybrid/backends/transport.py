"""The seam under :class:`~hybrid.backends.http_backend.HTTPBackend`: a transport moves a request's
bytes to a server and its answer's bytes back, and nothing else.

``HTTPBackend`` is the wire codec: it builds the chat-completions body, reads the answer (JSON or
server-sent events, metered), and maps statuses to the kit's errors.  A :class:`Transport` only
posts bytes, in the manner of httpx's ``BaseTransport`` (aiohttp has no such seam, so this is the
kit's own).  Two ship:

- :class:`AiohttpTransport`, the default: one pooled aiohttp session to a real server;
- :class:`~hybrid.backends.in_process.InProcessTransport`: the request handed to a server object in
  this process (``sim.backend()``), so virtual-time studies run the same codec as the wire.

A transport's failures become the kit's own errors (:meth:`Transport.failure` says which):
:class:`~hybrid.errors.ConnectionFailed` when no answer could be had or the connection broke, and
:class:`~hybrid.errors.InvalidResponse` when an answer arrived but could not be read whole.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from types import SimpleNamespace
from typing import Protocol

import aiohttp
from aiohttp.http_exceptions import ContentEncodingError

from hybrid.backends.response_limits import redirect_loop, undecodable
from hybrid.backends.send_stamp import SendStamp
from hybrid.errors import ConnectionFailed, InvalidResponse, QueryError, exception_chain


class Body(Protocol):
    """An answer's body as it arrives."""

    def iter_any(self) -> AsyncIterator[bytes]:
        """The body's bytes in the pieces they arrive in."""


class Response(Protocol):
    """One answer, as :meth:`Transport.post` yields it (an aiohttp ``ClientResponse`` is one)."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content_length(self) -> int | None: ...

    @property
    def content(self) -> Body: ...

    async def read(self) -> bytes:
        """The whole body (called only when ``content_length`` is declared)."""


class Transport(Protocol):
    """Moves one request's bytes to a server and the answer back (see the module docstring)."""

    async def open(self, *, headers: Mapping[str, str], max_connections: int, redact: Callable[[str], str]) -> None:
        """Make the client: ``headers`` go with every request (the key among them), at most
        ``max_connections`` at once; ``redact`` removes the key from any text put in an error."""

    def post(self, url: str, body: bytes) -> AbstractAsyncContextManager[Response]:
        """POST ``body`` to ``url``; the answer is readable inside the block, and released after it.
        Stamps :class:`~hybrid.backends.send_stamp.SendStamp` when the request leaves."""

    def failure(self, exc: Exception) -> QueryError | None:
        """The kit's error for ``exc``, raised from :meth:`post`'s block, when it is this transport's
        own failure (None otherwise).  Asked only when something failed, so the way an answer
        travels costs nothing extra per call."""

    async def aclose(self) -> None:
        """Release every connection; idempotent."""


async def _stamp_headers_sent(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestHeadersSentParams
) -> None:
    SendStamp.stamp()


class AiohttpTransport:
    """The default :class:`Transport`: one aiohttp session, its pool sized by the orchestrator."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._redact: Callable[[str], str] = str

    def __repr__(self) -> str:
        return "AiohttpTransport()"

    async def open(self, *, headers: Mapping[str, str], max_connections: int, redact: Callable[[str], str]) -> None:
        if self._session is not None:
            return
        self._redact = redact
        connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=max_connections)
        # When the request's headers are on the wire: the end of the client's part of the latency.
        sent = aiohttp.TraceConfig()
        sent.on_request_headers_sent.append(_stamp_headers_sent)
        self._session = aiohttp.ClientSession(
            connector=connector,
            trace_configs=[sent],
            headers=dict(headers),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30.0),
        )

    def post(self, url: str, body: bytes) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        assert self._session is not None, "post() before open()"
        return self._session.post(url, data=body)  # aiohttp's own context manager: nothing added per call

    def failure(self, exc: Exception) -> QueryError | None:
        if isinstance(exc, aiohttp.ClientPayloadError):
            encoding = [e for e in exception_chain(exc) if isinstance(e, ContentEncodingError)]
            if encoding:
                return undecodable(encoding[0].message)
            return InvalidResponse(f"The answer was cut off midway: {type(exc).__name__}")
        if isinstance(exc, aiohttp.TooManyRedirects):
            return redirect_loop(f"{len(exc.history)} redirects")
        if isinstance(exc, aiohttp.ClientResponseError):
            # aiohttp's response errors carry request_info, whose headers hold the API key: keep only the words.
            return InvalidResponse(f"The server's answer could not be read: HTTP {exc.status}, {exc.message}")
        if isinstance(exc, aiohttp.ClientError | OSError):
            return ConnectionFailed(f"Connection failed: {type(exc).__name__}: {self._redact(str(exc))}")
        return None

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
