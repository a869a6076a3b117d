"""OpenTelemetry export of the kit's runs, in the GenAI semantic conventions (extra ``otel``).

Teams look at LLM calls in OpenTelemetry backends (Phoenix, Langfuse, Jaeger); the kit records
everything and, instrumented, exports it::

    from hybrid import otel
    otel.instrument(orch, tracer_provider=tp, meter_provider=mp)   # tp/mp: the SDK's, or the global ones

Spans, each run a trace:

* ``hybrid run NAME`` (one per run): mode, queries, and at its end how many answered and failed,
  tokens, cost, wall and the validity flags;
* ``hybrid query NAME`` (one per row, a child of the run): what the row says: model, tokens, finish
  reason, ``error.type`` (the kit's error kind), attempts and retries, and the latency parts
  (queue, time to first token, retries, client, server queue, server, network) as ``hybrid.*``
  attributes; a row answered from the cache or the store has no attempt below it;
* ``chat MODEL`` (one per attempt that was sent, a child of its query, kind CLIENT): the
  conventions' request and response attributes (``gen_ai.request.model``,
  ``gen_ai.usage.input_tokens``, ``gen_ai.response.finish_reasons``, ``error.type``, ...).

Metrics, per attempt: ``gen_ai.client.operation.duration``, ``gen_ai.client.token.usage`` (input and
output) and ``gen_ai.client.operation.time_to_first_chunk`` for a streamed answer.

Prompt and answer text are exported only with ``capture_content=True`` (as
``gen_ai.input.messages``, ``gen_ai.system_instructions`` and ``gen_ai.output.messages``); an
error's message, which a server may fill with the prompt, likewise.  The API key never: the spans
are built from queries and results, which never hold it.

The engine knows nothing of this module: a run's spans hang on the orchestrator's ``observers``
(its events, :mod:`hybrid.events`) and an attempt's on a link appended to its call chain
(``orch.links``), next to the backend.  Span times are the run's loop clock laid on the wall clock
at the run's start, so a run on a virtual clock exports the times it measured.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from hybrid.chain import Attempt, Next
from hybrid.errors import ConfigError, QueryError
from hybrid.events import Observed, QueryFinished, QueryStarted, RunFinished, RunStarted
from hybrid.query import Completion, Query, QueryResult

try:
    from opentelemetry import metrics, trace
    from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
    from opentelemetry.semconv._incubating.metrics import gen_ai_metrics
    from opentelemetry.semconv.attributes import error_attributes, server_attributes
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError(
        "hybrid.otel needs OpenTelemetry: pip install 'hybrid-llm-kit[otel]' "
        "(opentelemetry-sdk and opentelemetry-semantic-conventions)."
    ) from exc

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from hybrid.orchestrator import Orchestrator

__all__ = ["Instrumentation", "instrument"]

#: The row's latency parts and times, exported as ``hybrid.<part>`` attributes of its query span.
LATENCY_PARTS = ("latency_s", "queue_s", "ttft_s", "retry_s", "client_s", "server_queue_s", "server_s", "network_s")
_OPERATION = "chat"

#: The run the current task is running (set by its ``RunStarted``), for the attempt link to hang its spans on.
_RUN: contextvars.ContextVar[_Run | None] = contextvars.ContextVar("hybrid_otel_run", default=None)


def instrument(
    orch: Orchestrator,
    *,
    tracer_provider: Any = None,
    meter_provider: Any = None,
    capture_content: bool = False,
) -> Instrumentation:
    """Export ``orch``'s runs as spans and metrics (see the module docstring); returns the
    :class:`Instrumentation`, whose ``uninstrument()`` stops it.  ``tracer_provider`` /
    ``meter_provider`` default to OpenTelemetry's global ones."""
    from hybrid.orchestrator import Orchestrator

    if not isinstance(orch, Orchestrator):
        raise ConfigError(f"otel.instrument needs an Orchestrator, got {type(orch).__name__}.")
    if any(isinstance(link, Instrumentation) for link in orch.links):
        raise ConfigError("This orchestrator is instrumented already; uninstrument() the first one to start anew.")
    return Instrumentation(orch, tracer_provider, meter_provider, capture_content=bool(capture_content))


@dataclass
class _Run:
    """One run's spans: the run's, each query's, and the loop-clock origin the span times use."""

    span: Span
    loop0: float
    wall0_ns: int
    token: contextvars.Token[_Run | None] | None = None
    queries: dict[int, Span] = field(default_factory=dict)

    def ns(self, loop_time: float) -> int:
        """A loop time as the wall-clock nanoseconds OpenTelemetry stamps."""
        return self.wall0_ns + round((loop_time - self.loop0) * 1e9)


class Instrumentation:
    """The observer and the call-chain link that turn an orchestrator's runs into spans and metrics."""

    def __init__(self, orch: Orchestrator, tracer_provider: Any, meter_provider: Any, *, capture_content: bool) -> None:
        from hybrid import __version__

        self.orch = orch
        self.capture_content = capture_content
        self.tracer = trace.get_tracer("hybrid", __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter("hybrid", __version__, meter_provider=meter_provider)
        self.duration = gen_ai_metrics.create_gen_ai_client_operation_duration(meter)
        self.token_usage = gen_ai_metrics.create_gen_ai_client_token_usage(meter)
        self.first_chunk = gen_ai_metrics.create_gen_ai_client_operation_time_to_first_chunk(meter)
        self.provider = getattr(orch.backend, "provider", "openai")
        url = urlsplit(getattr(orch.backend, "base_url", None) or "")
        self.server: dict[str, Any] = {}
        if url.hostname:
            self.server[server_attributes.SERVER_ADDRESS] = url.hostname
            if url.port is not None:
                self.server[server_attributes.SERVER_PORT] = url.port
        orch.observers.append(self.observe)
        orch.links.append(self)

    def uninstrument(self) -> None:
        """Stop exporting this orchestrator's runs (runs in flight keep their spans until they end)."""
        if self.observe in self.orch.observers:
            self.orch.observers.remove(self.observe)
        if self in self.orch.links:
            self.orch.links.remove(self)

    def _base(self, model: str) -> dict[str, Any]:
        return {
            gen_ai.GEN_AI_OPERATION_NAME: _OPERATION,
            gen_ai.GEN_AI_PROVIDER_NAME: self.provider,
            gen_ai.GEN_AI_REQUEST_MODEL: model,
            **self.server,
        }

    # -- runs and rows: the orchestrator's events ----------------------------------------------
    def observe(self, event: Observed) -> None:
        run = _RUN.get()
        if isinstance(event, RunStarted):
            self._start_run(event)
        elif run is None:
            return
        elif isinstance(event, QueryStarted):
            self._query_span(run, event.index, event.name)
        elif isinstance(event, QueryFinished):
            self._end_query(run, event.result)
        elif isinstance(event, RunFinished):
            self._end_run(run, event)

    def _start_run(self, event: RunStarted) -> None:
        loop0, wall0 = asyncio.get_running_loop().time(), time.time_ns()
        attributes = {
            "hybrid.run.mode": event.mode,
            "hybrid.run.queries": event.queries,
            gen_ai.GEN_AI_PROVIDER_NAME: self.provider,
            gen_ai.GEN_AI_REQUEST_MODEL: event.model,
        }
        if event.name is not None:
            attributes["hybrid.run.name"] = event.name
        span = self.tracer.start_span(
            f"hybrid run {event.name or event.mode}", context=None, attributes=attributes, start_time=wall0
        )
        run = _Run(span, loop0, wall0)
        run.token = _RUN.set(run)

    def _query_span(self, run: _Run, index: int, name: str) -> Span:
        span = run.queries.get(index)
        if span is None:
            span = run.queries[index] = self.tracer.start_span(
                f"hybrid query {name}",
                context=trace.set_span_in_context(run.span),
                attributes={"hybrid.query.name": name, "hybrid.query.index": index},
                start_time=run.ns(asyncio.get_running_loop().time()),
            )
        return span

    def _end_query(self, run: _Run, row: QueryResult) -> None:
        span = self._query_span(run, row.index, row.name)
        model = row.query.model or self.orch.backend.model
        span.set_attributes(self._base(model))
        span.set_attributes(
            {
                "hybrid.origin": row.origin,
                "hybrid.attempts": row.attempts,
                "hybrid.retries": row.retries,
                gen_ai.GEN_AI_USAGE_INPUT_TOKENS: row.usage.prompt_tokens,
                gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS: row.usage.completion_tokens,
                gen_ai.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: row.usage.cached_prompt_tokens,
                **{f"hybrid.{part}": v for part in LATENCY_PARTS if (v := getattr(row, part)) is not None},
            }
        )
        if row.ttft_s is not None:
            span.set_attribute(gen_ai.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK, row.ttft_s)
        if row.model is not None:
            span.set_attribute(gen_ai.GEN_AI_RESPONSE_MODEL, row.model)
        if row.finish_reason is not None:
            span.set_attribute(gen_ai.GEN_AI_RESPONSE_FINISH_REASONS, [row.finish_reason])
        if row.cost_usd is not None:
            span.set_attribute("hybrid.cost_usd", row.cost_usd)
        if row.error is not None:
            self._failed(span, row.error.kind, row.error)
        del run.queries[row.index]
        span.end(end_time=run.ns(asyncio.get_running_loop().time()))

    def _end_run(self, run: _Run, event: RunFinished) -> None:
        m = event.run.metrics
        run.span.set_attributes(
            {
                "hybrid.run.succeeded": m.succeeded,
                "hybrid.run.failed": m.failed,
                "hybrid.run.wall_s": m.wall_s,
                "hybrid.run.cancelled": event.run.cancelled,
                "hybrid.run.flags": list(event.run.flags),
                gen_ai.GEN_AI_USAGE_INPUT_TOKENS: m.prompt_tokens,
                gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS: m.completion_tokens,
            }
        )
        if m.cost_usd is not None:
            run.span.set_attribute("hybrid.cost_usd", m.cost_usd)
        if m.failed or event.run.cancelled:
            run.span.set_status(Status(StatusCode.ERROR, f"{m.failed} of {len(event.run)} queries failed"))
        for span in run.queries.values():  # never finished: the run stopped first
            span.end(end_time=run.ns(asyncio.get_running_loop().time()))
        run.span.end(end_time=run.ns(asyncio.get_running_loop().time()))
        try:
            if run.token is not None:
                _RUN.reset(run.token)
        except ValueError:  # told from another context than it started in: that context ends anyway
            _RUN.set(None)

    def _failed(self, span: Span, kind: str, error: BaseException) -> None:
        span.set_attribute(error_attributes.ERROR_TYPE, kind)
        span.set_status(Status(StatusCode.ERROR, str(error) if self.capture_content else kind))

    # -- attempts: a link of the call chain -----------------------------------------------------
    async def __call__(self, query: Query, attempt: Attempt, call_next: Next) -> Completion:
        run = _RUN.get()
        if run is None:  # a run of a strategy that does not tell its start (never the kit's own)
            return await call_next(query, attempt)
        loop = asyncio.get_running_loop()
        model = query.model or self.orch.backend.model
        metric = self._base(model)  # the metrics' attributes: the span's, less the request's settings
        attributes = metric | _request(query) | {"hybrid.attempt": attempt.number}
        if self.capture_content:
            attributes |= _input_messages(query)
        parent = self._query_span(run, attempt.index, query.name)
        started = loop.time()
        with self.tracer.start_as_current_span(
            f"{_OPERATION} {model}",
            context=trace.set_span_in_context(parent),
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=run.ns(started),
            end_on_exit=False,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                completion = await call_next(query, attempt)
            except BaseException as exc:
                kind = exc.kind if isinstance(exc, QueryError) else type(exc).__name__
                self._failed(span, kind, exc)
                self.duration.record(loop.time() - started, metric | {error_attributes.ERROR_TYPE: kind})
                span.end(end_time=run.ns(loop.time()))
                raise
            metric[gen_ai.GEN_AI_RESPONSE_MODEL] = completion.model
            span.set_attributes(_response(completion))
            if self.capture_content:
                span.set_attribute(gen_ai.GEN_AI_OUTPUT_MESSAGES, _output_messages(completion))
            self.duration.record(loop.time() - started, metric)
            usage = completion.usage
            self.token_usage.record(usage.prompt_tokens, metric | {gen_ai.GEN_AI_TOKEN_TYPE: "input"})
            self.token_usage.record(usage.completion_tokens, metric | {gen_ai.GEN_AI_TOKEN_TYPE: "output"})
            if completion.ttft_s is not None:
                self.first_chunk.record(completion.ttft_s, metric)
            span.end(end_time=run.ns(loop.time()))
            return completion


def _request(query: Query) -> dict[str, Any]:
    """The request's attributes the conventions name, for the settings the query has."""
    attributes: dict[str, Any] = {gen_ai.GEN_AI_REQUEST_STREAM: query.stream}
    if query.max_tokens is not None:
        attributes[gen_ai.GEN_AI_REQUEST_MAX_TOKENS] = query.max_tokens
    if query.temperature is not None:
        attributes[gen_ai.GEN_AI_REQUEST_TEMPERATURE] = query.temperature
    if query.json_mode:
        attributes[gen_ai.GEN_AI_OUTPUT_TYPE] = "json"
    return attributes


def _response(completion: Completion) -> dict[str, Any]:
    usage = completion.usage
    attributes: dict[str, Any] = {
        gen_ai.GEN_AI_RESPONSE_MODEL: completion.model,
        gen_ai.GEN_AI_USAGE_INPUT_TOKENS: usage.prompt_tokens,
        gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS: usage.completion_tokens,
        gen_ai.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: usage.cached_prompt_tokens,
    }
    if completion.finish_reason is not None:
        attributes[gen_ai.GEN_AI_RESPONSE_FINISH_REASONS] = [completion.finish_reason]
    if completion.ttft_s is not None:
        attributes[gen_ai.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = completion.ttft_s
    return attributes


def _input_messages(query: Query) -> dict[str, str]:
    """The prompt as the conventions' ``gen_ai.input.messages`` (and the system prompt apart)."""
    messages = [m for m in query.messages() if m["role"] != "system"]
    attributes = {
        gen_ai.GEN_AI_INPUT_MESSAGES: orjson.dumps(
            [{"role": m["role"], "parts": [{"type": "text", "content": m["content"]}]} for m in messages]
        ).decode()
    }
    if query.system is not None:
        system = [{"type": "text", "content": query.system}]
        attributes[gen_ai.GEN_AI_SYSTEM_INSTRUCTIONS] = orjson.dumps(system).decode()
    return attributes


def _output_messages(completion: Completion) -> str:
    message = {
        "role": "assistant",
        "parts": [{"type": "text", "content": completion.text}],
        "finish_reason": completion.finish_reason or "stop",
    }
    return orjson.dumps([message]).decode()
