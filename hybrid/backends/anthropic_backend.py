"""``AnthropicBackend``: queries through Anthropic's Messages API with the official ``anthropic`` SDK
(extra ``anthropic``).

The same call chain as every backend (retries, limits, adaptive concurrency, budget, cache, store),
so only the wire differs:

* the request: ``system`` is a field of its own, earlier turns are ``messages``, ``max_tokens`` is
  required (``default_max_tokens`` when a query has none), ``temperature`` is sent as it is (the
  API takes 0 to 1; the server refuses more);
* the answer: text blocks joined; ``stop_reason`` as the kit's finish reason (``end_turn`` →
  ``stop``, ``max_tokens`` → ``length``, ``refusal`` → ``content_filter``); usage with the prompt
  the sum of ``input_tokens`` and the cache's reads and writes, and ``cached_prompt_tokens`` its
  reads;
* a stream: Anthropic's events (``message_start``, ``content_block_delta``, ``message_delta``,
  ``message_stop``), the final usage from ``message_delta``; a stream without it is estimated;
* errors: by status, as for every backend (529 overloaded is a retryable server error, 429 waits
  out ``retry-after``), and the ``anthropic-ratelimit-*`` headers give the adaptive limit its room;
* settings, like the SDK: ``ANTHROPIC_BASE_URL``, ``ANTHROPIC_API_KEY``, and ``ANTHROPIC_MODEL``.
  The SDK adds ``/v1/messages`` to the base URL, so a base URL ending in ``/v1`` (the simulator's
  ``server.url``) is taken without it.

Prices come from genai-prices' Anthropic table when the base URL is api.anthropic.com
(:mod:`hybrid.pricing`).  There is no JSON mode and no threads mode (no blocking client): a
``json_mode`` query is refused as a bad request before it is sent.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Unpack

import orjson

from hybrid.backends import sdk_errors
from hybrid.backends.endpoint import Endpoint, EndpointSettings
from hybrid.backends.openai_wire import StreamAssembler, estimated_usage, header_count, server_report
from hybrid.backends.response_limits import sdk_client_settings
from hybrid.backends.send_stamp import SendStamp
from hybrid.errors import BadRequest, ConfigError, InvalidResponse, check_int
from hybrid.query import Completion, Query, ServerReport, Usage

try:
    import anthropic
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError("AnthropicBackend needs the anthropic SDK: pip install 'hybrid-llm-kit[anthropic]'.") from exc

#: The kit's finish reason for each of Anthropic's stop reasons.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "refusal": "content_filter",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
}
#: ``max_tokens`` for a query that names none: the Messages API requires one.
DEFAULT_MAX_TOKENS = 1024


class AnthropicBackend(Endpoint):
    """Queries through ``anthropic.AsyncAnthropic`` (see the module docstring)."""

    name = "anthropic"
    #: The provider, as the OpenTelemetry GenAI conventions name it (``gen_ai.provider.name``).
    provider = "anthropic"
    base_url_env, api_key_env, model_env = "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_MODEL"
    default_base_url = "https://api.anthropic.com"

    def __init__(self, *, default_max_tokens: int = DEFAULT_MAX_TOKENS, **settings: Unpack[EndpointSettings]) -> None:
        super().__init__(**settings)
        self.default_max_tokens = check_int("default_max_tokens", default_max_tokens, minimum=1)
        self._client: anthropic.AsyncAnthropic | None = None

    async def _connect(self) -> None:
        if self._client is not None:
            return
        settings = sdk_client_settings(self.max_connections, self.max_response_bytes)
        http_client = anthropic.DefaultAsyncHttpxClient(**settings)
        self._client = anthropic.AsyncAnthropic(
            base_url=self.base_url.removesuffix("/v1"), api_key=self._api_key, max_retries=0, http_client=http_client
        )

    @property
    def client(self) -> anthropic.AsyncAnthropic:
        if self._client is None:
            raise ConfigError("The backend is not open: use it inside `async with Orchestrator(...)`.")
        return self._client

    def recipe(self) -> dict[str, Any]:
        return {**super().recipe(), "default_max_tokens": self.default_max_tokens}

    def request(self, query: Query) -> dict[str, Any]:
        """The Messages API arguments for ``query``."""
        if query.json_mode:
            raise BadRequest("Anthropic's Messages API has no JSON mode: ask for JSON in the prompt instead.")
        body: dict[str, Any] = {
            "model": query.model or self.model,
            "max_tokens": query.max_tokens or self.default_max_tokens,
            "messages": [{"role": role, "content": content} for role, content in query.history]
            + [{"role": "user", "content": query.prompt}],
        }
        if query.system is not None:
            body["system"] = query.system
        if query.temperature is not None:  # not every SDK release lists it among create()'s arguments
            body["extra_body"] = {"temperature": query.temperature}
        return body

    async def complete(self, query: Query) -> Completion:
        clock = asyncio.get_running_loop().time
        with SendStamp.begin(clock) as stamp:
            body = self.request(query)
            client = self.client
            assembler = StreamAssembler(query, body["model"], clock)
            try:
                if not query.stream:
                    raw = await client.messages.with_raw_response.create(**body)
                    response = raw.http_response
                    return self.scrubbed(_whole(query, orjson.loads(response.content), response.headers, stamp))
                stream = await client.messages.with_raw_response.create(**body, stream=True)
                response = stream.http_response
                events = _Events(assembler)
                async with await stream.parse() as parsed:
                    async for event in parsed:
                        events.feed(event)
            except Exception as exc:  # a kit error (a bad answer) comes back from translate as it is
                raise sdk_errors.translate(exc, self, sdk=anthropic, received_chunks=assembler.chunks) from None
            return self.scrubbed(assembler.result(left_at=stamp.left_at, server=report(response.headers)))

    def complete_blocking(self, query: Query) -> Completion:
        raise ConfigError("AnthropicBackend has no synchronous client; mode='threads' needs OpenAIBackend.")

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()


def usage_of(usage: Any) -> Usage | None:
    """Anthropic's usage (an object or a dict) as the kit's: the prompt is the input plus the
    cache's reads and writes, of which the reads are ``cached_prompt_tokens``."""
    if usage is None:
        return None
    found = _fields(usage)
    counts = [found.get(n, 0) for n in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")]
    output = found.get("output_tokens")
    if output is None or not all(isinstance(n, int) and n >= 0 for n in [*counts, output]):
        raise InvalidResponse(f"The answer's usage is not a set of token counts: {usage!r}")
    return Usage(prompt_tokens=sum(counts), completion_tokens=output, cached_prompt_tokens=counts[1])


def report(headers: Any) -> ServerReport | None:
    """What the server said of itself: the simulator's queue, and the ``anthropic-ratelimit-*``
    room left, with the seconds until each limit's reset time."""
    found = replace(
        server_report(headers) or ServerReport(),
        remaining_requests=header_count(headers.get("anthropic-ratelimit-requests-remaining")),
        remaining_tokens=header_count(headers.get("anthropic-ratelimit-tokens-remaining")),
        reset_requests_s=_until(headers.get("anthropic-ratelimit-requests-reset")),
        reset_tokens_s=_until(headers.get("anthropic-ratelimit-tokens-reset")),
    )
    return None if found == ServerReport() else found


def _until(value: str | None) -> float | None:
    """Seconds from now until an RFC 3339 time (a limit's reset); None when absent or unreadable."""
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, (at - datetime.now(tz=UTC)).total_seconds())


def _whole(query: Query, body: object, headers: Any, stamp: SendStamp) -> Completion:
    """A whole answer: its text blocks joined, its stop reason and usage (estimated when absent)."""
    if not isinstance(body, dict) or not isinstance(body.get("content"), list):
        raise InvalidResponse("The answer is not a Messages API message (no content list).")
    parts: list[str] = []
    for block in body["content"]:
        if isinstance(block, dict) and block.get("type") == "text":
            if not isinstance(block.get("text"), str):
                raise InvalidResponse("A text block's text is not a string.")
            parts.append(block["text"])
    text = "".join(parts)
    return Completion(
        text=text,
        usage=usage_of(body.get("usage")) or estimated_usage(query, text),
        model=str(body.get("model") or query.model),
        finish_reason=FINISH_REASONS.get(str(body.get("stop_reason")), "stop"),
        left_at=stamp.left_at,
        server=report(headers),
    )


class _Events:
    """A streamed answer's events fed to ``assembler``: text deltas as they come; the usage of
    ``message_start`` updated by ``message_delta``'s (its output count is final), given to the
    assembler only when ``message_delta`` carried one, so a stream that never counted is estimated."""

    def __init__(self, assembler: StreamAssembler) -> None:
        self.assembler = assembler
        self.usage: dict[str, Any] = {}

    def feed(self, event: Any) -> None:
        kind = getattr(event, "type", None)
        if kind == "message_start":
            self.usage = _fields(getattr(event.message, "usage", None))
        elif kind == "content_block_delta" and getattr(event.delta, "type", None) == "text_delta":
            self.assembler.feed(event.delta.text, None, None)
        elif kind == "message_delta":
            final = _fields(getattr(event, "usage", None))
            usage = usage_of(self.usage | final) if final else None
            self.assembler.feed(None, FINISH_REASONS.get(str(event.delta.stop_reason), "stop"), usage)


def _fields(usage: Any) -> dict[str, Any]:
    """The token counts a usage object (or dict) holds, without the ones it left out (None)."""
    if usage is None:
        return {}
    names = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens")
    values = usage if isinstance(usage, dict) else {name: getattr(usage, name, None) for name in names}
    return {name: values[name] for name in names if values.get(name) is not None}
