"""The simulator as an in-process backend: the same server, no sockets.

``sim.backend(config)`` answers each query by running the HTTP simulator's own request path
(:meth:`Simulator.answer <hybrid.sim.openai_protocol.Simulator.answer>`: validation, rate limits,
faults, slots and queueing, pacing) and parsing the very bytes it would have sent with the same
wire helpers the HTTP backends use (:mod:`hybrid.backends.openai_wire`).  So a study gives the same
texts, tokens, error kinds and attempts through either path; only the transport's overhead is gone.

With no sockets, nothing waits on the outside world: every wait is a timer on the running loop.
That is what lets :func:`hybrid.simulate` run a whole study on a virtual clock, exact and instant.
The threads strategy needs a blocking client, which an in-process engine on the loop cannot be;
``mode="threads"`` is refused with a :class:`~hybrid.errors.ConfigError` (use a served simulator
and ``OpenAIBackend`` to measure the thread pool).

This module is the one place the simulator meets the client side: it imports the core's query
types and wire helpers, which the rest of ``hybrid.sim`` never does.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any, TypeVar

import orjson

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
from hybrid.errors import ConfigError, ConnectionFailed, InvalidResponse, QueryError, check_choice
from hybrid.query import Completion, Query
from hybrid.sim.batch_protocol import COMPLETION_WINDOW, ENDPOINT, BatchService
from hybrid.sim.config import SimConfig
from hybrid.sim.engine import Drop, Engine, Rejected
from hybrid.sim.openai_protocol import Simulator, error_body
from hybrid.tokens import count_message_tokens

T = TypeVar("T")


class _Received:
    """A :class:`~hybrid.sim.openai_protocol.Sink` that parses what the simulator sends, as a client would."""

    def __init__(self, query: Query, model: str) -> None:
        self.query = query
        self.model = model
        self.assembler = StreamAssembler(query, model, asyncio.get_running_loop().time)
        self.body: bytes | None = None
        self.headers: dict[str, str] = {}
        self.partial = False  # part of an answer arrived

    async def whole(self, body: bytes, headers: dict[str, str], status: int = 200) -> None:
        self.body, self.headers = body, headers  # only answers reach it: rejections are raised

    async def start(self, headers: dict[str, str], content_type: str, content_length: int | None = None) -> None:
        self.partial, self.headers = True, headers

    async def write(self, data: bytes) -> None:
        if self.query.stream:
            for line in data.split(b"\n"):
                feed_event_line(self.assembler, line)

    async def finish(self) -> None:
        pass

    def completion(self, left_at: float) -> Completion:
        if self.body is not None:
            return completion_from_body(
                self.query, json_answer(self.body), self.model, headers=self.headers, left_at=left_at
            )
        return self.assembler.result(left_at=left_at, server=server_report(self.headers, self.assembler.timings))


def _translated(rejected: Rejected) -> QueryError:
    """The kit's error for a rejection, parsed from the very body the HTTP route would send."""
    parsed = orjson.loads(error_body(rejected.message, rejected.type, rejected.param, rejected.code))
    return error_for_status(rejected.status, error_message(parsed, rejected.status), rejected.headers)


class _InProcessBatchAPI:
    """The simulator's Batch API without HTTP (a :class:`~hybrid.backends.batch_api.BatchAPI`)."""

    def __init__(self, service: BatchService) -> None:
        self.service = service

    @staticmethod
    def _call(method: Callable[..., T], *args: Any) -> T:
        try:
            return method(*args)
        except Rejected as rejected:
            raise _translated(rejected) from None

    async def upload(self, data: bytes, filename: str) -> str:
        return str(self._call(self.service.upload, data, filename, "batch")["id"])

    async def create(self, input_file_id: str, metadata: dict[str, str]) -> dict[str, Any]:
        body = {"input_file_id": input_file_id, "endpoint": ENDPOINT, "completion_window": COMPLETION_WINDOW}
        return self._call(self.service.create, {**body, "metadata": metadata})

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        return self._call(self.service.retrieve, batch_id)

    async def content(self, file_id: str) -> bytes:
        return self._call(self.service.content, file_id)

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        return self._call(self.service.cancel, batch_id)


class SimBackend:
    """A :class:`~hybrid.backends.protocol.Backend` answered by an in-process simulator."""

    name = "sim"
    supports_threads = False

    def __init__(self, config: SimConfig | None = None, *, model: str = "sim-small") -> None:
        self.simulator = Simulator(config or SimConfig())
        #: The simulated server's Batch API (files and batches), for ``mode="batch"``.
        self.batches = BatchService(self.simulator)
        self.config = self.simulator.config
        self.model = check_choice("sim.backend(model=...)", model, tuple(self.config.profiles))
        self._open = False

    def __repr__(self) -> str:
        return f"SimBackend(model={self.model!r}, seed={self.config.seed}, time_scale={self.config.time_scale})"

    @property
    def engine(self) -> Engine:
        """The simulated server's engine (``backend.engine.stats()`` for its counters)."""
        return self.simulator.engine

    async def open(self, *, max_connections: int = 100, query_timeout: float | None = None) -> None:
        self._open = True

    async def complete(self, query: Query) -> Completion:
        if not self._open:
            raise ConfigError("The backend is not open: use it inside `async with Orchestrator(...)`.")
        body = request_body(query, self.model)
        received = _Received(query, body["model"])
        left_at = asyncio.get_running_loop().time()  # no transport: the request is at the server at once
        engine = self.simulator.engine
        with engine.tracked():
            try:
                await self.simulator.answer(body, received)
            except Rejected as rejected:
                engine.by_status[rejected.status] += 1
                raise _translated(rejected) from None
            except Drop:
                if received.partial or received.assembler.chunks:
                    raise InvalidResponse("The answer was cut off midway (the simulator dropped it).") from None
                raise ConnectionFailed("Connection failed: the simulator dropped the connection.") from None
            except QueryError:
                engine.disconnects += 1  # the client gave up on what it received, as over HTTP
                raise
            except asyncio.CancelledError:
                engine.disconnects += 1
                raise
        engine.by_status[200] += 1
        return received.completion(left_at)

    def batch_api(self) -> _InProcessBatchAPI:
        """The simulator's Batch API, in-process (``mode="batch"``; a virtual clock compresses its hours)."""
        return _InProcessBatchAPI(self.batches)

    @property
    def slots(self) -> int:
        """Requests the simulated server answers at once (a forecast caps concurrency with it)."""
        return self.config.slots

    def forecast(self, query: Query) -> tuple[float, float, float, float]:
        """``query``'s expected completion tokens and latency under the latency model, and the
        latency of its shortest and longest possible answer: what ``orch.estimate`` uses instead of
        history.  Expected values, not this seed's draw: the answer length is uniform between the
        profile's bounds (capped by ``max_tokens``), the jitter log-normal; contention is left out."""
        profile = self.config.profiles[query.model or self.model]
        cap = query.max_tokens if query.max_tokens is not None else profile.max_completion_tokens
        lengths = [min(n, cap) for n in range(profile.min_completion_tokens, profile.max_completion_tokens + 1)]
        prompt = count_message_tokens(query.messages())
        scale = math.exp(profile.jitter**2 / 2) * self.config.time_scale  # the log-normal factor's mean

        def seconds(completion: float) -> float:
            return (profile.ttft_s + prompt / profile.prompt_tps + completion / profile.completion_tps) * scale

        completion = sum(lengths) / len(lengths)
        return completion, seconds(completion), seconds(min(lengths)), seconds(max(lengths))

    def complete_blocking(self, query: Query) -> Completion:
        raise ConfigError(
            "sim.backend() answers on the event loop and has no blocking client, so mode='threads' cannot use it. "
            "To measure a thread pool, serve the simulator (sim.serve) and use OpenAIBackend."
        )

    async def aclose(self) -> None:
        self._open = False


def backend(config: SimConfig | None = None, *, model: str = "sim-small") -> SimBackend:
    """The simulator's engine as an in-process backend: ``Orchestrator(sim.backend(SimConfig(seed=7)))``."""
    return SimBackend(config, model=model)
