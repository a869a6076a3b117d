"""OpenAI's chat-completions wire format, shared by the OpenAI-compatible backends.

The request body, parsing a JSON answer, assembling a streamed (SSE) answer, and translating HTTP
statuses and Retry-After headers into the kit's errors: once, the same way for every backend.
Everything a server sends is validated here, at the boundary: a field of the wrong type (usage
that is not a non-negative integer, a ``delta.content`` that is not a string, a chunk that is not
an object) is an :class:`~hybrid.errors.InvalidResponse`, never a ``TypeError`` further up.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

import orjson

from hybrid.errors import (
    AuthenticationFailed,
    BadRequest,
    InvalidResponse,
    QueryError,
    RateLimited,
    ServerError,
)
from hybrid.query import Completion, Query, ServerReport, Usage
from hybrid.tokens import count_message_tokens, count_tokens

#: Who wants to hear about a streamed answer as it arrives: set by the orchestrator around an attempt
#: (a context variable, so it reaches the backend without a parameter on the Backend protocol).
#: Called with the assembler after each piece of content; it decides how often to look.
STREAM_LISTENER: ContextVar[Callable[[StreamAssembler], None] | None] = ContextVar("STREAM_LISTENER", default=None)


def request_body(query: Query, default_model: str) -> dict[str, Any]:
    """The chat-completions JSON body for ``query`` (``default_model`` when it names none)."""
    body: dict[str, Any] = {"model": query.model or default_model, "messages": query.messages()}
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
        seconds = _seconds(value)
        if seconds is not None:
            return max(0.0, seconds / 1000.0)
    value = lowered.get("retry-after")
    if value is None:
        return None
    seconds = _seconds(value)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _seconds(value: str) -> float | None:
    """``value`` as a number of seconds; ``inf`` (a server asking to wait forever) is kept as such."""
    try:
        number = float(value)
    except ValueError:
        return None
    return None if math.isnan(number) else number


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def duration_seconds(value: str | None) -> float | None:
    """An ``x-ratelimit-reset-*`` value in seconds: OpenAI writes ``1s``, ``6m0s``, ``120ms``,
    ``1h2m3.5s``; a bare number is seconds.  None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    number = _seconds(text)
    if number is not None:
        return number if math.isfinite(number) and number >= 0 else None
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def _millis(value: object) -> float | None:
    """A non-negative number of milliseconds (header text or JSON number) in seconds, else None."""
    if isinstance(value, str):
        value = _seconds(value.strip())
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return float(value) / 1000.0


def header_count(value: str | None) -> int | None:
    """A rate-limit header's count (requests or tokens left); None when absent, negative or not a number."""
    try:
        number = int(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and number >= 0 else None


def server_report(headers: Mapping[str, str], timings: object = None) -> ServerReport | None:
    """What the server said about one request, from its headers and a llama.cpp-style ``timings``
    object (in the answer, or the last chunk of a stream); None when it said nothing.

    Service time: ``timings.prompt_ms + timings.predicted_ms`` (llama.cpp, the simulator), else
    OpenAI's ``openai-processing-ms`` less the queue when both are known.  Queue time: the
    simulator's ``x-hybrid-queue-ms`` (no public server reports one).  A value that is not a
    non-negative number is ignored, never an error: these are hints, not the answer.
    """
    # Both transports' headers are case-insensitive mappings (the in-process simulator's have
    # lower-case names), so names are looked up as they are, not copied lower-cased: this runs on
    # every answer.
    queue = _millis(headers.get("x-hybrid-queue-ms"))
    service = None
    if isinstance(timings, dict):
        prompt, predicted = _millis(timings.get("prompt_ms")), _millis(timings.get("predicted_ms"))
        if prompt is not None and predicted is not None:
            service = prompt + predicted
    if service is None:
        processing = _millis(headers.get("openai-processing-ms"))
        if processing is not None:
            service = max(0.0, processing - (queue or 0.0))
    report = ServerReport(
        queue_s=queue,
        service_s=service,
        remaining_requests=header_count(headers.get("x-ratelimit-remaining-requests")),
        remaining_tokens=header_count(headers.get("x-ratelimit-remaining-tokens")),
        reset_requests_s=duration_seconds(headers.get("x-ratelimit-reset-requests")),
        reset_tokens_s=duration_seconds(headers.get("x-ratelimit-reset-tokens")),
    )
    return None if report == ServerReport() else report


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
        prompt_tokens=count_message_tokens(query.messages()),
        completion_tokens=count_tokens(text),
        estimated=True,
    )


def usage_from(body: object) -> Usage | None:
    """The ``usage`` object of an answer or chunk; None when absent; :class:`InvalidResponse` when
    present but not two non-negative integers (``"5"``, ``null``, ``-1``, ``1.5``)."""
    if body is None:
        return None
    if not isinstance(body, dict):
        raise InvalidResponse(f"usage is a JSON {type(body).__name__}, not an object.")
    counts = [body.get("prompt_tokens"), body.get("completion_tokens", 0)]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
        raise InvalidResponse(
            f"usage has prompt_tokens={counts[0]!r}, completion_tokens={counts[1]!r}; expected non-negative integers."
        )
    details = body.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    if cached is None:
        cached = 0
    if not (isinstance(cached, int) and not isinstance(cached, bool) and 0 <= cached <= counts[0]):
        raise InvalidResponse(f"usage has prompt_tokens_details.cached_tokens={cached!r}; expected 0..prompt_tokens.")
    return Usage(prompt_tokens=counts[0], completion_tokens=counts[1], cached_prompt_tokens=cached)


class StreamAssembler:
    """Builds a :class:`Completion` from streamed chunks: text, finish reason, usage, time to first token.

    ``clock`` is the clock of the loop the request runs on (``loop.time``; ``time.monotonic``, the
    real loop's clock, for a worker thread), so time to first token is on the run's one clock.
    """

    def __init__(self, query: Query, model: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._query = query
        self._clock = clock
        self._started = clock()
        self._parts: list[str] = []
        self._model = model
        self.ttft_s: float | None = None
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.chunks = 0
        #: The ``timings`` object of the stream's last chunk that had one (llama.cpp, the simulator).
        self.timings: object = None
        self._listener = STREAM_LISTENER.get()

    def feed(self, content: object, finish_reason: object, usage: Usage | None) -> None:
        self.chunks += 1
        if content is not None and not isinstance(content, str):
            raise InvalidResponse(f"A streamed delta.content is a JSON {type(content).__name__}, not a string.")
        if finish_reason is not None and not isinstance(finish_reason, str):
            raise InvalidResponse("A streamed finish_reason is not a string.")
        if content:
            if self.ttft_s is None:
                self.ttft_s = self._clock() - self._started
            self._parts.append(content)
            if self._listener is not None:
                self._listener(self)
        if finish_reason is not None:
            self.finish_reason = finish_reason
        if usage is not None:
            self.usage = usage

    def feed_chunk(self, chunk: object) -> None:
        """Feed one parsed SSE ``data:`` object (a ``chat.completion.chunk``)."""
        if not isinstance(chunk, dict):
            raise InvalidResponse(f"A streamed chunk is a JSON {type(chunk).__name__}, not an object.")
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise InvalidResponse("A streamed chunk's choices is not an array.")
        usage = usage_from(chunk.get("usage"))
        if "timings" in chunk:
            self.timings = chunk["timings"]
        if choices:
            choice = choices[0]
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict | None):
                raise InvalidResponse("A streamed chunk's choices[0].delta is not an object.")
            self.feed((delta or {}).get("content"), choice.get("finish_reason"), None)
        if usage is not None:
            self.feed(None, None, usage)

    def text_so_far(self) -> str:
        return "".join(self._parts)

    def result(self, *, left_at: float | None = None, server: ServerReport | None = None) -> Completion:
        if self.finish_reason is None:
            raise InvalidResponse(f"The stream ended after {self.chunks} chunks without a finish reason (truncated).")
        text = "".join(self._parts)
        return Completion(
            text=text,
            usage=self.usage or estimated_usage(self._query, text),
            model=self._model,
            finish_reason=self.finish_reason,
            ttft_s=self.ttft_s,
            left_at=left_at,
            server=server,
        )


def json_answer(data: bytes) -> object:
    """``data`` parsed as JSON; :class:`InvalidResponse` when it is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidResponse(f"The server's answer is not valid JSON: {exc}") from None


def feed_event_line(assembler: StreamAssembler, line: bytes) -> bool:
    """Feed one line of a server-sent event stream to ``assembler``; True at ``data: [DONE]``.
    Lines other than ``data:`` (comments, ``event:``, blank separators) are skipped."""
    if not line.startswith(b"data:"):
        return False
    data = line[5:].strip()
    if data == b"[DONE]":
        return True
    assembler.feed_chunk(json_answer(data))
    return False


def completion_from_body(
    query: Query,
    body: object,
    model: str,
    *,
    headers: Mapping[str, str] | None = None,
    left_at: float | None = None,
) -> Completion:
    """Parse a non-streamed chat-completion body (a dict from JSON); ``headers`` (the response's)
    and the body's ``timings`` give the :class:`ServerReport`, ``left_at`` is when the request left."""
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
    if finish is not None and not isinstance(finish, str):
        raise InvalidResponse("choices[0].finish_reason is not a string.")
    usage = usage_from(body.get("usage")) or estimated_usage(query, text)
    name = body.get("model")
    return Completion(
        text=text,
        usage=usage,
        model=name if isinstance(name, str) and name else model,
        finish_reason=finish,
        left_at=left_at,
        server=server_report(headers or {}, body.get("timings")),
    )
