"""The simulator's second dialect: Anthropic's Messages API (``POST /v1/messages``), which the
official ``anthropic`` SDK talks to as it talks to api.anthropic.com.

One simulated server answers both dialects.  A Messages request is checked the way Anthropic
checks it (``max_tokens`` is required, roles are ``user`` and ``assistant``, the system prompt is a
field of its own, temperature is 0 to 1), then answered by the very path a chat completion takes
(:meth:`Simulator.answer <hybrid.sim.openai_protocol.Simulator.answer>`: rate limits, faults,
slots, the prefix cache, pacing), into an :class:`AnthropicSink` that words the answer as
Anthropic's as it is written:

* a whole answer: ``{"type": "message", "content": [{"type": "text", ...}], "stop_reason", "usage"}``;
* a stream: Anthropic's events as the pieces are paced: ``message_start``, ``content_block_start``,
  ``ping``, ``content_block_delta`` (``text_delta``), ``content_block_stop``, ``message_delta``
  (stop reason and usage), ``message_stop``;
* usage: ``input_tokens`` (the prompt not read from the cache), ``cache_read_input_tokens`` (what
  the prefix cache served), ``cache_creation_input_tokens`` (0: the kit sends no ``cache_control``
  breakpoint, so nothing is written to Anthropic's explicit cache), ``output_tokens``;
* errors: ``{"type": "error", "error": {"type", "message"}}`` with Anthropic's types; an
  overloaded server (the ``unavailable`` fault, a 503 elsewhere) answers **529** ``overloaded_error``;
* rate-limit headers: ``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}``, the reset
  an RFC 3339 time, beside ``retry-after``.

A fault that breaks an answer (cut off, malformed, dropped, hung, no usage) breaks it the same way
in this dialect.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from hybrid.answer_sink import Sink
from hybrid.sim.engine import Rejected

#: Anthropic's error type for each status the simulator answers with.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
#: A server too busy to answer: 503 in OpenAI's dialect, 529 in Anthropic's.
OVERLOADED = 529
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "content_filter": "refusal"}
_RENAMED_LIMITS = {
    "x-ratelimit-limit-requests": "anthropic-ratelimit-requests-limit",
    "x-ratelimit-remaining-requests": "anthropic-ratelimit-requests-remaining",
    "x-ratelimit-limit-tokens": "anthropic-ratelimit-tokens-limit",
    "x-ratelimit-remaining-tokens": "anthropic-ratelimit-tokens-remaining",
}
_RESETS = {
    "x-ratelimit-reset-requests": "anthropic-ratelimit-requests-reset",
    "x-ratelimit-reset-tokens": "anthropic-ratelimit-tokens-reset",
}
_DROPPED = {"openai-processing-ms"}


def chat_body(body: dict[str, Any]) -> dict[str, Any]:
    """A Messages request as the chat-completions request the simulator answers, after the checks
    Anthropic makes (a :class:`Rejected` 400 names the field, as Anthropic's errors do)."""

    def bad(message: str) -> Rejected:
        return Rejected(400, message)

    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model: Field required")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise bad("max_tokens: Field required")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise bad("max_tokens: Input should be an integer >= 1")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages: Field required (a non-empty list)")
    chat: list[dict[str, str]] = []
    system = body.get("system")
    if system is not None:
        chat.append({"role": "system", "content": _text(system, "system")})
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise bad(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        chat.append({"role": role, "content": _text(message.get("content"), f"messages.{i}.content")})
    temperature = body.get("temperature", 1.0)
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 1:
        raise bad("temperature: Input should be a number between 0 and 1")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("stream: Input should be a valid boolean")
    request: dict[str, Any] = {"model": model, "messages": chat, "max_tokens": max_tokens, "temperature": temperature}
    if stream:
        request |= {"stream": True, "stream_options": {"include_usage": True}}
    return request


def _text(content: object, where: str) -> str:
    """A Messages content (a string, or a list of ``{"type": "text", "text": ...}`` blocks) as text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        parts = []
        for j, block in enumerate(content):
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise Rejected(400, f"{where}.{j}: the simulator understands text blocks only")
            parts.append(block["text"])
        return "".join(parts)
    raise Rejected(400, f"{where}: Input should be a string or a list of content blocks")


def anthropic_usage(usage: dict[str, Any]) -> dict[str, int]:
    """Chat-completions usage in Anthropic's words: the cached part of the prompt apart."""
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {
        "input_tokens": usage["prompt_tokens"] - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": usage["completion_tokens"],
    }


def anthropic_headers(headers: dict[str, str]) -> dict[str, str]:
    """The answer's headers with the rate-limit ones in Anthropic's names (a reset as the RFC 3339
    time it falls at), and a ``request-id``."""
    out: dict[str, str] = {"request-id": f"req_sim{time.monotonic_ns():x}"}
    for name, value in headers.items():
        if name in _RENAMED_LIMITS:
            out[_RENAMED_LIMITS[name]] = value
        elif name in _RESETS:
            at = datetime.now(tz=UTC) + timedelta(seconds=float(value.rstrip("s")))
            out[_RESETS[name]] = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        elif name not in _DROPPED:
            out[name] = value
    return out


def error(body: bytes, status: int) -> tuple[bytes, int]:
    """An OpenAI-shaped error body as Anthropic's, and the status Anthropic answers with."""
    status = OVERLOADED if status == 503 else status
    try:
        message = orjson.loads(body)["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = body.decode(errors="replace")
    kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}}), status


def message(completion: dict[str, Any]) -> dict[str, Any]:
    """A chat completion as a Messages API ``message``."""
    choice = completion["choices"][0]
    out: dict[str, Any] = {
        "id": "msg_" + completion["id"].removeprefix("chatcmpl-"),
        "type": "message",
        "role": "assistant",
        "model": completion["model"],
        "content": [{"type": "text", "text": choice["message"]["content"]}],
        "stop_reason": STOP_REASONS.get(choice["finish_reason"], choice["finish_reason"]),
        "stop_sequence": None,
    }
    if "usage" in completion:
        out["usage"] = anthropic_usage(completion["usage"])
    return out


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


class AnthropicSink:
    """A :class:`Sink` that words a chat-completions answer as Anthropic's, into ``inner``, as it
    is written (see the module docstring).  ``prompt_tokens`` is what ``message_start`` reports
    before the answer's own count arrives at its end."""

    def __init__(self, inner: Sink, prompt_tokens: int) -> None:
        self.inner = inner
        self.prompt_tokens = prompt_tokens
        self._streaming = False
        self._stop_reason: str | None = None
        self._usage: dict[str, int] | None = None

    async def whole(self, body: bytes, headers: dict[str, str], status: int = 200) -> None:
        if status != 200:
            body, status = error(body, status)
        else:
            try:
                body = orjson.dumps(message(orjson.loads(body)))
            except orjson.JSONDecodeError:
                pass  # a malformed answer (a fault) stays malformed
        await self.inner.whole(body, anthropic_headers(headers), status)

    async def start(self, headers: dict[str, str], content_type: str, content_length: int | None = None) -> None:
        self._streaming = content_type == "text/event-stream"
        await self.inner.start(anthropic_headers(headers), content_type, content_length)

    async def write(self, data: bytes) -> None:
        if not self._streaming:  # a whole answer cut off (a fault): its bytes as they are
            await self.inner.write(data)
            return
        payload = data.removeprefix(b"data: ").strip()
        if payload == b"[DONE]":
            await self.inner.write(self._end())
            return
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:  # a malformed event (a fault) stays malformed
            await self.inner.write(b"event: content_block_delta\ndata: " + payload + b"\n\n")
            return
        await self.inner.write(self._events(chunk))

    def _events(self, chunk: dict[str, Any]) -> bytes:
        """The events one chat-completions chunk becomes."""
        if "usage" in chunk and not chunk.get("choices"):
            self._usage = anthropic_usage(chunk["usage"])
            return b""
        choice = chunk["choices"][0]
        delta = choice.get("delta") or {}
        if "role" in delta:  # the first chunk
            start = {
                "id": "msg_" + chunk["id"].removeprefix("chatcmpl-"),
                "type": "message",
                "role": "assistant",
                "model": chunk["model"],
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": self.prompt_tokens, "output_tokens": 1},
            }
            return (
                _event("message_start", {"message": start})
                + _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
                + _event("ping", {})
            )
        if choice.get("finish_reason") is not None:
            self._stop_reason = STOP_REASONS.get(choice["finish_reason"], choice["finish_reason"])
        if delta.get("content"):
            return _event(
                "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": delta["content"]}}
            )
        return b""

    def _end(self) -> bytes:
        """The closing events; ``message_delta`` carries the final usage, when the server counted it."""
        delta: dict[str, Any] = {"delta": {"stop_reason": self._stop_reason, "stop_sequence": None}}
        if self._usage is not None:
            delta["usage"] = self._usage
        return _event("content_block_stop", {"index": 0}) + _event("message_delta", delta) + _event("message_stop", {})

    async def finish(self) -> None:
        await self.inner.finish()
