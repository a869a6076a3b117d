"""Anthropic's Messages API: the official ``anthropic`` SDK against the simulator's second dialect
(answers, events, usage with cache reads, errors, 529, rate-limit headers), and the kit's
``AnthropicBackend`` behind the same chain as every backend: cache, store, budget, adaptive
concurrency, OpenTelemetry's provider name.  (The fault, retry and cancellation tests cross it as a
third backend: ``any_backend_kind`` in conftest.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anthropic
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hybrid import AnthropicBackend, ConfigError, Orchestrator, Price, Query, otel, sim
from hybrid.backends.anthropic_backend import report
from hybrid.pricing import PriceBook
from hybrid.sim import Faults, ModelProfile, SimConfig

MANUAL = "The manual. " * 60  # a shared prefix of some 200 tokens


@pytest.fixture
async def server() -> AsyncIterator[sim.SimServer]:
    profile = ModelProfile(ttft_s=0.0, prompt_tps=1e9, completion_tps=1e9, prefix_cache_tokens=10_000)
    config = SimConfig(
        seed=4, time_scale=0, rpm=1000, tpm=10_000_000, profiles={"sim-small": profile}, api_key="sk-sim-messages-key"
    )
    async with sim.serve(config) as served:
        yield served


def sdk(server: sim.SimServer, api_key: str | None = None) -> anthropic.AsyncAnthropic:
    """The official SDK on the simulator (its base URL has no /v1: the SDK adds /v1/messages)."""
    return anthropic.AsyncAnthropic(
        base_url=server.url.removesuffix("/v1"), api_key=api_key or server.api_key, max_retries=0
    )


async def test_the_sdk_reads_a_message_with_cache_reads_and_rate_limit_headers(server: sim.SimServer) -> None:
    async with sdk(server) as client:
        ask = {
            "model": "sim-small",
            "max_tokens": 20,
            "system": MANUAL,
            "messages": [{"role": "user", "content": "Q1"}],
        }
        first = await client.messages.create(**ask)  # type: ignore[arg-type]
        before = datetime.now(tz=UTC).replace(microsecond=0)  # the header has milliseconds
        raw = await client.messages.with_raw_response.create(**ask)  # type: ignore[arg-type]
        after = datetime.now(tz=UTC)
    again = await raw.parse()
    assert first.type == "message" and first.role == "assistant" and first.content[0].type == "text"
    assert first.content[0].text and first.stop_reason in ("end_turn", "max_tokens")
    assert first.usage.cache_read_input_tokens == 0 and again.usage.cache_read_input_tokens > 0
    assert again.usage.input_tokens + again.usage.cache_read_input_tokens == first.usage.input_tokens
    assert again.usage.cache_creation_input_tokens == 0
    headers = raw.headers
    assert headers["anthropic-ratelimit-requests-limit"] == "1000"
    assert int(headers["anthropic-ratelimit-requests-remaining"]) == 1000 - 2
    reset = datetime.fromisoformat(headers["anthropic-ratelimit-tokens-reset"].replace("Z", "+00:00"))
    assert before <= reset <= after and headers["request-id"]  # room to spare: the window resets as it answers


async def test_the_sdk_streams_anthropics_events_in_order(server: sim.SimServer) -> None:
    async with sdk(server) as client:
        stream = await client.messages.create(
            model="sim-small", max_tokens=40, messages=[{"role": "user", "content": "Stream it"}], stream=True
        )
        events = [event async for event in stream]
        whole = await client.messages.create(
            model="sim-small", max_tokens=40, messages=[{"role": "user", "content": "Stream it"}]
        )
    kinds = [event.type for event in events]
    deltas = [e for e in events if e.type == "content_block_delta"]
    assert kinds[:2] == ["message_start", "content_block_start"] and len(deltas) >= 1
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert "".join(d.delta.text for d in deltas) == whole.content[0].text  # type: ignore[union-attr]
    final = events[-2]
    assert final.usage.output_tokens == whole.usage.output_tokens  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("config", "status", "kind"),
    [
        (SimConfig(seed=1, time_scale=0, faults=Faults(unavailable=1.0)), 529, "overloaded_error"),
        (SimConfig(seed=1, time_scale=0, faults=Faults(server_error=1.0)), 500, "api_error"),
        (SimConfig(seed=1, time_scale=0, faults=Faults(rate_limit=1.0)), 429, "rate_limit_error"),
    ],
)
async def test_errors_come_in_anthropics_shape(config: SimConfig, status: int, kind: str) -> None:
    async with sim.serve(config) as served, sdk(served) as client:
        with pytest.raises(anthropic.APIStatusError) as caught:
            await client.messages.create(model="sim-small", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == status
    assert caught.value.body == {
        "type": "error",
        "error": {"type": kind, "message": caught.value.body["error"]["message"]},
    }  # type: ignore[index]


async def test_a_request_anthropic_would_refuse_is_refused(server: sim.SimServer) -> None:
    async with sdk(server) as client:
        with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
            await client.messages.create(
                model="sim-small",
                max_tokens=5,
                messages=[{"role": "user", "content": "x"}],
                extra_body={"max_tokens": None},
            )
        with pytest.raises(anthropic.BadRequestError, match="temperature"):
            await client.messages.create(
                model="sim-small",
                max_tokens=5,
                messages=[{"role": "user", "content": "x"}],
                extra_body={"temperature": 1.5},
            )
        with pytest.raises(anthropic.BadRequestError, match="role"):
            await client.messages.create(model="sim-small", max_tokens=5, messages=[{"role": "system", "content": "x"}])  # type: ignore[typeddict-item]
    async with sdk(server, api_key="wrong") as wrong:
        with pytest.raises(anthropic.AuthenticationError):
            await wrong.messages.create(model="sim-small", max_tokens=5, messages=[{"role": "user", "content": "x"}])


async def test_the_backend_runs_through_the_cache_store_budget_and_adaptive_limit(
    server: sim.SimServer, tmp_path: Path
) -> None:
    backend = AnthropicBackend(base_url=server.url, api_key=server.api_key, model="sim-small")
    price = Price(prompt_per_mtok=1.0, completion_per_mtok=5.0, cached_prompt_per_mtok=0.1)
    queries = [
        Query(f"q{i}", f"Question {i}", system=MANUAL, max_tokens=16, temperature=0.5, stream=i % 2 == 1)
        for i in range(6)
    ]
    async with Orchestrator(
        backend, store=tmp_path / "runs.sqlite", cache=True, budget_usd=1.0, prices={"sim-small": price},
        max_concurrency="auto",
    ) as orch:  # fmt: skip
        live = await orch.run(queries, name="live")
        again = await orch.run(queries, name="again")
        refused = await orch.run([Query("j", "give JSON", json_mode=True, max_tokens=5)], raise_if_all_failed=False)
        kept = orch.store.load("live")  # type: ignore[union-attr]
    assert live.ok and [r.origin for r in again.results] == ["cache"] * 6
    assert server.stats()["requests"] == 6  # the cached run and the refused JSON query sent nothing
    assert refused.results[0].error is not None and refused.results[0].error.kind == "bad_request"
    assert sum(r.usage.cached_prompt_tokens for r in live.results) > 0  # the shared system prompt was cached
    assert live.metrics.cost_usd == pytest.approx(sum(price.cost(r.usage) for r in live.results))
    assert live.metrics.budget is not None and live.metrics.budget.spent_usd == pytest.approx(live.metrics.cost_usd)
    assert all(r.server_queue_s is not None for r in live.results)  # the server's report reached the row
    assert [r.text for r in kept.results] == [r.text for r in live.results]
    assert all(r.finish_reason in ("stop", "length") for r in live.results)
    streamed = [r for r in live.results if r.query.stream]
    assert all(r.ttft_s is not None and not r.usage.estimated for r in streamed)


async def test_settings_come_from_anthropics_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "https://api.anthropic.com")
    monkeypatch.setenv("ANTHROPIC_MODEL", "claude-3-5-haiku-latest")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    backend = AnthropicBackend()
    assert backend.model == "claude-3-5-haiku-latest" and "api_key=<hidden>" in repr(backend)
    assert PriceBook(None, backend.base_url)[backend.model].source.startswith("genai-prices")
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        async with Orchestrator(backend) as orch:
            await orch.run([Query("q", "x")])


async def test_spans_name_anthropic_as_the_provider(server: sim.SimServer) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    backend = AnthropicBackend(base_url=server.url, api_key=server.api_key, model="sim-small")
    async with Orchestrator(backend) as orch:
        otel.instrument(orch, tracer_provider=provider)
        await orch.run([Query("q", "x", max_tokens=8)])
    [attempt] = [s for s in exporter.get_finished_spans() if s.name == "chat sim-small"]
    assert attempt.attributes["gen_ai.provider.name"] == "anthropic"
    assert attempt.attributes["gen_ai.usage.output_tokens"] > 0


async def test_the_rate_limit_headers_give_the_adaptive_limit_its_room(server: sim.SimServer) -> None:
    async with sdk(server) as client:
        raw = await client.messages.with_raw_response.create(
            model="sim-small", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    said = report(raw.headers)
    assert said is not None and said.remaining_requests == 1000 - 1 and said.remaining_tokens is not None
    assert said.reset_requests_s is not None and said.reset_requests_s >= 0
    assert said.queue_s is not None  # the simulator's own queue header passes through the dialect


def test_a_reset_time_is_read_as_the_seconds_until_it() -> None:
    now = datetime.now(tz=UTC)

    def reset_s(at: datetime) -> float | None:
        said = report({"anthropic-ratelimit-requests-reset": at.isoformat().replace("+00:00", "Z")})
        return None if said is None else said.reset_requests_s

    past, soon, later = (
        reset_s(now - timedelta(hours=1)),
        reset_s(now + timedelta(hours=1)),
        reset_s(now + timedelta(hours=2)),
    )
    assert past == 0.0 and soon is not None and later is not None and 0 < soon < later
    assert report({"anthropic-ratelimit-requests-reset": "not a time"}) is None
