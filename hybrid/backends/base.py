"""What every backend shares: the interface the orchestrator calls, and the protocol details.

A backend knows *how* to send one query (which client, which transport) and nothing about when,
how many at once, or how often to retry: that is the orchestrator's.  Everything a backend raises
is a :class:`~hybrid.errors.QueryError`; the helpers here translate HTTP statuses and
Retry-After headers once, the same way for every backend.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from hybrid.errors import (
    AuthenticationFailed,
    BadRequest,
    ConfigError,
    InvalidResponse,
    QueryError,
    RateLimited,
    ServerError,
)
from hybrid.query import Completion, Query, Usage
from hybrid.tokens import count_message_tokens, count_tokens

#: How long :meth:`Backend.open` waits for a TCP connection when checking the endpoint is up.
REACHABILITY_TIMEOUT_S = 5.0


class Backend:
    """Sends one query and returns a :class:`Completion`, or raises a :class:`QueryError`.

    Subclasses implement :meth:`_connect`, :meth:`complete` and :meth:`aclose`.  ``complete_blocking``
    exists only where a synchronous client does (the threads baseline).
    """

    name = "backend"

    def __init__(self, *, base_url: str | None, api_key: str | None, model: str | None) -> None:
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"base_url {base_url!r} is not an http(s) URL; use e.g. http://127.0.0.1:8000/v1 "
                "(the simulator's server.url) or set OPENAI_BASE_URL."
            )
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            raise ConfigError(
                "No API key: pass api_key=... or set OPENAI_API_KEY (for the embedded simulator use server.api_key)."
            )
        model = model or os.environ.get("OPENAI_MODEL")
        if not model:
            raise ConfigError("No model: pass model=... (e.g. 'sim-small' on the simulator) or set OPENAI_MODEL.")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.model = model
        self.max_connections = 100

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, model={self.model!r}, api_key=<hidden>)"

    async def open(self, *, max_connections: int = 100, check: bool = True) -> None:
        """Create the client, sized for ``max_connections`` at once; first check the host answers.

        The check is one TCP connect (no request), so an unreachable base URL fails here with a
        message that says what to do, before any query is sent.
        """
        self.max_connections = max_connections
        if check:
            await self.check_reachable()
        await self._connect()

    async def check_reachable(self) -> None:
        parts = urlsplit(self.base_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, port), REACHABILITY_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise ConfigError(
                f"Cannot reach {self.base_url} ({exc.__class__.__name__}). Is the server running? "
                "Start the simulator with `hybrid sim` or `sim.serve()`, or check OPENAI_BASE_URL."
            ) from None
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass

    async def _connect(self) -> None:
        raise NotImplementedError

    async def complete(self, query: Query) -> Completion:
        raise NotImplementedError

    def complete_blocking(self, query: Query) -> Completion:
        raise ConfigError(f"{type(self).__name__} has no synchronous client; mode='threads' needs OpenAIBackend.")

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Backend:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def request_body(self, query: Query) -> dict[str, Any]:
        """The chat-completions JSON body for ``query``."""
        body: dict[str, Any] = {"model": query.model or self.model, "messages": query.messages()}
        if query.max_tokens is not None:
            body["max_tokens"] = query.max_tokens
        if query.temperature is not None:
            body["temperature"] = query.temperature
        if query.json_mode:
            body["response_format"] = {"type": "json_object"}
        if query.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The server's requested wait: ``retry-after-ms``, else ``Retry-After`` (seconds or HTTP date)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    value = lowered.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_for_status(status: int, message: str, headers: Mapping[str, str]) -> QueryError:
    """The kit's error for an HTTP error status."""
    if status == 429:
        return RateLimited(message, retry_after_s=retry_after_seconds(headers))
    if status in (401, 403):
        return AuthenticationFailed(message, status=status)
    if status >= 500 or status in (408, 409):
        return ServerError(message, status=status)
    return BadRequest(message, status=status)


def error_message(body: object, status: int) -> str:
    """The ``error.message`` of an OpenAI-shaped body, or a short description of what came back."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return f"HTTP {status}: {error['message']}"
    return f"HTTP {status}"


def estimated_usage(query: Query, text: str) -> Usage:
    """The kit's token estimate, for servers that send no usage; flagged as estimated."""
    return Usage(
        prompt_tokens=count_message_tokens(query.messages()),  # type: ignore[arg-type]
        completion_tokens=count_tokens(text),
        estimated=True,
    )


class StreamAssembler:
    """Builds a :class:`Completion` from streamed chunks: text, finish reason, usage, time to first token."""

    def __init__(self, query: Query, model: str) -> None:
        self._query = query
        self._started = time.perf_counter()
        self._parts: list[str] = []
        self._model = model
        self.ttft_s: float | None = None
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.chunks = 0

    def feed(self, content: str | None, finish_reason: str | None, usage: tuple[int, int] | None) -> None:
        self.chunks += 1
        if content:
            if self.ttft_s is None:
                self.ttft_s = time.perf_counter() - self._started
            self._parts.append(content)
        if finish_reason is not None:
            self.finish_reason = finish_reason
        if usage is not None:
            self.usage = Usage(prompt_tokens=usage[0], completion_tokens=usage[1])

    def result(self) -> Completion:
        if self.finish_reason is None:
            raise InvalidResponse(f"The stream ended after {self.chunks} chunks without a finish reason (truncated).")
        text = "".join(self._parts)
        return Completion(
            text=text,
            usage=self.usage or estimated_usage(self._query, text),
            model=self._model,
            finish_reason=self.finish_reason,
            ttft_s=self.ttft_s,
        )


def completion_from_body(query: Query, body: object, model: str) -> Completion:
    """Parse a non-streamed chat-completion body (a dict from JSON)."""
    if not isinstance(body, dict):
        raise InvalidResponse(f"The response is a JSON {type(body).__name__}, not an object.")
    try:
        choice = body["choices"][0]
        text = choice["message"]["content"] or ""
        finish = choice.get("finish_reason")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise InvalidResponse("The response has no choices[0].message.content.") from None
    if not isinstance(text, str):
        raise InvalidResponse("choices[0].message.content is not a string.")
    usage_body = body.get("usage")
    if isinstance(usage_body, dict) and isinstance(usage_body.get("prompt_tokens"), int):
        usage = Usage(
            prompt_tokens=usage_body["prompt_tokens"], completion_tokens=int(usage_body.get("completion_tokens") or 0)
        )
    else:
        usage = estimated_usage(query, text)
    return Completion(text=text, usage=usage, model=str(body.get("model") or model), finish_reason=finish)
