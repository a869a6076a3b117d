"""``OpenAIBackend``: queries through the official ``openai`` SDK, the way most users call a model.

One ``openai.AsyncOpenAI`` per backend, on the SDK's aiohttp transport (``DefaultAioHttpClient``)
with connection limits sized to the orchestrator's concurrency and the SDK's own retries off
(``max_retries=0``: the orchestrator is the only retry loop).  Non-streamed answers are read with
``with_raw_response`` and decoded with orjson, which skips building pydantic models per call;
streamed answers go through the SDK's own SSE parser.

For ``mode="threads"`` the backend also holds a synchronous ``openai.OpenAI`` client that worker
threads share: the seeds' legacy pattern, kept as a baseline.  A thread cannot be cancelled, so in
that mode a timeout or an interrupt abandons the call instead of stopping it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Literal, Unpack

import httpx2
import openai
import orjson

from hybrid.backends import sdk_errors
from hybrid.backends.batch_api import MAX_FILE_BYTES, SDKBatchAPI
from hybrid.backends.endpoint import Endpoint, EndpointSettings
from hybrid.backends.openai_wire import (
    StreamAssembler,
    completion_from_body,
    request_body,
    server_report,
    usage_from,
)
from hybrid.backends.response_limits import (
    httpx2_event_hooks,
    sdk_client_settings,
)
from hybrid.backends.send_stamp import SendStamp
from hybrid.errors import ConfigError, QueryError, check_choice
from hybrid.query import Completion, Query

Transport = Literal["aiohttp", "httpx"]


def translate(exc: Exception, endpoint: Endpoint, *, received_chunks: int = 0) -> QueryError:
    """The kit's error for anything the ``openai`` SDK or its transport raised (:func:`sdk_errors.translate`)."""
    return sdk_errors.translate(exc, endpoint, sdk=openai, received_chunks=received_chunks)


class OpenAIBackend(Endpoint):
    """Queries through ``openai.AsyncOpenAI`` (and ``openai.OpenAI`` for the threads baseline).

    With no arguments it reads ``OPENAI_BASE_URL``, ``OPENAI_API_KEY`` and ``OPENAI_MODEL``, like
    the SDK.  ``transport="httpx"`` uses the SDK's default transport instead of aiohttp.
    """

    name = "openai"
    supports_threads = True

    def __init__(self, *, transport: Transport = "aiohttp", **settings: Unpack[EndpointSettings]) -> None:
        super().__init__(**settings)
        self.transport: Transport = check_choice("OpenAIBackend(transport=...)", transport, ("aiohttp", "httpx"))
        self._client: openai.AsyncOpenAI | None = None
        self._sync_client: openai.OpenAI | None = None
        self._sync_client_lock = threading.Lock()
        self._batch_api: SDKBatchAPI | None = None

    async def _connect(self) -> None:
        if self._client is not None:
            return
        settings = sdk_client_settings(self.max_connections, self.max_response_bytes)
        http_client: httpx2.AsyncClient = (
            openai.DefaultAioHttpClient(**settings)
            if self.transport == "aiohttp"
            else openai.DefaultAsyncHttpxClient(**settings)
        )
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url, api_key=self._api_key, max_retries=0, http_client=http_client
        )

    @property
    def client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            raise ConfigError("The backend is not open: use it inside `async with Orchestrator(...)`.")
        return self._client

    def recipe(self) -> dict[str, Any]:
        return {**super().recipe(), "transport": self.transport}

    def batch_api(self) -> SDKBatchAPI:
        """The provider's Batch API (``mode="batch"``), on a client of its own whose response cap
        fits result files; made once, closed with the backend."""
        if self._batch_api is None:
            self.client  # noqa: B018 - refuses, with advice, when the backend is not open
            hooks = httpx2_event_hooks(MAX_FILE_BYTES)
            http_client = openai.DefaultAsyncHttpxClient(timeout=httpx2.Timeout(600.0, connect=30.0), event_hooks=hooks)
            client = openai.AsyncOpenAI(
                base_url=self.base_url, api_key=self._api_key, max_retries=0, http_client=http_client
            )
            self._batch_api = SDKBatchAPI(client, lambda exc: translate(exc, self), self.scrubbed_bytes)
        return self._batch_api

    async def complete(self, query: Query) -> Completion:
        clock = asyncio.get_running_loop().time
        with SendStamp.begin(clock) as stamp:
            body = request_body(query, self.model)
            client = self.client
            if query.stream:
                return self.scrubbed(await self._complete_streamed(client, query, body, stamp))
            try:
                raw = await client.chat.completions.with_raw_response.create(**body)
                return self.scrubbed(_whole(query, raw.http_response, body["model"], stamp))
            except Exception as exc:
                raise translate(exc, self) from None

    async def _complete_streamed(
        self, client: openai.AsyncOpenAI, query: Query, body: dict[str, Any], stamp: SendStamp
    ) -> Completion:
        assembler = StreamAssembler(query, body["model"], stamp.clock)
        try:
            stream = await client.chat.completions.create(**body)
            async with stream:
                async for chunk in stream:
                    _feed(assembler, chunk)
        except Exception as exc:
            raise translate(exc, self, received_chunks=assembler.chunks) from None
        return _streamed(assembler, stream.response, stamp)

    def _sync(self) -> openai.OpenAI:
        """The synchronous client, made once by whichever pool thread needs it first (the lock keeps
        the other threads from each making, and leaking, one of their own)."""
        with self._sync_client_lock:
            if self._sync_client is None:
                limits = httpx2.Limits(
                    max_connections=self.max_connections, max_keepalive_connections=self.max_connections
                )
                # A thread cannot be cancelled: the sync client itself must give up at the query's timeout,
                # or a server that never answers keeps the thread (and interpreter exit) waiting forever.
                timeout = httpx2.Timeout(self.timeout, connect=min(30.0, self.timeout or 30.0))
                self._sync_client = openai.OpenAI(
                    base_url=self.base_url,
                    api_key=self._api_key,
                    max_retries=0,
                    http_client=openai.DefaultHttpxClient(
                        limits=limits,
                        timeout=timeout,
                        event_hooks=httpx2_event_hooks(self.max_response_bytes, blocking=True),
                    ),
                )
            return self._sync_client

    def complete_blocking(self, query: Query) -> Completion:
        """The same call on the synchronous client, for ``mode="threads"``."""
        with SendStamp.begin(time.monotonic) as stamp:  # the real loop's clock, read from this thread
            client = self._sync()
            body = request_body(query, self.model)
            assembler = StreamAssembler(query, body["model"])
            try:
                if not query.stream:
                    raw = client.chat.completions.with_raw_response.create(**body)
                    return self.scrubbed(_whole(query, raw.http_response, body["model"], stamp))
                with client.chat.completions.create(**body) as stream:
                    for chunk in stream:
                        _feed(assembler, chunk)
            except Exception as exc:
                raise translate(exc, self, received_chunks=assembler.chunks) from None
            return self.scrubbed(_streamed(assembler, stream.response, stamp))

    async def aclose(self) -> None:
        batch_api, self._batch_api = self._batch_api, None
        if batch_api is not None:
            await batch_api.client.close()
        client, self._client = self._client, None
        sync_client, self._sync_client = self._sync_client, None
        if client is not None:
            await client.close()
        if sync_client is not None:
            sync_client.close()


def _whole(query: Query, response: httpx2.Response, model: str, stamp: SendStamp) -> Completion:
    """A non-streamed answer, with when its request left and what the server reported."""
    return completion_from_body(
        query, orjson.loads(response.content), model, headers=response.headers, left_at=stamp.left_at
    )


def _streamed(assembler: StreamAssembler, response: httpx2.Response, stamp: SendStamp) -> Completion:
    """A streamed answer, with when its request left and what the server reported."""
    return assembler.result(left_at=stamp.left_at, server=server_report(response.headers, assembler.timings))


def _feed(assembler: StreamAssembler, chunk: Any) -> None:
    """Feed one SDK chunk object; the SDK does not validate field types, so the assembler does."""
    timings = (chunk.model_extra or {}).get("timings")
    if timings is not None:
        assembler.timings = timings
    if chunk.choices:
        choice = chunk.choices[0]
        delta = choice.delta
        assembler.feed(None if delta is None else delta.content, choice.finish_reason, None)
    usage = chunk.usage
    if usage is not None:
        details = getattr(usage, "prompt_tokens_details", None)
        counts = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": getattr(details, "cached_tokens", None)},
        }
        assembler.feed(None, None, usage_from(counts))
