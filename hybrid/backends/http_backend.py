"""``HTTPBackend``: ``/v1/chat/completions`` spoken directly, the wire codec over a transport.

The same results as :class:`~hybrid.backends.openai_backend.OpenAIBackend`, at a fraction of the
client CPU per call: no SDK request building, no pydantic models, orjson for both directions.  It
exists for benchmarks at high request rates, where the SDK's own cost (about 1.7 ms of CPU per call
on a 2-core machine, against 0.12 ms for a raw aiohttp POST) would otherwise be what is measured.

This module is the codec: the request body, reading the answer (whole or as server-sent events,
never more than ``max_response_bytes``), and the kit's error for each status.  Moving the bytes is
the :class:`~hybrid.backends.transport.Transport`'s job: aiohttp by default, or the in-process
simulator (``sim.backend()``), so a study on a virtual clock parses exactly what the wire would.
"""

from __future__ import annotations

import asyncio
from typing import Any, Unpack

import orjson

from hybrid.backends.endpoint import Endpoint, EndpointSettings
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
from hybrid.backends.response_limits import ResponseMeter
from hybrid.backends.send_stamp import SendStamp
from hybrid.backends.transport import AiohttpTransport, Response, Transport
from hybrid.errors import ConfigError, ConnectionFailed, InvalidResponse, QueryError
from hybrid.query import Completion, Query


class HTTPBackend(Endpoint):
    """A lean client for OpenAI-compatible servers; the constructor is :class:`Endpoint`'s
    (``base_url``, ``api_key``, ``model``, ``check_reachable``, ``max_response_bytes``) plus
    ``transport``, what moves the bytes (default: a new :class:`~hybrid.backends.transport.AiohttpTransport`)."""

    name = "http"

    def __init__(self, *, transport: Transport | None = None, **settings: Unpack[EndpointSettings]) -> None:
        super().__init__(**settings)
        self.transport: Transport = transport if transport is not None else AiohttpTransport()
        self._url = self.base_url + "/chat/completions"
        self._open = False

    def recipe(self) -> dict[str, Any]:
        if not isinstance(self.transport, AiohttpTransport):
            raise ConfigError(
                f"mode=RayShards rebuilds the backend in each worker from its settings; this one sends through "
                f"{self.transport!r}, which lives in this process. Serve the simulator (sim.serve) and use its URL."
            )
        return super().recipe()

    async def _connect(self) -> None:
        headers = {"Authorization": f"Bearer {self._api_key}", "Content-Type": "application/json"}
        await self.transport.open(headers=headers, max_connections=self.max_connections, redact=self.redact)
        self._open = True

    def complete_blocking(self, query: Query) -> Completion:
        raise ConfigError("HTTPBackend has no synchronous client; mode='threads' needs OpenAIBackend.")

    async def complete(self, query: Query) -> Completion:
        if not self._open:
            raise ConfigError("The backend is not open: use it inside `async with Orchestrator(...)`.")
        with SendStamp.begin(asyncio.get_running_loop().time) as stamp:
            return self.scrubbed(await self._post(query, stamp))

    async def _post(self, query: Query, stamp: SendStamp) -> Completion:
        body = request_body(query, self.model)
        assembler = StreamAssembler(query, body["model"], stamp.clock) if query.stream else None
        try:
            async with self.transport.post(self._url, orjson.dumps(body)) as response:
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
            raise self._cut_off(exc, assembler).detached() from None
        except Exception as exc:
            error = self.transport.failure(exc)
            if error is None:
                raise
            raise self._cut_off(error, assembler) from None

    @staticmethod
    def _cut_off(error: QueryError, assembler: StreamAssembler | None) -> QueryError:
        """A connection that broke after part of a stream arrived is an answer cut off, not no answer."""
        if isinstance(error, ConnectionFailed) and assembler is not None and assembler.chunks:
            return InvalidResponse(f"The stream was cut off after {assembler.chunks} chunks.")
        return error

    async def _status_error(self, response: Response) -> QueryError:
        """The kit's error for an HTTP error answer, with the server's message (key redacted) when it sent one."""
        try:
            parsed: object = orjson.loads(await self._read(response))
        except orjson.JSONDecodeError:
            parsed = None
        message = self.redact(error_message(parsed, response.status))
        return error_for_status(response.status, message, response.headers)

    async def _read(self, response: Response) -> bytes:
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

    async def _read_events(self, response: Response, assembler: StreamAssembler) -> None:
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
        self._open = False
        await self.transport.aclose()
