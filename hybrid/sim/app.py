"""The simulator's HTTP face: an aiohttp application speaking OpenAI's chat-completions protocol.

Routes: ``POST /v1/chat/completions`` (JSON, or SSE when ``stream`` is true), ``GET /v1/models``,
``GET /sim/stats`` (the counters of :meth:`Simulator.stats`) and ``GET /health``.

The server is run with aiohttp's handler cancellation on, so a client that goes away cancels its
handler: it is counted as a disconnect and leaves nothing in flight.  Bad requests get OpenAI-shaped
error bodies (``{"error": {"message", "type", "param", "code"}}``) with 400/401/404; an unexpected
bug answers 500 with the same shape and no traceback.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from hybrid.sim.config import SimConfig
from hybrid.sim.model import FaultPlan, Pace, Reply, ReplyModel, pace
from hybrid.tokens import message_text

log = logging.getLogger("hybrid.sim")

_ROLES = {"system", "developer", "user", "assistant", "tool"}

_JSON = "application/json"


class RequestRejected(Exception):
    """Raised inside a handler to answer with an OpenAI-shaped error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


class SlidingWindow:
    """Requests and tokens seen over the last ``window_s`` seconds, for RPM/TPM limits."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._events: deque[tuple[float, int]] = deque()
        self.tokens = 0

    def purge(self, now: float) -> None:
        while self._events and self._events[0][0] <= now - self.window_s:
            self.tokens -= self._events.popleft()[1]

    @property
    def requests(self) -> int:
        return len(self._events)

    def wait_until_free(self, now: float, tokens_needed: int, tpm: int | None) -> float:
        """Seconds until the window has room for one more request of ``tokens_needed``."""
        freed = self.tokens
        for at, tokens in self._events:
            freed -= tokens
            if tpm is None or freed + tokens_needed <= tpm:
                return max(0.0, at + self.window_s - now)
        return self.window_s

    def add(self, now: float, tokens: int) -> None:
        self._events.append((now, tokens))
        self.tokens += tokens


class Simulator:
    """One simulated OpenAI-compatible server: its config, model, faults, capacity and counters."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.replies = ReplyModel(config.seed, config.scripts)
        self.faults = FaultPlan(config.faults, config.seed)
        self._slots = asyncio.Semaphore(config.slots)
        self._window = SlidingWindow(config.limit_window_s)
        self._busy = 0
        self._waiting = 0
        self.requests = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.disconnects = 0
        self.by_status: Counter[int] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        #: Set by the runner: how many client connections the server holds open now.
        self.open_connections: Callable[[], int] = lambda: 0

    # -- public -------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters since start: requests seen, in flight now, peak in flight, by status, disconnects."""
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "queued": self._waiting,
            "busy_slots": self._busy,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "disconnects": self.disconnects,
            "open_connections": self.open_connections(),
            "faults": dict(sorted(self.faults.injected.items())),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
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

    async def list_models(self, request: web.Request) -> web.Response:
        return await self._guarded(request, self._list_models)

    async def _list_models(self, request: web.Request) -> web.StreamResponse:
        self._check_key(request)
        data = [self._model_card(name) for name in self.config.profiles]
        return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type=_JSON)

    async def get_model(self, request: web.Request) -> web.Response:
        return await self._guarded(request, self._get_model)

    async def _get_model(self, request: web.Request) -> web.StreamResponse:
        self._check_key(request)
        name = request.match_info["model"]
        if name not in self.config.profiles:
            raise RequestRejected(404, f"The model `{name}` does not exist.", code="model_not_found", param="model")
        return web.Response(body=orjson.dumps(self._model_card(name)), content_type=_JSON)

    # -- the main route -----------------------------------------------------------------------
    async def chat_completions(self, request: web.Request) -> web.Response:
        return await self._guarded(request, self._chat)

    async def _guarded(self, request: web.Request, handler: Any) -> web.Response:
        """Count the request, turn rejections into OpenAI-shaped errors, notice disconnects."""
        self.requests += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            response: web.StreamResponse = await handler(request)
        except RequestRejected as rejected:
            response = web.Response(
                status=rejected.status,
                body=error_body(rejected.message, rejected.type, rejected.param, rejected.code),
                content_type=_JSON,
                headers=rejected.headers,
            )
        except _DropConnection:
            # The transport is already aborted; cancelling ends the handler the way aiohttp
            # ends one whose client left, without counting it as a client disconnect.
            raise asyncio.CancelledError from None
        except asyncio.CancelledError:
            self.disconnects += 1
            raise
        except Exception:
            log.exception("simulator bug while answering %s", request.path)
            response = web.Response(
                status=500, body=error_body("The simulator failed unexpectedly.", "server_error"), content_type=_JSON
            )
        finally:
            self.in_flight -= 1
        self.by_status[response.status] += 1
        return response  # type: ignore[return-value]

    def _check_key(self, request: web.Request) -> None:
        expected = self.config.api_key
        if expected is None:
            return
        header = request.headers.get("Authorization", "")
        if header != f"Bearer {expected}":
            raise RequestRejected(
                401,
                "Incorrect API key provided. Pass the simulator's key (server.api_key) as the API key.",
                code="invalid_api_key",
            )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self._check_key(request)
        body = await self._parse_body(request)
        params = self._validate(body)
        model = params["model"]
        profile = self.config.profiles[model]
        messages = params["messages"]
        text = message_text(messages)
        reply = self.replies.reply(
            model, text, len(messages), params["max_tokens"], params["temperature"], params["json_mode"], profile
        )
        limit_headers = self._admit(reply, params["max_tokens"])
        key = reply.key
        fault = self.faults.draw(key, stream=params["stream"])
        await self._pre_answer_fault(fault, request)

        if self.config.max_queue is not None and self._waiting >= self.config.max_queue and self._slots.locked():
            raise RequestRejected(
                503, "The server is overloaded; retry later.", type_="server_error", code="overloaded"
            )
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        self._busy += 1
        try:
            request_pace = pace(profile, reply, seed=self.config.seed, time_scale=self.config.time_scale)
            self.prompt_tokens += reply.prompt_tokens
            self.completion_tokens += reply.completion_tokens
            request_id = f"chatcmpl-sim{key:016x}"
            if params["stream"]:
                return await self._stream(request, reply, model, request_id, request_pace, fault, params, limit_headers)
            clock = _Clock()
            await clock.wait(request_pace.ttft_s)
            for _, tokens in reply.pieces:
                await clock.wait(request_pace.decode_s(tokens, self._busy))
            await clock.settle()
            payload = self._completion(reply, model, request_id, with_usage=fault != "no_usage")
            if fault == "malformed":
                return web.Response(body=payload[: len(payload) // 2], content_type=_JSON, headers=limit_headers)
            if fault == "truncate":
                response = web.StreamResponse(headers={**limit_headers, "Content-Type": _JSON})
                response.content_length = len(payload)
                await response.prepare(request)
                await response.write(payload[: len(payload) // 2])
                raise _DropConnection.now(request)
            return web.Response(body=payload, content_type=_JSON, headers=limit_headers)
        finally:
            self._busy -= 1
            self._slots.release()

    async def _parse_body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise RequestRejected(400, "The request body is not valid JSON.", code="invalid_json") from None
        if not isinstance(body, dict):
            raise RequestRejected(400, "The request body must be a JSON object.", code="invalid_json")
        return body

    def _validate(self, body: dict[str, Any]) -> dict[str, Any]:
        """Check the fields the simulator understands, as OpenAI would, and normalise them."""

        def bad(param: str, message: str, code: str | None = "invalid_value") -> RequestRejected:
            return RequestRejected(400, message, param=param, code=code)

        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise bad("model", "you must provide a model parameter (a string).", "missing_required_parameter")
        if model not in self.config.profiles:
            known = ", ".join(self.config.profiles)
            raise RequestRejected(
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
        return {
            "model": model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": float(temperature),
            "stream": stream,
            "include_usage": bool((stream_options or {}).get("include_usage", False)),
            "json_mode": json_mode,
        }

    def _admit(self, reply: Reply, max_tokens: int | None) -> dict[str, str]:
        """Apply RPM/TPM limits; return the ``x-ratelimit-*`` headers, or raise a 429.

        Like OpenAI, a request is charged its prompt plus ``max_tokens`` when given (the most it
        may use), else its actual completion.
        """
        cfg = self.config
        if cfg.rpm is None and cfg.tpm is None:
            return {}
        now = time.monotonic()
        window = self._window
        window.purge(now)
        tokens = reply.prompt_tokens + (max_tokens if max_tokens is not None else reply.completion_tokens)
        over_requests = cfg.rpm is not None and window.requests + 1 > cfg.rpm
        over_tokens = cfg.tpm is not None and window.tokens + tokens > cfg.tpm
        headers: dict[str, str] = {}
        wait = window.wait_until_free(now, tokens, cfg.tpm) if (over_requests or over_tokens) else 0.0
        if cfg.rpm is not None:
            headers["x-ratelimit-limit-requests"] = str(cfg.rpm)
            headers["x-ratelimit-remaining-requests"] = str(
                max(0, cfg.rpm - window.requests - (0 if over_requests else 1))
            )
            headers["x-ratelimit-reset-requests"] = f"{wait:.3f}s"
        if cfg.tpm is not None:
            headers["x-ratelimit-limit-tokens"] = str(cfg.tpm)
            headers["x-ratelimit-remaining-tokens"] = str(
                max(0, cfg.tpm - window.tokens - (0 if over_tokens else tokens))
            )
            headers["x-ratelimit-reset-tokens"] = f"{wait:.3f}s"
        if over_requests or over_tokens:
            what = "requests" if over_requests else "tokens"
            headers["retry-after"] = str(max(1, math.ceil(wait)))
            headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
            raise RequestRejected(
                429,
                f"Rate limit reached for {what} per minute. Retry after {wait:.3f}s.",
                type_=what,
                code="rate_limit_exceeded",
                headers=headers,
            )
        window.add(now, tokens)
        return headers

    async def _pre_answer_fault(self, fault: str | None, request: web.Request) -> None:
        """Faults that strike before the model runs: error statuses, a hang, a dropped connection."""
        faults = self.config.faults
        if fault == "fail_first":
            status = faults.fail_first_status
            if status == 429:
                fault = "rate_limit"
            else:
                raise RequestRejected(status, f"Injected failure (status {status}).", type_="server_error")
        if fault == "rate_limit":
            retry = faults.retry_after_s
            raise RequestRejected(
                429,
                "Rate limit reached (injected). Retry after the indicated time.",
                type_="requests",
                code="rate_limit_exceeded",
                headers={"retry-after": str(math.ceil(retry)), "retry-after-ms": str(round(retry * 1000))},
            )
        if fault == "rate_limit_bare":
            raise RequestRejected(429, "Too many requests (injected).", type_="requests", code="rate_limit_exceeded")
        if fault == "server_error":
            raise RequestRejected(
                500, "The server had an error processing your request (injected).", type_="server_error"
            )
        if fault == "unavailable":
            raise RequestRejected(503, "The engine is currently overloaded (injected).", type_="server_error")
        if fault == "hang":
            await asyncio.sleep(faults.hang_s)
            raise RequestRejected(504, "Gave up hanging.", type_="server_error")
        if fault == "drop":
            raise _DropConnection.now(request)

    def _completion(self, reply: Reply, model: str, request_id: str, *, with_usage: bool) -> bytes:
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
            body["usage"] = _usage(reply)
        return orjson.dumps(body)

    async def _stream(
        self,
        request: web.Request,
        reply: Reply,
        model: str,
        request_id: str,
        request_pace: Pace,
        fault: str | None,
        params: dict[str, Any],
        headers: dict[str, str],
    ) -> web.StreamResponse:
        """Send the reply as SSE chunks: role, content in up to 8 paced pieces, finish, usage."""
        response = web.StreamResponse(
            headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            data = {
                "id": request_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "hybrid-sim",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            return b"data: " + orjson.dumps(data) + b"\n\n"

        pieces = reply.pieces
        clock = _Clock()
        await clock.wait(request_pace.ttft_s)
        await response.write(chunk({"role": "assistant", "content": "", "refusal": None}))
        for i, (piece, tokens) in enumerate(pieces):
            if fault == "truncate" and i >= len(pieces) // 2:
                raise _DropConnection.now(request)
            if fault == "malformed" and i == len(pieces) // 2:
                await response.write(b'data: {"id": "' + request_id.encode() + b'", "choices": [{"delta": \n\n')
            await clock.wait(request_pace.decode_s(tokens, self._busy))
            await response.write(chunk({"content": piece}))
        if fault == "truncate":
            raise _DropConnection.now(request)
        await clock.settle()
        await response.write(chunk({}, reply.finish_reason))
        if params["include_usage"] and fault != "no_usage":
            usage = {
                "id": request_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "hybrid-sim",
                "choices": [],
                "usage": _usage(reply),
            }
            await response.write(b"data: " + orjson.dumps(usage) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


class _Clock:
    """Paces a request in steps without a timer per tiny step: waits shorter than ``MIN_SLEEP_S``
    are owed and paid together, so a fast profile costs one sleep, not eight."""

    MIN_SLEEP_S = 0.001

    def __init__(self) -> None:
        self.owed = 0.0

    async def wait(self, seconds: float) -> None:
        self.owed += seconds
        if self.owed >= self.MIN_SLEEP_S:
            await self.settle()

    async def settle(self) -> None:
        """Pay what is owed, unless it is below the timer's resolution anyway."""
        owed, self.owed = self.owed, 0.0
        if owed >= self.MIN_SLEEP_S:
            await asyncio.sleep(owed)


class _DropConnection(Exception):
    """Abort the TCP connection without an answer (the ``drop`` and ``truncate`` faults)."""

    @classmethod
    def now(cls, request: web.Request) -> _DropConnection:
        if request.transport is not None:
            request.transport.abort()
        return cls()


def _usage(reply: Reply) -> dict[str, int]:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }
