"""The simulator's lean chat-completions route (hybrid/sim/lean_http.py) over loopback: what a client
relies on from any HTTP server, at the byte level, and the hand-over of other routes to aiohttp."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import openai
import pytest

from hybrid import sim
from hybrid.sim import SimConfig, lean_http
from hybrid.sim.openai_protocol import Simulator

from .conftest import settled

BODY = json.dumps({"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]}).encode()
STREAM_BODY = json.dumps(
    {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "stream": True}
).encode()


def chat_request(body: bytes = BODY, *, version: str = "1.1", extra: str = "") -> bytes:
    head = (
        f"POST /v1/chat/completions HTTP/{version}\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response: status, lower-cased headers, body (Content-Length, chunked or to EOF)."""
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readline()).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readline()
        await reader.readline()
    else:
        body = await reader.read()
    return status, headers, body


def streamed_text(body: bytes) -> str:
    events = [json.loads(line[6:]) for line in body.split(b"\n\n") if line.startswith(b"data: {")]
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])


async def test_keep_alive_connection_moves_from_chat_to_other_routes_and_back() -> None:
    """One pooled connection: chat (lean), models (handed to aiohttp), chat again (aiohttp's route)."""
    async with sim.serve(SimConfig(time_scale=0)) as server:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            answers = []
            for method, path, data in [
                ("POST", "/chat/completions", BODY),
                ("GET", "/models", None),
                ("POST", "/chat/completions", BODY),
            ]:
                async with session.request(method, server.url + path, data=data) as response:
                    answers.append((response.status, await response.json()))
            assert server.stats()["open_connections"] == 1  # the same connection throughout
        stats = await settled(server)
    assert [status for status, _ in answers] == [200, 200, 200]
    assert answers[0][1]["choices"][0]["message"]["content"] == answers[2][1]["choices"][0]["message"]["content"]
    assert [m["id"] for m in answers[1][1]["data"]] == list(SimConfig().profiles)
    assert stats["by_status"] == {"200": 3} and stats["requests"] == 3


async def test_pipelined_chat_requests_are_answered_in_order() -> None:
    bodies = [
        json.dumps({"model": "sim-small", "messages": [{"role": "user", "content": f"question {i}"}]}).encode()
        for i in range(3)
    ]
    async with sim.serve(SimConfig(time_scale=0)) as server:
        async with aiohttp.ClientSession() as session:
            expected = []
            for body in bodies:
                async with session.post(server.url + "/chat/completions", data=body) as response:
                    expected.append((await response.json())["choices"][0]["message"]["content"])
        reader, writer = await asyncio.open_connection("127.0.0.1", int(server.root.rsplit(":", 1)[1]))
        writer.write(b"".join(chat_request(body) for body in bodies))  # all three before any answer
        answers = [await read_response(reader) for _ in bodies]
        writer.close()
        await writer.wait_closed()
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert [json.loads(body)["choices"][0]["message"]["content"] for _, _, body in answers] == expected


async def test_a_pipelined_request_for_another_route_is_refused_and_the_connection_closed() -> None:
    async with sim.serve(SimConfig(time_scale=0)) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(server.root.rsplit(":", 1)[1]))
        writer.write(chat_request() + b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        first, second = await read_response(reader), await read_response(reader)
        assert await reader.read() == b""  # closed
        writer.close()
        await writer.wait_closed()
    assert first[0] == 200
    assert second[0] == 400 and second[1]["connection"] == "close"
    assert "connection of their own" in json.loads(second[2])["error"]["message"]


async def test_chunked_request_body_and_expect_100_continue() -> None:
    async with sim.serve(SimConfig(time_scale=0)) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(server.root.rsplit(":", 1)[1]))
        head = b"POST /v1/chat/completions?trace=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        writer.write(head + b"Expect: 100-continue\r\n\r\n")
        assert await reader.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert await reader.readline() == b"\r\n"
        half = len(BODY) // 2
        for part in (BODY[:half], BODY[half:]):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
        writer.write(b"0\r\n\r\n")
        status, headers, body = await read_response(reader)
        writer.close()
        await writer.wait_closed()
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body)["object"] == "chat.completion"


async def test_streams_are_chunked_on_http_1_1_and_closed_at_the_end_on_http_1_0() -> None:
    async with sim.serve(SimConfig(time_scale=0)) as server:
        port = int(server.root.rsplit(":", 1)[1])
        streams = {}
        for version in ("1.1", "1.0"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(chat_request(STREAM_BODY, version=version))
            streams[version] = await read_response(reader)
            writer.close()
            await writer.wait_closed()
    chunked, closed = streams["1.1"], streams["1.0"]
    assert chunked[1]["transfer-encoding"] == "chunked" and "connection" not in chunked[1]
    assert "transfer-encoding" not in closed[1] and closed[1]["connection"] == "close"
    for _, headers, body in (chunked, closed):
        assert headers["content-type"] == "text/event-stream"
        assert body.endswith(b"data: [DONE]\n\n")
    assert streamed_text(chunked[2]) == streamed_text(closed[2]) != ""  # the same answer either way


async def test_bytes_that_are_not_http_get_400_and_a_closed_connection() -> None:
    async with sim.serve(SimConfig(time_scale=0)) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(server.root.rsplit(":", 1)[1]))
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: nope\r\n\r\n")
        status, headers, _ = await read_response(reader)
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        assert server.stats()["in_flight"] == 0
    assert status == 400 and headers["connection"] == "close"


async def test_a_body_over_the_limit_is_refused_with_413(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lean_http, "MAX_BODY_BYTES", 64)
    async with sim.serve(SimConfig(time_scale=0)) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(server.root.rsplit(":", 1)[1]))
        writer.write(chat_request(BODY + b" " * 100))
        status, headers, body = await read_response(reader)
        writer.close()
        await writer.wait_closed()
        stats = server.stats()
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(body)["error"]["message"] == "The request body is larger than 64 bytes."
    assert stats["by_status"] == {"413": 1}


async def test_a_slow_reader_pauses_the_stream_until_it_reads() -> None:
    """Back-pressure: while the transport's buffer is full, the answer waits instead of piling up."""
    simulator = Simulator(SimConfig(time_scale=0))
    written: list[bytes] = []

    class Transport:
        def write(self, data: bytes) -> None:
            written.append(data)

        def is_closing(self) -> bool:
            return False

        def close(self) -> None:
            pass

    connection = lean_http.LeanConnection(simulator, fallback=lambda: None, connections=set())  # type: ignore[arg-type,return-value]
    connection.connection_made(Transport())  # type: ignore[arg-type]
    connection.pause_writing()
    connection.data_received(chat_request(STREAM_BODY))
    for _ in range(20):
        await asyncio.sleep(0)
    held = len(written)
    assert held == 1 and written[0].startswith(b"HTTP/1.1 200 OK")  # the head only: the first event waits
    connection.resume_writing()
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(written) > held and written[-1] == b"0\r\n\r\n"
    assert simulator.stats()["by_status"] == {"200": 1}


async def test_the_sdk_sees_the_same_answers_through_the_lean_route_and_aiohttps() -> None:
    """The lean route and aiohttp's chat route (on a connection handed over) answer alike."""
    async with sim.serve(SimConfig(time_scale=0, seed=3)) as server:
        async with openai.AsyncOpenAI(base_url=server.url, api_key=server.api_key, max_retries=0) as c:
            lean = await c.chat.completions.create(model="sim-small", messages=[{"role": "user", "content": "a"}])
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.get(server.url + "/models") as response:  # the connection goes to aiohttp
                assert response.status == 200
            body = json.dumps({"model": "sim-small", "messages": [{"role": "user", "content": "a"}]})
            async with session.post(server.url + "/chat/completions", data=body) as response:
                handed_over = await response.json()
    assert handed_over["choices"][0]["message"]["content"] == lean.choices[0].message.content
    assert lean.usage is not None
    assert (handed_over["usage"]["prompt_tokens"], handed_over["usage"]["completion_tokens"]) == (
        lean.usage.prompt_tokens,
        lean.usage.completion_tokens,
    )
