"""OpenTelemetry export: a span per run, per row and per attempt with the GenAI conventions'
attribute names (checked against the semantic-conventions package), the metrics, no prompt or
answer text unless asked, and never the key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics
from opentelemetry.semconv.attributes import error_attributes, server_attributes
from opentelemetry.trace import SpanKind, StatusCode

from hybrid import ConfigError, Orchestrator, Price, Query, Retry, ServerError
from hybrid.otel import instrument
from hybrid.testing import Answer, Fail, FakeBackend

from .conftest import orchestrated

pytestmark = pytest.mark.looptime

PROMPT, ANSWER, SYSTEM = "What is the capital of Peru?", "Lima is the capital.", "Answer briefly."


class Exported:
    def __init__(self) -> None:
        self.spans_out = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans_out))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def spans(self) -> list[ReadableSpan]:
        return list(self.spans_out.get_finished_spans())

    def named(self, prefix: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name.startswith(prefix)]

    def metrics(self) -> dict[str, list[object]]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return {
            metric.name: list(metric.data.data_points)
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }


@pytest.fixture
def exported() -> Iterator[Exported]:
    out = Exported()
    yield out
    out.tracer_provider.shutdown()


def flaky() -> FakeBackend:
    script = {
        "capital": [Fail(ServerError("overloaded", status=503), delay=0.5), Answer(ANSWER, delay=1.0)],
        "broken": Fail(ServerError("down", status=500), delay=0.25),
    }
    return FakeBackend(script, default=Answer(ANSWER, delay=2.0, prompt_tokens=11, completion_tokens=5))


async def test_a_run_exports_a_span_per_run_row_and_attempt_in_the_genai_conventions(exported: Exported) -> None:
    backend = flaky()
    async with Orchestrator(
        backend,
        retry=Retry(attempts=2, base=0.25, jitter=0.0),
        prices={"fake": Price(prompt_per_mtok=1.0, completion_per_mtok=2.0)},
    ) as orch:
        instrument(orch, tracer_provider=exported.tracer_provider, meter_provider=exported.meter_provider)
        run = await orch.run(
            [
                Query("capital", PROMPT, system=SYSTEM, max_tokens=20, temperature=0.5),
                Query("other", "x"),
                Query("broken", "y"),
            ],
            raise_if_all_failed=False,
        )
    [run_span] = exported.named("hybrid run")
    queries = {s.attributes["hybrid.query.name"]: s for s in exported.named("hybrid query")}
    attempts = exported.named("chat ")
    assert set(queries) == {"capital", "other", "broken"}
    assert len(attempts) == sum(r.attempts for r in run.results) == 2 + 1 + 2
    # one trace: attempts under their row, rows under the run
    assert {s.context.trace_id for s in exported.spans()} == {run_span.context.trace_id}
    assert all(q.parent is not None and q.parent.span_id == run_span.context.span_id for q in queries.values())
    capital_attempts = [
        a for a in attempts if a.parent is not None and a.parent.span_id == queries["capital"].context.span_id
    ]
    assert [a.attributes["hybrid.attempt"] for a in capital_attempts] == [1, 2]
    failed, answered = capital_attempts
    assert answered.kind is SpanKind.CLIENT and answered.name == "chat fake"
    assert dict(answered.attributes) | {} == {
        **answered.attributes,
        gen_ai.GEN_AI_OPERATION_NAME: "chat",
        gen_ai.GEN_AI_PROVIDER_NAME: "openai",
        gen_ai.GEN_AI_REQUEST_MODEL: "fake",
        gen_ai.GEN_AI_REQUEST_MAX_TOKENS: 20,
        gen_ai.GEN_AI_REQUEST_TEMPERATURE: 0.5,
        gen_ai.GEN_AI_RESPONSE_MODEL: "fake",
        gen_ai.GEN_AI_RESPONSE_FINISH_REASONS: ("stop",),
        gen_ai.GEN_AI_USAGE_INPUT_TOKENS: run["capital"].usage.prompt_tokens,
        gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS: run["capital"].usage.completion_tokens,
    }
    assert (
        failed.attributes[error_attributes.ERROR_TYPE] == "server_error"
        and failed.status.status_code is StatusCode.ERROR
    )
    assert failed.status.description == "server_error"  # the kind only: a message may quote the prompt
    # the row: retries, latency parts, cost; its times are the run's loop clock (virtual: exact)
    capital = queries["capital"].attributes
    row = run["capital"]
    assert capital["hybrid.retries"] == 1 and capital["hybrid.attempts"] == 2
    assert capital["hybrid.latency_s"] == row.latency_s and capital["hybrid.queue_s"] == row.queue_s
    assert capital["hybrid.retry_s"] == row.retry_s and capital["hybrid.cost_usd"] == row.cost_usd
    assert queries["broken"].attributes[error_attributes.ERROR_TYPE] == "server_error"
    assert answered.end_time - failed.start_time == pytest.approx((0.5 + 0.25 + 1.0) * 1e9, abs=1e3)
    assert run_span.attributes["hybrid.run.failed"] == 1 and run_span.attributes["hybrid.run.succeeded"] == 2
    assert run_span.end_time - run_span.start_time == pytest.approx(run.metrics.wall_s * 1e9, abs=1e3)
    # metrics: a duration per attempt, input and output tokens per answer
    points = exported.metrics()
    durations = points[gen_ai_metrics.GEN_AI_CLIENT_OPERATION_DURATION]
    assert sum(p.count for p in durations) == len(attempts)
    assert sum(p.count for p in points[gen_ai_metrics.GEN_AI_CLIENT_TOKEN_USAGE]) == 2 * 2  # two answers


@pytest.mark.looptime(False)  # a real server over loopback
async def test_spans_carry_no_text_by_default_and_never_the_key(exported: Exported) -> None:
    async with orchestrated("openai") as (orch, server):
        instrument(orch, tracer_provider=exported.tracer_provider)
        run = await orch.run([Query("q", PROMPT, system=SYSTEM, stream=True)])
    everything = repr([(s.name, dict(s.attributes), s.status.description, s.events) for s in exported.spans()])
    assert server.api_key not in everything
    answer = run["q"].text
    assert answer and answer[:20] not in everything and PROMPT not in everything and SYSTEM not in everything
    [attempt] = exported.named("chat ")
    assert attempt.attributes[server_attributes.SERVER_ADDRESS] == "127.0.0.1"
    assert attempt.attributes[gen_ai.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] > 0


async def test_capture_content_exports_the_messages(exported: Exported) -> None:
    async with Orchestrator(FakeBackend(default=Answer(ANSWER))) as orch:
        instrument(orch, tracer_provider=exported.tracer_provider, capture_content=True)
        await orch.run([Query("q", PROMPT, system=SYSTEM)])
    [attempt] = exported.named("chat ")
    assert PROMPT in attempt.attributes[gen_ai.GEN_AI_INPUT_MESSAGES]
    assert SYSTEM in attempt.attributes[gen_ai.GEN_AI_SYSTEM_INSTRUCTIONS]
    assert ANSWER in attempt.attributes[gen_ai.GEN_AI_OUTPUT_MESSAGES]


async def test_a_row_answered_from_the_cache_has_a_row_span_and_no_attempt(exported: Exported, tmp_path) -> None:
    backend = FakeBackend(default=Answer(ANSWER, delay=1.0))
    async with Orchestrator(backend, store=tmp_path / "runs.sqlite", cache=True) as orch:
        await orch.run([Query("q", PROMPT)])
        instrumented = instrument(orch, tracer_provider=exported.tracer_provider)
        again = await orch.run([Query("q", PROMPT)])
        instrumented.uninstrument()
        await orch.run([Query("q", PROMPT)])
    assert again["q"].origin == "cache"
    query, run = exported.spans()  # the uninstrumented run exported nothing
    assert query.name == "hybrid query q" and run.name.startswith("hybrid run run-")
    assert exported.named("hybrid query")[0].attributes["hybrid.origin"] == "cache"


async def test_instrumenting_twice_is_refused() -> None:
    async with Orchestrator(FakeBackend()) as orch:
        instrument(orch, tracer_provider=TracerProvider())
        with pytest.raises(ConfigError, match="instrumented already"):
            instrument(orch, tracer_provider=TracerProvider())
