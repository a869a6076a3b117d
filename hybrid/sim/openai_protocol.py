"""The simulator's HTTP face: OpenAI's chat-completions protocol over aiohttp, on top of the engine.

Routes: ``POST /v1/chat/completions`` (JSON, or SSE when ``stream`` is true), ``GET /v1/models``,
``GET /sim/stats`` (the engine's counters) and ``GET /health``; and ``POST /v1/messages``,
Anthropic's Messages API, answered by the same path in that dialect (:mod:`hybrid.sim.anthropic_protocol`).

This module owns the wire: validating a request into a frozen :class:`ChatRequest`, shaping the
JSON and SSE answers, and turning the engine's :class:`~hybrid.sim.engine.Rejected` into
OpenAI-shaped error bodies (``{"error": {"message", "type", "param", "code"}}``) with 400/401/404,
and :class:`~hybrid.sim.engine.Drop` into an aborted connection.  The engine
(:mod:`hybrid.sim.engine`) decides everything else.

:meth:`Simulator.respond` and :meth:`Simulator.chat` are the route with no transport in them:
:mod:`hybrid.sim.lean_http` serves chat completions with them straight off the socket, the
aiohttp routes here (:meth:`Simulator.guarded`) serve everything else, chat completions included
for a connection that has been handed over, and :meth:`Simulator.handle` serves a request that
never was on a socket (the in-process client, :mod:`hybrid.backends.in_process`).  Either way a
client that goes away cancels its answer (aiohttp's handler cancellation is on): it is counted as
a disconnect and leaves nothing in flight.  An unexpected bug answers 500 with the same error shape and no traceback.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
from aiohttp import web

from hybrid.answer_sink import Sink
from hybrid.sim.anthropic_protocol import AnthropicSink, chat_body
from hybrid.sim.config import SimConfig
from hybrid.sim.engine import Drop, Engine, Pacer, Rejected
from hybrid.sim.model import Pace, Reply
from hybrid.tokens import count_message_tokens, message_text

log = logging.getLogger("hybrid.sim")

_ROLES = {"system", "developer", "user", "assistant", "tool"}

_JSON = "application/json"
#: The largest request body accepted (a Batch API upload can be large).
MAX_BODY_BYTES = 256 * 1024 * 1024


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A validated ``/v1/chat/completions`` request: the fields the simulator understands."""

    model: str
    messages: tuple[dict[str, Any], ...]
    max_tokens: int | None
    temperature: float
    stream: bool
    include_usage: bool
    json_mode: bool


class _HTTPSink:
    """A :class:`Sink` onto an aiohttp response."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None

    async def whole(self, body: bytes, headers: dict[str, str], status: int = 200) -> None:
        self.response = web.Response(status=status, body=body, content_type=_JSON, headers=headers)

    async def start(self, headers: dict[str, str], content_type: str, content_length: int | None = None) -> None:
        self.response = web.StreamResponse(headers={**headers, "Content-Type": content_type})
        if content_length is not None:
            self.response.content_length = content_length
        await self.response.prepare(self.request)

    async def write(self, data: bytes) -> None:
        assert self.response is not None
        await self.response.write(data)

    async def finish(self) -> None:
        assert self.response is not None
        await self.response.write_eof()


class Simulator:
    """One simulated OpenAI-compatible server: the :class:`~hybrid.sim.engine.Engine` behind an aiohttp app."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.engine = Engine(config)

    def stats(self) -> dict[str, Any]:
        """Counters since start: requests seen, in flight now, peak in flight, by status, disconnects."""
        return self.engine.stats()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{model}", self.get_model)
        app.router.add_get("/sim/stats", self.stats_endpoint)
        app.router.add_get("/health", self.health)
        return app

    # -- small routes -------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type=_JSON)

    async def stats_endpoint(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.stats()), content_type=_JSON)

    def _model_card(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "hybrid-sim"}

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        return await self.guarded(request, self._list_models)

    async def _list_models(self, request: web.Request) -> web.StreamResponse:
        self.check_key(request.headers.get("Authorization"))
        data = [self._model_card(name) for name in self.config.profiles]
        return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type=_JSON)

    async def get_model(self, request: web.Request) -> web.StreamResponse:
        return await self.guarded(request, self._get_model)

    async def _get_model(self, request: web.Request) -> web.StreamResponse:
        self.check_key(request.headers.get("Authorization"))
        name = request.match_info["model"]
        if name not in self.config.profiles:
            raise Rejected(404, f"The model `{name}` does not exist.", code="model_not_found", param="model")
        return web.Response(body=orjson.dumps(self._model_card(name)), content_type=_JSON)

    # -- the main route -----------------------------------------------------------------------
    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self.guarded(request, self._chat)

    async def guarded(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """An aiohttp route's ``handler`` behind :meth:`respond`; a dropped answer aborts the connection."""
        sink = _HTTPSink(request)

        async def work() -> int:
            sink.response = await handler(request)
            return sink.response.status

        return await self._served(request, work, sink, sink)

    async def _served(
        self, request: web.Request, work: Callable[[], Awaitable[int]], sink: Sink, http: _HTTPSink
    ) -> web.StreamResponse:
        """:meth:`respond` on an aiohttp connection, whose response ``http`` holds once answered."""
        try:
            await self.respond(work, sink)
        except Drop:
            # Abort the transport; cancelling ends the handler the way aiohttp ends one whose
            # client left, without counting it as a client disconnect.
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError from None
        assert http.response is not None
        return http.response

    async def messages(self, request: web.Request) -> web.StreamResponse:
        """Anthropic's Messages API: checked as Anthropic checks it, answered by :meth:`answer`,
        worded as Anthropic's answer, errors included (:mod:`hybrid.sim.anthropic_protocol`)."""
        http = _HTTPSink(request)
        sink = AnthropicSink(http, prompt_tokens=0)

        async def work() -> int:
            key = request.headers.get("x-api-key")
            self.check_key(f"Bearer {key}" if key is not None else request.headers.get("Authorization"))
            body = chat_body(parse_json_object(await request.read()))
            sink.prompt_tokens = count_message_tokens(body["messages"])
            await self.answer(body, sink)
            return 200

        return await self._served(request, work, sink, http)

    async def respond(self, work: Callable[[], Awaitable[int]], sink: Sink) -> None:
        """Run one request's ``work`` (which answers into ``sink`` and returns its status), for any
        transport: counted while in flight and by status, a :class:`Rejected` written as OpenAI's
        error body, a client gone (cancellation) counted as a disconnect, a bug answered 500 with no
        traceback.  :class:`Drop` propagates: closing the connection is the transport's job."""
        engine = self.engine
        with engine.tracked():
            try:
                status = await work()
            except Rejected as rejected:
                status = rejected.status
                body = error_body(rejected.message, rejected.type, rejected.param, rejected.code)
                await sink.whole(body, rejected.headers, status)
            except asyncio.CancelledError:
                engine.disconnects += 1
                raise
            except Drop:
                raise
            except Exception:
                log.exception("simulator bug while answering a request")
                status = 500
                await sink.whole(error_body("The simulator failed unexpectedly.", "server_error"), {}, status)
        engine.by_status[status] += 1

    async def handle(self, path: str, headers: Mapping[str, str], body: bytes, sink: Sink) -> None:
        """One POST that never was on a socket (the in-process client's): answered like the lean
        route answers it, into ``sink``.  A dropped answer is raised as :class:`ConnectionResetError`,
        what a client's socket would have seen."""
        if path == "/v1/chat/completions":
            work = partial(self.chat, body, headers.get("Authorization"), sink)
        else:
            work = partial(refuse, Rejected(404, f"The simulator serves POST {path} only over HTTP (sim.serve)."))
        try:
            await self.respond(work, sink)
        except Drop:
            raise ConnectionResetError("the simulator dropped the connection") from None

    def forecast(self, model: str, messages: list[dict[str, Any]], max_tokens: int | None) -> tuple[float, ...]:
        """A request's expected completion tokens and latency under the latency model, and the
        latency of its shortest and longest possible answer (what ``orch.estimate`` uses instead of
        history).  Expected values, not this seed's draw: the answer length is uniform between the
        profile's bounds (capped by ``max_tokens``), the jitter log-normal; contention is left out."""
        profile = self.config.profiles[model]
        cap = max_tokens if max_tokens is not None else profile.max_completion_tokens
        lengths = [min(n, cap) for n in range(profile.min_completion_tokens, profile.max_completion_tokens + 1)]
        prompt = count_message_tokens(messages)
        scale = math.exp(profile.jitter**2 / 2) * self.config.time_scale  # the log-normal factor's mean

        def seconds(completion: float) -> float:
            return (profile.ttft_s + prompt / profile.prompt_tps + completion / profile.completion_tps) * scale

        completion = sum(lengths) / len(lengths)
        return completion, seconds(completion), seconds(min(lengths)), seconds(max(lengths))

    def check_key(self, authorization: str | None) -> None:
        """Refuse (401) a request whose ``Authorization`` header does not carry the configured key."""
        expected = self.config.api_key
        if expected is None:
            return
        if authorization != f"Bearer {expected}":
            raise Rejected(
                401,
                "Incorrect API key provided. Pass the simulator's key (server.api_key) as the API key.",
                code="invalid_api_key",
            )

    async def chat(self, raw: bytes, authorization: str | None, sink: Sink) -> int:
        """The chat-completions route on any transport: the key, the JSON body, the answer."""
        self.check_key(authorization)
        await self.answer(parse_json_object(raw), sink)
        return 200

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        sink = _HTTPSink(request)
        await self.chat(await request.read(), request.headers.get("Authorization"), sink)
        assert sink.response is not None
        return sink.response

    async def answer(self, body: dict[str, Any], sink: Sink) -> None:
        """Answer one chat-completions request ``body`` into ``sink``: the whole simulated server
        behind the transport (validation, rate limits, faults, a slot, pacing, the answer's bytes).
        Raises :class:`Rejected` or :class:`Drop` for the transport to shape."""
        chat = self.validate(body)
        engine = self.engine
        profile = self.config.profiles[chat.model]
        reply = self.reply(chat)
        limit_headers = engine.admit(reply, chat.max_tokens)
        fault = engine.faults.draw(reply.key, stream=chat.stream)
        if fault is not None:
            await engine.before_answer(fault)
        clock = asyncio.get_running_loop().time
        request_pace, queued_s, cached = await engine.take_slot(reply, chat.model, profile, clock)
        cache_usage = None if not profile.prefix_cache_tokens else cached
        try:
            request_id = f"chatcmpl-sim{reply.key:016x}"
            # The server's own account of the request, as a client can read it: the queue in a
            # header, the work in llama.cpp-style ``timings`` (the stream's last chunk, or the body).
            limit_headers["x-hybrid-queue-ms"] = f"{queued_s * 1000:.3f}"  # admit's dict is new per request
            timer = ServiceTimer(reply, clock, cached)
            if chat.stream:
                await self._stream(
                    sink, reply, chat, request_id, request_pace, fault, limit_headers, timer, cache_usage
                )
                return
            if request_pace.instant:  # time scale 0: nothing to wait for, so no awaits either
                timer.first_token()
            elif request_pace.contention:  # decoding slows with the requests sharing it, piece by piece
                pacer = Pacer()
                await pacer.wait(request_pace.ttft_s)
                await pacer.settle()
                timer.first_token()
                for _, tokens in reply.pieces:
                    await pacer.wait(request_pace.decode_s(tokens, engine.busy))
                await pacer.settle()
            else:  # nothing to follow on the way: one wait for the whole answer (a trace replay's hot path)
                timer.first_token(after_s=request_pace.ttft_s)
                await asyncio.sleep(request_pace.ttft_s + request_pace.decode_s(reply.completion_tokens, 1))
            body = completion_body(reply, chat.model, request_id, with_usage=fault != "no_usage", cached=cache_usage)
            body["timings"] = timer.timings()
            limit_headers["openai-processing-ms"] = f"{(queued_s + timer.elapsed()) * 1000:.3f}"
            payload = orjson.dumps(body)
            if fault == "malformed":
                await sink.whole(payload[: len(payload) // 2], limit_headers)
            elif fault == "truncate":
                await sink.start(limit_headers, _JSON, content_length=len(payload))
                await sink.write(payload[: len(payload) // 2])
                raise Drop
            else:
                await sink.whole(payload, limit_headers)
        finally:
            engine.release_slot()

    def reply(self, chat: ChatRequest) -> Reply:
        """The seeded answer to a validated request (the same for the live API and the Batch API)."""
        messages = list(chat.messages)
        replies = self.engine.replies
        return replies.reply(
            chat.model,
            message_text(messages),
            len(messages),
            chat.max_tokens,
            chat.temperature,
            chat.json_mode,
            message_text(messages[-1:]) if replies.echo else "",
        )

    def validate(self, body: dict[str, Any]) -> ChatRequest:
        """Check the fields the simulator understands, as OpenAI would, and normalise them."""

        def bad(param: str, message: str, code: str | None = "invalid_value") -> Rejected:
            return Rejected(400, message, param=param, code=code)

        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise bad("model", "you must provide a model parameter (a string).", "missing_required_parameter")
        if model not in self.config.profiles:
            known = ", ".join(self.config.profiles)
            raise Rejected(
                404,
                f"The model `{model}` does not exist or you do not have access to it. Known models: {known}.",
                param="model",
                code="model_not_found",
            )
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad("messages", "messages must be a non-empty array.", "missing_required_parameter")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in _ROLES:
                raise bad(f"messages[{i}].role", f"messages[{i}] must be an object with a role in {sorted(_ROLES)}.")
            content = message.get("content")
            if not (isinstance(content, str | list) or (content is None and message["role"] == "assistant")):
                raise bad(f"messages[{i}].content", f"messages[{i}].content must be a string or an array of parts.")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            raise bad("max_tokens", "max_tokens must be an integer >= 1.")
        temperature = body.get("temperature", 1.0)
        if temperature is None:
            temperature = 1.0
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
            raise bad("temperature", "temperature must be a number between 0 and 2.")
        n = body.get("n", 1)
        if n is not None and n != 1:
            raise bad("n", "The simulator supports only n=1.")
        stream = body.get("stream", False)
        if stream is None:
            stream = False
        if not isinstance(stream, bool):
            raise bad("stream", "stream must be a boolean.")
        stream_options = body.get("stream_options")
        if stream_options is not None:
            if not stream:
                raise bad("stream_options", "stream_options is only allowed when stream is true.")
            if not isinstance(stream_options, dict):
                raise bad("stream_options", "stream_options must be an object.")
        response_format = body.get("response_format")
        json_mode = False
        if response_format is not None:
            kind = response_format.get("type") if isinstance(response_format, dict) else None
            if kind not in ("text", "json_object", "json_schema"):
                raise bad("response_format.type", "response_format.type must be text, json_object or json_schema.")
            json_mode = kind != "text"
        return ChatRequest(
            model=model,
            messages=tuple(messages),
            max_tokens=max_tokens,
            temperature=float(temperature),
            stream=stream,
            include_usage=bool((stream_options or {}).get("include_usage", False)),
            json_mode=json_mode,
        )

    async def _stream(
        self,
        sink: Sink,
        reply: Reply,
        chat: ChatRequest,
        request_id: str,
        request_pace: Pace,
        fault: str | None,
        headers: dict[str, str],
        timer: ServiceTimer,
        cached: int | None,
    ) -> None:
        """Send the reply as SSE chunks: role, content in up to 8 paced pieces, finish, usage (with
        the server's ``timings``, as llama.cpp sends them in its last chunk)."""
        await sink.start({**headers, "Cache-Control": "no-cache"}, "text/event-stream")
        created = int(time.time())
        model = chat.model

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            data = {
                "id": request_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "hybrid-sim",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                **extra,
            }
            return b"data: " + orjson.dumps(data) + b"\n\n"

        pieces = reply.pieces
        pacer = Pacer()
        await pacer.wait(request_pace.ttft_s)
        await pacer.settle()
        timer.first_token()
        await sink.write(chunk({"role": "assistant", "content": "", "refusal": None}))
        for i, (piece, tokens) in enumerate(pieces):
            if fault == "truncate" and i >= len(pieces) // 2:
                raise Drop
            if fault == "malformed" and i == len(pieces) // 2:
                await sink.write(b'data: {"id": "' + request_id.encode() + b'", "choices": [{"delta": \n\n')
            await pacer.wait(request_pace.decode_s(tokens, self.engine.busy))
            await sink.write(chunk({"content": piece}))
        if fault == "truncate":
            raise Drop
        await pacer.settle()
        await sink.write(chunk({}, reply.finish_reason, timings=timer.timings()))
        if chat.include_usage and fault != "no_usage":
            usage = {
                "id": request_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "hybrid-sim",
                "choices": [],
                "usage": _usage(reply, cached),
            }
            await sink.write(b"data: " + orjson.dumps(usage) + b"\n\n")
        await sink.write(b"data: [DONE]\n\n")
        await sink.finish()


class ServiceTimer:
    """How long the server worked on one request, split as llama.cpp's ``timings`` split it: the
    prompt (up to the first token) and the predicted tokens after it, on the loop's clock."""

    def __init__(self, reply: Reply, clock: Callable[[], float], cached: int = 0) -> None:
        self.reply = reply
        self.cached = cached
        self._clock = clock
        self.started = self._clock()
        self.first: float | None = None

    def first_token(self, after_s: float = 0.0) -> None:
        """The first token is ready now, or ``after_s`` from now (known ahead when not waited for apart)."""
        self.first = self._clock() + after_s

    def elapsed(self) -> float:
        return self._clock() - self.started

    def timings(self) -> dict[str, float | int]:
        now = self._clock()
        first = self.first if self.first is not None else now
        return {
            "prompt_n": self.reply.prompt_tokens - self.cached,  # as llama.cpp: the tokens prefilled
            "cache_n": self.cached,
            "prompt_ms": (first - self.started) * 1000.0,
            "predicted_n": self.reply.completion_tokens,
            "predicted_ms": (now - first) * 1000.0,
        }


async def refuse(rejection: Rejected) -> int:
    """A route's work that only refuses (a wrong path, a request too large)."""
    raise rejection


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object, or a 400 that says so."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Rejected(400, "The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise Rejected(400, "The request body must be a JSON object.", code="invalid_json")
    return body


def completion_body(
    reply: Reply, model: str, request_id: str, *, with_usage: bool, cached: int | None = None
) -> dict[str, Any]:
    """A ``chat.completion`` object for ``reply`` (``cached``: see :func:`_usage`)."""
    body: dict[str, Any] = {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "hybrid-sim",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text, "refusal": None},
                "logprobs": None,
                "finish_reason": reply.finish_reason,
            }
        ],
    }
    if with_usage:
        body["usage"] = _usage(reply, cached)
    return body


def _usage(reply: Reply, cached: int | None = None) -> dict[str, Any]:
    """The usage object; with a prefix cache (``cached`` not None), OpenAI's
    ``prompt_tokens_details.cached_tokens`` too."""
    usage: dict[str, Any] = {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return usage
