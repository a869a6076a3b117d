"""The transport seam under HTTPBackend: any Transport carries the codec, and an in-process server
is read exactly as the wire would deliver it.

A hand-written server stands in for the simulator here, so these tests pin what the seam promises
to any server (headers and path handed over, whole and streamed answers parsed by the codec, a
dropped connection classified like a socket's) rather than what the simulator happens to do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import orjson
import pytest

from hybrid import ConfigError, HTTPBackend, Orchestrator, Query, Retry, sim
from hybrid.answer_sink import Sink
from hybrid.backends.in_process import InProcessTransport
from hybrid.backends.transport import AiohttpTransport


def chunk(content: str, finish: str | None = None) -> bytes:
    return b"data: " + orjson.dumps({"choices": [{"delta": {"content": content}, "finish_reason": finish}]}) + b"\n\n"


class Server:
    """An in-process server that answers every request the same way and remembers what it got."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.seen: list[tuple[str, str | None, dict[str, object]]] = []

    async def handle(self, path: str, headers: Mapping[str, str], body: bytes, sink: Sink) -> None:
        self.seen.append((path, headers.get("Authorization"), orjson.loads(body)))
        if self.behaviour == "whole":
            answer = {
                "model": "m",
                "choices": [{"message": {"content": "whole answer"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
            }
            await sink.whole(orjson.dumps(answer), {"x-hybrid-queue-ms": "250"})
        elif self.behaviour == "refuse":
            await sink.whole(b'{"error": {"message": "no such model", "type": "invalid_request_error"}}', {}, 404)
        elif self.behaviour == "drop":
            raise ConnectionResetError("gone")
        else:  # a stream: "stream", or "stream-then-drop"
            await sink.start({}, "text/event-stream")
            await sink.write(chunk("one "))
            await asyncio.sleep(1.0)
            if self.behaviour == "stream-then-drop":
                raise ConnectionResetError("gone midway")
            await sink.write(chunk("two", finish="stop"))
            await sink.write(b"data: [DONE]\n\n")
            await sink.finish()


def backend_for(server: Server) -> HTTPBackend:
    return HTTPBackend(
        base_url="http://example.invalid/v1",
        api_key="sk-secret",
        model="m",
        check_reachable=False,
        transport=InProcessTransport(server),
    )


@pytest.mark.looptime
async def test_any_transport_carries_the_codec_with_the_requests_path_headers_and_body() -> None:
    server = Server("whole")
    async with Orchestrator(backend_for(server)) as orch:
        run = await orch.run([Query("q", "hello", max_tokens=9)])
    row = run["q"]
    assert (row.text, row.usage.prompt_tokens, row.usage.completion_tokens) == ("whole answer", 5, 2)
    assert row.server_queue_s == 0.25  # the codec read the server's headers
    [(path, authorization, body)] = server.seen
    assert path == "/v1/chat/completions" and authorization == "Bearer sk-secret"
    assert body["messages"] == [{"role": "user", "content": "hello"}] and body["max_tokens"] == 9


@pytest.mark.looptime
async def test_a_streamed_answer_is_read_as_it_is_written() -> None:
    async with Orchestrator(backend_for(Server("stream"))) as orch:
        run = await orch.run([Query("q", "hello", stream=True)])
    row = run["q"]
    assert row.text == "one two"
    assert row.ttft_s == 0.0 and row.latency_s == 1.0  # the first piece was read before the server's pause


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("behaviour", "kind", "words"),
    [
        ("drop", "connection_failed", "dropped the connection"),
        ("stream-then-drop", "invalid_response", "cut off"),
        ("refuse", "bad_request", "no such model"),
    ],
)
async def test_a_server_failure_is_classified_as_the_wire_would_show_it(behaviour: str, kind: str, words: str) -> None:
    async with Orchestrator(backend_for(Server(behaviour)), retry=Retry.never()) as orch:
        run = await orch.run([Query("q", "hello", stream=True)], raise_if_all_failed=False)
    error = run["q"].error
    assert error is not None and error.kind == kind and words in error.message
    assert "sk-secret" not in error.message


@pytest.mark.looptime
async def test_a_client_that_stops_reading_leaves_the_server_nothing_in_flight() -> None:
    backend = sim.backend(
        sim.SimConfig(
            seed=1,
            profiles={"sim-small": sim.ModelProfile(ttft_s=5.0, prompt_tps=1e12, completion_tps=1e12, jitter=0.0)},
        )
    )
    async with Orchestrator(backend, timeout=2.0, retry=Retry.never()) as orch:
        run = await orch.run(
            [Query(f"q{i}", f"hello {i}", stream=i % 2 == 0) for i in range(4)], raise_if_all_failed=False
        )
    assert [r.error.kind if r.error else "ok" for r in run.results] == ["timeout"] * 4
    stats = backend.engine.stats()
    assert stats["in_flight"] == 0 and stats["disconnects"] == 4


def test_the_default_transport_is_aiohttp_and_an_in_process_backend_cannot_travel() -> None:
    assert isinstance(HTTPBackend(base_url="http://127.0.0.1:9/v1", api_key="k", model="m").transport, AiohttpTransport)
    with pytest.raises(ConfigError, match=r"sim\.serve"):
        sim.backend().recipe()
