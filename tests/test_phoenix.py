"""End to end: a run's spans reach a real OpenTelemetry receiver, Arize Phoenix started on this
machine (from ``.venv-phoenix``, which ``make test-browser`` makes: a server in a virtualenv of its
own), and read back from its API carry the GenAI conventions' attributes and no prompt, answer or key."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from hybrid import Orchestrator, Query, Retry, otel, sim
from hybrid.process import free_port

pytestmark = pytest.mark.browser  # the tier of heavy, real front ends: make test-browser

PROJECT = "hybrid-e2e"
#: Phoenix's own interpreter (``make test-browser`` makes its virtualenv); HYBRID_PHOENIX_PYTHON names another.
PHOENIX_PYTHON = Path(
    os.environ.get("HYBRID_PHOENIX_PYTHON") or Path(__file__).resolve().parent.parent / ".venv-phoenix/bin/python"
)
PROMPT = "Name the largest moon of Saturn."


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bytes(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Phoenix server on loopback, on free ports, with its own working folder; its base URL."""
    python = PHOENIX_PYTHON
    assert python.exists(), f"Phoenix is missing: make test-browser installs it into {python.parent.parent}"
    port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "PHOENIX_WORKING_DIR": str(tmp_path_factory.mktemp("phoenix")),
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(grpc_port),
        "PHOENIX_TELEMETRY_ENABLED": "false",
    }
    log = Path(env["PHOENIX_WORKING_DIR"]) / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(python), "-m", "phoenix.server.main", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while _get(f"{url}/healthz") is None:
            assert server.poll() is None, f"Phoenix exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"Phoenix did not come up: {log.read_text()[-2000:]}"
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


async def test_a_runs_spans_reach_phoenix_with_the_genai_attributes(phoenix: str) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"openinference.project.name": PROJECT}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{phoenix}/v1/traces")))
    config = sim.SimConfig(seed=5, time_scale=0.0, api_key="sk-sim-e2e-secret-key-123456")
    backend = sim.backend(config)
    async with Orchestrator(backend, retry=Retry(attempts=2, base=0.01)) as orch:
        otel.instrument(orch, tracer_provider=provider)
        run = await orch.run([Query(f"q{i}", f"{PROMPT} ({i})", max_tokens=16) for i in range(3)])
    provider.shutdown()  # flushes the batch to Phoenix
    expected = 1 + 2 * len(run)  # the run, each row, each row's one attempt
    deadline, spans = time.monotonic() + 60, []
    while len(spans) < expected and time.monotonic() < deadline:
        body = _get(f"{phoenix}/v1/projects/{PROJECT}/spans?limit=100")
        spans = [] if body is None else orjson.loads(body)["data"]
        await asyncio.sleep(0.5)
    names = sorted(s["name"] for s in spans)
    assert names == sorted(["hybrid run gather", *(f"hybrid query q{i}" for i in range(3)), *["chat sim-small"] * 3])
    attempt = next(s for s in spans if s["name"] == "chat sim-small")
    attributes = attempt["attributes"]
    assert attributes["gen_ai.request.model"] == "sim-small" and attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.usage.input_tokens"] > 0 and attributes["gen_ai.usage.output_tokens"] > 0
    by_id = {s["context"]["span_id"]: s for s in spans}
    assert by_id[attempt["parent_id"]]["name"].startswith("hybrid query ")
    everything = orjson.dumps(spans).decode()
    assert PROMPT not in everything and config.api_key not in everything
    assert not any((r.text or "")[:24] in everything for r in run.results)
