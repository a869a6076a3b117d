"""The simulator's hot route, ``POST /v1/chat/completions``, served straight off the socket.

Why it exists: at time scale 0 a client benchmark measures the client *and* the simulator, so the
simulator must cost far less per request than the kit's fastest client (``benchmarks/
uvloop_speed.py`` measures how much less; the goal is 2x).  aiohttp's web layer alone (request and response objects,
header multidicts, the router, its stream writer) costs about half of what that client spends per
call.  So this protocol parses chat completions with httptools (llhttp, the parser uvicorn uses),
answers them with :meth:`Simulator.respond <hybrid.sim.openai_protocol.Simulator.respond>` and
:meth:`~hybrid.sim.openai_protocol.Simulator.chat`, the same code the aiohttp route runs, into a
:class:`TransportSink` that writes an answer's head and body in one ``transport.write``.

Every other request (the models, the stats, the Batch API's files and batches) goes to aiohttp
with its connection: when a connection's next request line is not a chat completion, the bytes
received so far are handed to aiohttp's own protocol, which owns that connection from then on (its
routes include chat completions, so a client that mixes routes on one connection gets them all).

What it speaks: HTTP/1.1 keep-alive and 1.0; ``Content-Length`` and chunked request bodies;
``Expect: 100-continue``; JSON answers with ``Content-Length``; SSE answers chunked (1.1) or
ended by closing (1.0); back-pressure from a slow reader; 413 past the body limit; 400 on bytes
that are not HTTP.  A client that goes away cancels its answer, counted as a disconnect, as
aiohttp's handler cancellation does.  Pipelined chat requests are answered in order; a pipelined
request for another route cannot be handed over mid-stream, so it is refused (400) and the
connection closed after the answers before it.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import cast

import httptools

from hybrid.sim.engine import Drop, Rejected
from hybrid.sim.openai_protocol import MAX_BODY_BYTES, Simulator, refuse

CHAT_PATH = b"/v1/chat/completions"
#: A request line longer than this is not a chat completion worth waiting for.
_REQUEST_LINE_LIMIT = 16 * 1024
_REASONS = {status.value: status.phrase for status in HTTPStatus}


def is_chat(method: bytes, target: bytes) -> bool:
    """Whether a request line's method and target are the hot route (any query string allowed)."""
    return method == b"POST" and target.partition(b"?")[0] == CHAT_PATH


class _Request:
    """One chat request as it is parsed: what answering it needs, nothing more."""

    __slots__ = ("authorization", "body", "http11", "keep_alive", "refusal", "url")

    def __init__(self) -> None:
        self.url = b""
        self.authorization: str | None = None
        self.body = bytearray()
        self.keep_alive = True
        self.http11 = True
        self.refusal: Rejected | None = None  # answered with this instead (too large, another route)


class LeanConnection(asyncio.Protocol):
    """One client connection: chat completions answered here, anything else handed to ``fallback``
    (aiohttp's protocol factory).  ``connections`` holds the ones still served here."""

    def __init__(
        self, simulator: Simulator, fallback: Callable[[], asyncio.Protocol], connections: set[LeanConnection]
    ) -> None:
        self.simulator = simulator
        self.fallback = fallback
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.between_requests = True  # the next byte starts a request line
        self.partial_line = b""  # the start of a request line still arriving
        self.current: _Request | None = None
        self.pending: deque[_Request] = deque()
        self.task: asyncio.Task[None] | None = None
        self.handover: bytearray | None = None  # bytes for aiohttp, once the answers under way are sent
        self.writable = asyncio.Event()
        self.writable.set()

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass, but is one
        self.loop = asyncio.get_running_loop()  # once: each look-up costs a getpid
        self.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.handover is not None:
            self.handover += data
            return
        if self.between_requests:  # which route does the next request go to?
            data = self.partial_line + data
            end = data.find(b"\r\n")
            if end < 0:
                self.partial_line = data
                if len(data) > _REQUEST_LINE_LIMIT:
                    self._refuse_malformed()
                return
            self.partial_line = b""
            method, _, rest = data[:end].partition(b" ")
            if not is_chat(method, rest.partition(b" ")[0]):
                self.handover = bytearray(data)
                if self.task is None:
                    self._hand_over()
                else:
                    self.transport.pause_reading()  # type: ignore[union-attr]
                return
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._refuse_malformed()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.writable.set()
        if self.task is not None:
            self.task.cancel()  # the client left: its answer ends (a disconnect)

    # -- httptools callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.between_requests = False
        self.current = _Request()

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None and self.transport is not None
        size = len(name)  # compare lengths first: most headers are neither
        if size == 13 and name.lower() == b"authorization":
            self.current.authorization = value.decode("latin-1")
        elif size == 6 and name.lower() == b"expect" and value.lower() == b"100-continue":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_headers_complete(self) -> None:
        request = self.current
        assert request is not None
        request.keep_alive = self.parser.should_keep_alive()
        request.http11 = self.parser.get_http_version() == "1.1"
        if not is_chat(self.parser.get_method(), request.url):  # pipelined behind a chat request
            request.refusal = Rejected(
                400, "Send requests for routes other than /v1/chat/completions on a connection of their own."
            )

    def on_body(self, body: bytes) -> None:
        request = self.current
        assert request is not None
        if request.refusal is not None:
            return
        if len(request.body) + len(body) > MAX_BODY_BYTES:
            request.refusal = Rejected(413, f"The request body is larger than {MAX_BODY_BYTES} bytes.")
            request.body = bytearray()
        else:
            request.body += body

    def on_message_complete(self) -> None:
        assert self.current is not None
        if self.current.refusal is not None:
            self.current.keep_alive = False
        self.pending.append(self.current)
        self.current, self.between_requests = None, True
        if self.task is None:
            self.task = self.loop.create_task(self._serve())

    # -- answering ----------------------------------------------------------------------------
    async def _serve(self) -> None:
        """Answer the parsed requests in order, then hand the connection over if aiohttp is next."""
        transport = self.transport
        assert transport is not None
        simulator = self.simulator
        try:
            while self.pending:
                request = self.pending.popleft()
                sink = TransportSink(self, request)
                if request.refusal is not None:
                    work = functools.partial(refuse, request.refusal)
                else:
                    work = functools.partial(simulator.chat, bytes(request.body), request.authorization, sink)
                try:
                    await simulator.respond(work, sink)
                except Drop:
                    transport.abort()
                    return
                if not request.keep_alive:
                    transport.close()
                    return
        finally:
            self.task = None
        if self.handover is not None:
            self._hand_over()

    def _hand_over(self) -> None:
        """Give the connection, and what it sent since the last answer, to aiohttp for good."""
        transport, data = self.transport, bytes(self.handover or b"")
        self.handover = None
        assert transport is not None
        if transport.is_closing():
            return
        self.connections.discard(self)
        protocol = self.fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if not transport.is_reading():
            transport.resume_reading()
        protocol.data_received(data)

    def _refuse_malformed(self) -> None:
        """Bytes that are not an HTTP request: say so, as aiohttp does, and close."""
        assert self.transport is not None
        self.handover = bytearray()  # read nothing more
        if self.task is None:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()
        else:
            self.pending.clear()
            self.transport.abort()


class TransportSink:
    """A :class:`~hybrid.answer_sink.Sink` onto a lean connection's transport."""

    def __init__(self, connection: LeanConnection, request: _Request) -> None:
        assert connection.transport is not None
        self.connection = connection
        self.transport = connection.transport
        self.request = request
        self.chunked = False

    def _head(self, status: int, headers: dict[str, str], framing: str) -> bytes:
        """The status line and headers, built as one string and encoded once (this is per request)."""
        head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
        if headers:
            head += "\r\n".join(map(": ".join, headers.items())) + "\r\n"
        head += framing
        if not self.request.keep_alive:
            head += "Connection: close\r\n"
        return (head + "\r\n").encode("latin-1")

    async def whole(self, body: bytes, headers: dict[str, str], status: int = 200) -> None:
        framing = f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.transport.write(self._head(status, headers, framing) + body)

    async def start(self, headers: dict[str, str], content_type: str, content_length: int | None = None) -> None:
        framing = f"Content-Type: {content_type}\r\n"
        if content_length is not None:
            framing += f"Content-Length: {content_length}\r\n"
        elif self.request.http11:
            self.chunked = True
            framing += "Transfer-Encoding: chunked\r\n"
        else:  # HTTP/1.0 has no chunks: the end of the answer is the end of the connection
            self.request.keep_alive = False
        self.transport.write(self._head(200, headers, framing))

    async def write(self, data: bytes) -> None:
        if not self.connection.writable.is_set():
            await self.connection.writable.wait()
        self.transport.write(b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data)

    async def finish(self) -> None:
        if self.chunked:
            self.transport.write(b"0\r\n\r\n")


async def close_all(connections: set[LeanConnection]) -> None:
    """Close every connection still served here and wait for their answers to end (server exit)."""
    tasks = [c.task for c in connections if c.task is not None]
    for connection in list(connections):
        if connection.transport is not None:
            connection.transport.abort()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
