"""``HTTPBackend``: ``/v1/chat/completions`` spoken directly over one shared aiohttp session.

The same results as :class:`~hybrid.backends.openai_backend.OpenAIBackend`, at a fraction of the
client CPU per call: no SDK request building, no pydantic models, orjson for both directions.  It
exists for benchmarks at high request rates, where the SDK's own cost (about 1.7 ms of CPU per call
on a 2-core machine, against 0.12 ms for a raw aiohttp POST) would otherwise be what is measured.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import aiohttp
import orjson
from aiohttp.http_exceptions import ContentEncodingError

from hybrid.backends.endpoint import Endpoint
from hybrid.backends.openai_wire import (
    StreamAssembler,
    completion_from_body,
    error_for_status,
    error_message,
    feed_event_line,
    json_answer,
    request_body,
    server_report,
)
from hybrid.backends.response_limits import (
    ResponseMeter,
    redirect_loop,
    undecodable,
)
from hybrid.backends.send_stamp import SendStamp
from hybrid.errors import ConfigError, ConnectionFailed, InvalidResponse, QueryError, exception_chain
from hybrid.query import Completion, Query


async def _stamp_headers_sent(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestHeadersSentParams
) -> None:
    SendStamp.stamp()


class HTTPBackend(Endpoint):
    """A lean aiohttp client for OpenAI-compatible servers; the constructor is :class:`Endpoint`'s
    (``base_url``, ``api_key``, ``model``, ``check_reachable``, ``max_response_bytes``)."""

    name = "http"

    _session: aiohttp.ClientSession | None = None

    @property
    def _url(self) -> str:
        return self.base_url + "/chat/completions"

    async def _connect(self) -> None:
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=self.max_connections)
        # When the request's headers are on the wire: the end of the client's part of the latency.
        sent = aiohttp.TraceConfig()
        sent.on_request_headers_sent.append(_stamp_headers_sent)
        self._session = aiohttp.ClientSession(
            connector=connector,
            trace_configs=[sent],
            headers={"Authorization": f"Bearer {self._api_key}", "Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30.0),
        )

    def complete_blocking(self, query: Query) -> Completion:
        raise ConfigError("HTTPBackend has no synchronous client; mode='threads' needs OpenAIBackend.")

    async def complete(self, query: Query) -> Completion:
        if self._session is None:
            raise ConfigError("The backend is not open: use it inside `async with Orchestrator(...)`.")
        with SendStamp.begin(asyncio.get_running_loop().time) as stamp:
            return await self._post(query, stamp)

    async def _post(self, query: Query, stamp: SendStamp) -> Completion:
        assert self._session is not None
        body = request_body(query, self.model)
        assembler = StreamAssembler(query, body["model"], stamp.clock) if query.stream else None
        try:
            async with self._session.post(self._url, data=orjson.dumps(body)) as response:
                if response.status >= 400:
                    raise await self._status_error(response)
                if assembler is None:
                    answer = json_answer(await self._read(response))
                    return completion_from_body(
                        query, answer, body["model"], headers=response.headers, left_at=stamp.left_at
                    )
                await self._read_events(response, assembler)
                return assembler.result(
                    left_at=stamp.left_at, server=server_report(response.headers, assembler.timings)
                )
        except QueryError as exc:
            raise exc.detached() from None
        except aiohttp.ClientPayloadError as exc:
            encoding = [e for e in exception_chain(exc) if isinstance(e, ContentEncodingError)]
            if encoding:
                raise undecodable(encoding[0].message) from None
            raise InvalidResponse(f"The answer was cut off midway: {type(exc).__name__}") from None
        except aiohttp.TooManyRedirects as exc:
            raise redirect_loop(f"{len(exc.history)} redirects") from None
        except aiohttp.ClientResponseError as exc:
            # aiohttp's response errors carry request_info, whose headers hold the API key: keep only the words.
            raise InvalidResponse(f"The server's answer could not be read: HTTP {exc.status}, {exc.message}") from None
        except (aiohttp.ClientError, OSError) as exc:
            if assembler is not None and assembler.chunks:
                raise InvalidResponse(f"The stream was cut off after {assembler.chunks} chunks.") from None
            raise ConnectionFailed(f"Connection failed: {type(exc).__name__}: {self.redact(str(exc))}") from None

    async def _status_error(self, response: aiohttp.ClientResponse) -> QueryError:
        """The kit's error for an HTTP error answer, with the server's message (key redacted) when it sent one."""
        try:
            parsed: object = orjson.loads(await self._read(response))
        except orjson.JSONDecodeError:
            parsed = None
        message = self.redact(error_message(parsed, response.status))
        return error_for_status(response.status, message, response.headers)

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        """The whole body, never more than ``max_response_bytes`` in memory.  A declared length
        within the limit is read in one go (aiohttp reads exactly that much: the fast, common
        case); a body of unknown length is metered as it arrives."""
        declared = response.content_length
        if declared is not None:
            if declared > self.max_response_bytes:
                raise InvalidResponse(
                    f"The response declares {declared:,} bytes, more than max_response_bytes="
                    f"{self.max_response_bytes:,}. Pass a larger max_response_bytes= to the backend if such answers "
                    "are expected."
                )
            return await response.read()
        meter = ResponseMeter(self.max_response_bytes, event_stream=False)
        body = bytearray()
        async for part in response.content.iter_any():
            body += meter.count(part)
        return bytes(body)

    async def _read_events(self, response: aiohttp.ClientResponse, assembler: StreamAssembler) -> None:
        """Feed the SSE ``data:`` events of ``response`` to ``assembler`` until ``[DONE]``, metered
        (lines are split here rather than by aiohttp's ``readline``, whose own limit raises a bare
        ``ValueError``)."""
        meter = ResponseMeter(self.max_response_bytes, event_stream=True)
        pending = b""
        async for part in response.content.iter_any():
            *lines, pending = (pending + meter.count(part)).split(b"\n")
            for line in lines:
                if feed_event_line(assembler, line):
                    return

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
