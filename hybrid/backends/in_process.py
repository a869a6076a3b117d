"""A server in this process, reached with no sockets: the transport under ``sim.backend()``.

:class:`InProcessTransport` is a :class:`~hybrid.backends.transport.Transport` (the idea of httpx's
``MockTransport``): it hands each request's bytes to a server object's ``handle`` and gives the
codec (:class:`~hybrid.backends.http_backend.HTTPBackend`) the answer's bytes as the server writes
them, streamed events one by one.  So a study through ``sim.backend()`` parses exactly what the wire
would carry, with the same code; only the sockets are gone, and with them every wait that is not a
timer on the running loop, which is what lets :func:`hybrid.simulate` run on a virtual clock.

:class:`SimBackend` is that codec over this transport, plus what the simulated server offers a
client in the same process: its Batch API (``mode="batch"``), its latency model for
``orch.estimate`` and its counters.  It knows the server only by the :class:`SimulatedServer`
protocol; ``hybrid.sim.backend(config)`` builds the server and this client around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson

from hybrid.answer_sink import Sink
from hybrid.backends.http_backend import HTTPBackend
from hybrid.backends.openai_wire import error_for_status, error_message
from hybrid.backends.send_stamp import SendStamp
from hybrid.errors import ConfigError, ConnectionFailed, InvalidResponse, check_choice
from hybrid.query import Completion, Query

#: The base URL of a server reached in-process (never resolved: nothing here opens a socket).
IN_PROCESS_URL = "http://in-process.invalid/v1"


class Server(Protocol):
    """A server that answers a request handed to it in this process (the simulator's ``Simulator``)."""

    async def handle(self, path: str, headers: Mapping[str, str], body: bytes, sink: Sink) -> None:
        """Answer one POST into ``sink``; a dropped connection raises :class:`ConnectionResetError`."""


class _Answer:
    """One answer as the server writes it (a :class:`~hybrid.answer_sink.Sink`), read by the codec
    as it arrives (a :class:`~hybrid.backends.transport.Response`)."""

    def __init__(self) -> None:
        self.status = 200
        self.headers: Mapping[str, str] = {}
        self.content_length: int | None = None
        self.head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._parts: deque[bytes] = deque()
        self._ended = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    # -- the server's side ----------------------------------------------------------------------
    async def whole(self, body: bytes, headers: dict[str, str], status: int = 200) -> None:
        self.status, self.headers, self.content_length = status, headers, len(body)
        self._parts.append(body)
        self._ended = True
        self._began()

    async def start(self, headers: dict[str, str], content_type: str, content_length: int | None = None) -> None:
        self.headers, self.content_length = headers, content_length
        self._began()

    async def write(self, data: bytes) -> None:
        self._parts.append(data)
        self._wake()

    async def finish(self) -> None:
        self._ended = True
        self._wake()

    def ended(self, error: BaseException | None) -> None:
        """The server is done with the request; ``error`` when it stopped without finishing."""
        if not self._ended:
            self._error = error or InvalidResponse("The answer ended before it was complete.")
            self._ended = True
        if not self.head.done():
            self.head.set_exception(error or InvalidResponse("The server ended the request without answering."))
        self._wake()

    def _began(self) -> None:
        if not self.head.done():
            self.head.set_result(None)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- the codec's side -----------------------------------------------------------------------
    @property
    def content(self) -> _Answer:
        return self

    async def iter_any(self) -> AsyncIterator[bytes]:
        while True:
            while self._parts:
                yield self._parts.popleft()
            if self._ended:
                if self._error is not None:
                    raise self._error
                return
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    async def read(self) -> bytes:
        return b"".join([part async for part in self.iter_any()])


class InProcessTransport:
    """A :class:`~hybrid.backends.transport.Transport` to a :class:`Server` in this process."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._headers: Mapping[str, str] = {}

    def __repr__(self) -> str:
        return f"InProcessTransport({type(self.server).__name__})"

    async def open(self, *, headers: Mapping[str, str], max_connections: int, redact: Callable[[str], str]) -> None:
        self._headers = headers

    @contextlib.asynccontextmanager
    async def post(self, url: str, body: bytes) -> AsyncIterator[_Answer]:
        SendStamp.stamp()  # no transport: the request is at the server at once
        answer = _Answer()
        serving = asyncio.get_running_loop().create_task(self._serve(urlsplit(url).path, body, answer))
        try:
            try:
                await answer.head
            except ConnectionResetError as error:  # dropped before any answer: as a socket shows it
                raise ConnectionFailed(f"Connection failed: the server dropped the connection ({error}).") from None
            try:
                yield answer
            except ConnectionResetError:  # the server dropped it midway through the body
                raise InvalidResponse("The answer was cut off midway (the server dropped the connection).") from None
        finally:
            if not serving.done():  # the client stopped reading: the server sees it leave (a disconnect)
                serving.cancel()
                await asyncio.wait([serving])

    def failure(self, exc: Exception) -> None:
        return None  # post() raises the kit's errors itself

    async def _serve(self, path: str, body: bytes, answer: _Answer) -> None:
        try:
            await self.server.handle(path, self._headers, body, answer)
        except ConnectionResetError as error:
            answer.ended(error)
        else:
            answer.ended(None)

    async def aclose(self) -> None:
        pass


class SimulatedServer(Server, Protocol):
    """What :class:`SimBackend` uses of the simulator (``hybrid.sim.Simulator``), beyond :class:`Server`."""

    config: Any
    engine: Any

    def forecast(self, model: str, messages: list[dict[str, Any]], max_tokens: int | None) -> tuple[float, ...]: ...


class BatchServer(Protocol):
    """The simulator's Batch API in this process (``hybrid.sim.batch_protocol.BatchService``)."""

    def call(self, operation: str, *args: Any) -> tuple[int, Any, dict[str, str]]: ...


class _InProcessBatchAPI:
    """The server's Batch API without HTTP (a :class:`~hybrid.backends.batch_api.BatchAPI`); a
    refusal is read from the error body its HTTP route would send."""

    def __init__(self, service: BatchServer, scrubbed: Callable[[bytes], bytes]) -> None:
        self.service = service
        self._scrubbed = scrubbed  # the key out of a result file, as for any provider

    def _call(self, operation: str, *args: Any) -> Any:
        status, result, headers = self.service.call(operation, *args)
        if status >= 400:
            raise error_for_status(status, error_message(orjson.loads(result), status), headers)
        return result

    async def upload(self, data: bytes, filename: str) -> str:
        return str(self._call("upload", data, filename, "batch")["id"])

    async def create(self, input_file_id: str, metadata: dict[str, str]) -> dict[str, Any]:
        body = {"input_file_id": input_file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        result: dict[str, Any] = self._call("create", {**body, "metadata": metadata})
        return result

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("retrieve", batch_id)
        return result

    async def content(self, file_id: str) -> bytes:
        return self._scrubbed(bytes(self._call("content", file_id)))

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("cancel", batch_id)
        return result


class SimBackend(HTTPBackend):
    """``sim.backend()``: :class:`HTTPBackend`'s codec over an :class:`InProcessTransport` to a simulator."""

    name = "sim"

    def __init__(self, simulator: SimulatedServer, batches: BatchServer, *, model: str = "sim-small") -> None:
        self.simulator = simulator
        #: The simulated server's Batch API (files and batches), for ``mode="batch"``.
        self.batches = batches
        self.config = simulator.config
        check_choice("sim.backend(model=...)", model, tuple(self.config.profiles))
        super().__init__(
            base_url=IN_PROCESS_URL,
            api_key=self.config.api_key or "sim",
            model=model,
            check_reachable=False,
            transport=InProcessTransport(simulator),
            # Simulators built alike answer alike: they share cached answers, in any process.
            identity=f"in-process simulator {hashlib.sha256(repr(self.config).encode()).hexdigest()[:16]}",
        )

    def __repr__(self) -> str:
        return f"SimBackend(model={self.model!r}, seed={self.config.seed}, time_scale={self.config.time_scale})"

    @property
    def engine(self) -> Any:
        """The simulated server's engine (``backend.engine.stats()`` for its counters)."""
        return self.simulator.engine

    def batch_api(self) -> _InProcessBatchAPI:
        """The simulator's Batch API, in-process (``mode="batch"``; a virtual clock compresses its hours)."""
        return _InProcessBatchAPI(self.batches, self.scrubbed_bytes)

    @property
    def slots(self) -> int:
        """Requests the simulated server answers at once (a forecast caps concurrency with it)."""
        return int(self.config.slots)

    def forecast(self, query: Query) -> tuple[float, ...]:
        """``query``'s expected completion tokens and latency under the latency model, and the
        latency of its shortest and longest possible answer: what ``orch.estimate`` uses instead of history."""
        return self.simulator.forecast(query.model or self.model, query.messages(), query.max_tokens)

    def complete_blocking(self, query: Query) -> Completion:
        raise ConfigError(
            "sim.backend() answers on the event loop and has no blocking client, so mode='threads' cannot use it. "
            "To measure a thread pool, serve the simulator (sim.serve) and use OpenAIBackend."
        )
