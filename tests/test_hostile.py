"""Hostile servers, misuse and secrets: a misbehaving aiohttp server of our own on loopback (faults
the simulator cannot produce), and the usual notebook mistakes, each rejected or contained."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from hybrid import (
    ConfigError,
    HTTPBackend,
    OpenAIBackend,
    Orchestrator,
    Price,
    Query,
    Retry,
    sim,
)
from hybrid.sim import Faults, SimConfig
from hybrid.testing import chat_server

CANARY = "sk-canary-5f0e7c1d9a2b4c6e8f0a1b2c3d4e5f60"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


#: A plain aiohttp server answering every chat request with a handler; yields its base URL.
hostile = chat_server


def backend_for(kind: str, url: str, key: str = CANARY) -> OpenAIBackend | HTTPBackend:
    return (OpenAIBackend if kind == "openai" else HTTPBackend)(base_url=url, api_key=key, model="m")


def sse(*events: object) -> bytes:
    return b"".join(b"data: " + (e if isinstance(e, bytes) else orjson.dumps(e)) + b"\n\n" for e in events)


def chunk(delta: object, finish: str | None = None, usage: object = None) -> dict[str, Any]:
    body: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    body["choices"] = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    if usage is not None:
        body["usage"] = usage
    return body


async def streamed(request: web.Request, payload: bytes) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(payload)
    await response.write_eof()
    return response


GARBAGE_STREAMS = {
    "usage-strings": sse(
        chunk({"content": "hi"}),
        chunk({}, "stop"),
        chunk(None, usage={"prompt_tokens": "5", "completion_tokens": None}),
    ),
    "list-chunk": sse([1, 2, 3]),
    "delta-number": sse(chunk({"content": 42}), chunk({}, "stop")),
    "delta-list": sse(chunk({"content": "a"}), chunk(["x"], "stop")),
    "negative-usage": sse(chunk({"content": "hi"}), chunk({}, "stop"), chunk(None, usage={"prompt_tokens": -1})),
}


async def test_server_garbage_in_a_stream_is_invalid_response_on_both_backends(backend_kind: str) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        return await streamed(request, GARBAGE_STREAMS[body["messages"][-1]["content"]] + b"data: [DONE]\n\n")

    async with hostile(handler) as url, Orchestrator(backend_for(backend_kind, url), retry=Retry.never()) as orch:
        run = await orch.run([Query(name, name, stream=True) for name in GARBAGE_STREAMS], raise_if_all_failed=False)
    assert [r.error.kind if r.error else "ok" for r in run.results] == ["invalid_response"] * len(GARBAGE_STREAMS)
    assert orch.last_run is run


async def test_one_malformed_usage_value_costs_one_row_not_the_run(backend_kind: str) -> None:
    good = sse(
        chunk({"content": "fine"}), chunk({}, "stop"), chunk(None, usage={"prompt_tokens": 5, "completion_tokens": 1})
    )

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        bad = body["messages"][-1]["content"] == "bad"
        return await streamed(request, (GARBAGE_STREAMS["usage-strings"] if bad else good) + b"data: [DONE]\n\n")

    queries = [Query(f"q{i}", "bad" if i == 7 else f"fine {i}", stream=True) for i in range(50)]
    async with hostile(handler) as url, Orchestrator(backend_for(backend_kind, url), retry=Retry.never()) as orch:
        first = await orch.run(queries[:2])
        run = await orch.run(queries)
    assert run.metrics.succeeded == 49 and run["q7"].error is not None
    assert run["q7"].error.kind == "invalid_response" and orch.last_run is run and orch.last_run is not first
    assert run.metrics.total_tokens == 49 * 6


async def test_a_key_echoed_by_the_server_is_redacted_everywhere(backend_kind: str) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        key = request.headers["Authorization"].removeprefix("Bearer ")
        message = f"Incorrect API key provided: {key}. You can find your key at ..."
        return web.json_response({"error": {"message": message, "type": "invalid_request_error"}}, status=401)

    async with hostile(handler) as url, Orchestrator(backend_for(backend_kind, url), retry=Retry.never()) as orch:
        run = await orch.run([Query("q", "hi")], raise_if_all_failed=False)
    error = run["q"].error
    assert error is not None and error.kind == "authentication" and "<redacted>" in str(error)
    surfaces = [str(error), repr(error), run.to_json(), run.to_frame().to_csv(), repr(run), run._repr_html_()]
    surfaces += [repr(error.__cause__), repr(error.__context__), repr(orch), repr(orch.backend)]
    assert not [s for s in surfaces if CANARY in s]


def test_the_key_stays_out_of_reprs_of_configs_and_backends() -> None:
    assert CANARY not in repr(SimConfig(api_key=CANARY))
    assert CANARY not in repr(HTTPBackend(base_url="http://127.0.0.1:9/v1", api_key=CANARY, model="m"))
    with pytest.raises(ConfigError, match="credentials") as info:
        OpenAIBackend(base_url=f"http://user:{CANARY}@127.0.0.1:9/v1", api_key="k", model="m")
    assert CANARY not in str(info.value)


async def test_failed_rows_do_not_pin_transport_frames(backend_kind: str) -> None:
    """A refused connection leaves a row whose error has no chain or traceback to hold on to."""
    backend = backend_for(backend_kind, "http://127.0.0.1:9/v1")
    backend.check_reachable = False
    async with Orchestrator(backend, retry=Retry.never()) as orch:
        run = await orch.run([Query("q", "hi")], raise_if_all_failed=False)
    error = run["q"].error
    assert error is not None and error.kind == "connection_failed"
    assert error.__traceback__ is None and error.__cause__ is None and error.__context__ is None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: OpenAIBackend(base_url="", api_key="k", model="m"), "base_url is an empty string"),
        (lambda: HTTPBackend(base_url="http://127.0.0.1:1/v1", api_key="", model="m"), "api_key is an empty string"),
        (lambda: HTTPBackend(base_url=123, api_key="k", model="m"), "base_url must be a string"),  # type: ignore[arg-type]
        (lambda: HTTPBackend(base_url="http://[::1/v1", api_key="k", model="m"), "not a valid URL"),
        (lambda: HTTPBackend(base_url="http://127.0.0.1:99999/v1", api_key="k", model="m"), "not a valid URL"),
        (lambda: HTTPBackend(base_url="http://127.0.0.1:abc/v1", api_key="k", model="m"), "not a valid URL"),
        (lambda: OpenAIBackend(base_url="http://x/v1", api_key="k", model="m", transport="h3"), "transport"),  # type: ignore[arg-type]
        (lambda: Query("a", "x", model=5), "model must be a string"),  # type: ignore[arg-type]
        (lambda: Query("a", "bad \ud800 text"), "lone surrogate"),
        (lambda: Query("a", ""), "prompt is empty"),
        (lambda: Query("", "x"), "non-empty string"),
        (lambda: Query("a", "x", max_tokens=0), "max_tokens must be >= 1"),
        (lambda: Query("a", "x", temperature=3), "temperature must be a finite number <= 2"),
        (lambda: Retry(attempts=0), r"attempts=...\) \(1 = no retries\) must be >= 1"),
        (lambda: Retry(jitter="0.5"), r"jitter=...\) must be a finite number, got '0.5'"),  # type: ignore[arg-type]
        (lambda: Price(prompt_per_mtok=-1, completion_per_mtok=1), "must be a finite number of dollars"),
        (lambda: SimConfig.from_dict({"faults": {"bogus": 1}}), r"Unknown faults \['bogus'\]"),
        (lambda: SimConfig.from_dict({"profiles": {"m": {"ttft_s": 1}}}), "Bad profile 'm' settings"),
        (lambda: SimConfig(time_scale="fast"), "time_scale"),  # type: ignore[arg-type]
        (lambda: Faults(drop=2.0), r"drop=...\) must be a finite number <= 1.0"),
    ],
)
def test_bad_input_is_a_config_error_that_names_the_value(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"timeout": True}, "timeout"),
        ({"timeout": 0}, "timeout"),
        ({"retry": 3}, "retry must be a Retry"),
        ({"seed": object()}, "seed must be an integer"),
        ({"max_concurrency": 0}, "max_concurrency must be >= 1"),
        ({"rpm": 0}, "rpm"),
        ({"prices": {"m": 1.5}}, r"prices\['m'\] must be a Price"),
        ({"progress": "yes"}, "progress must be True, False or 'auto'"),
    ],
)
def test_bad_orchestrator_settings_fail_at_construction(settings: dict[str, Any], message: str) -> None:
    backend = HTTPBackend(base_url="http://127.0.0.1:9/v1", api_key="k", model="m")
    with pytest.raises(ConfigError, match=message):
        Orchestrator(backend, **settings)


async def test_an_empty_base_url_never_falls_back_to_openai(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    with pytest.raises(ConfigError, match="empty string"):
        OpenAIBackend(base_url="", model="m")


async def test_threads_mode_gives_the_sync_client_the_query_timeout() -> None:
    """A server that never answers: the blocking call itself gives up, so no worker thread (and no
    interpreter exit) waits forever after the run returned its timeout rows."""
    async with sim.serve(SimConfig(time_scale=0, faults=Faults(hang=1.0))) as server:
        backend = OpenAIBackend(base_url=server.url, api_key=server.api_key, model="sim-small")
        async with Orchestrator(backend, timeout=0.3, retry=Retry.never()) as orch:
            run = await orch.run([Query("q", "hi")], mode="threads", raise_if_all_failed=False)
            client = backend._sync()
    assert run["q"].error is not None and run["q"].error.kind == "timeout"
    assert client.timeout.read == 0.3  # type: ignore[union-attr]


def test_queries_with_metadata_are_hashable_and_frozen() -> None:
    labels = {"variant": "a", "tags": ["x", "y"]}
    query = Query("q", "hi", metadata=labels)
    labels["variant"] = "changed"
    assert query.metadata is not None and query.metadata["variant"] == "a"
    twin = Query("q", "hi", metadata={"variant": "a", "tags": ["x", "y"]})
    assert hash(query) == hash(Query("q", "hi", metadata={"other": 1})) and {query: 1}[twin] == 1
    with pytest.raises(TypeError):
        query.metadata["variant"] = "b"  # type: ignore[index]


async def test_open_skips_the_reachability_probe_behind_a_proxy_or_when_told(monkeypatch: pytest.MonkeyPatch) -> None:
    unreachable = "http://10.255.255.1:9/v1"  # would time out or be refused without a proxy
    for setting in ({"check_reachable": False}, {}):
        if not setting:
            monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:3128")
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
        backend = HTTPBackend(base_url=unreachable, api_key="k", model="m", **setting)
        await backend.open(max_connections=1)
        await backend.aclose()


def test_serve_in_thread_stops_its_thread_when_start_up_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import importlib
    import threading

    from hybrid import HybridError

    serve_module = importlib.import_module("hybrid.sim.serve")

    @contextlib.asynccontextmanager
    async def stuck(config: object) -> AsyncIterator[None]:
        await asyncio.sleep(3600)  # a start-up that never finishes
        yield

    monkeypatch.setattr(serve_module, "serve", stuck)
    with pytest.raises(HybridError, match="did not start"), sim.serve_in_thread(SimConfig(), start_timeout=0.05):
        pass
    assert not [t for t in threading.enumerate() if t.name == "hybrid-sim"]


def test_the_simulator_remembers_a_bounded_number_of_request_attempts() -> None:
    from hybrid.sim.model import FaultPlan

    plan = FaultPlan(Faults(fail_first=1), seed=0)
    plan.ATTEMPTS_KEPT = 100
    for key in range(1000):
        plan.draw(key, stream=False)
    assert len(plan._attempts) == 100
    assert plan.draw(999, stream=False) is None  # a recent request is still on its second attempt


def test_comparisons_of_runs_that_took_no_time_do_not_divide_by_zero() -> None:
    import math

    from hybrid.metrics import ratio

    assert ratio(3.0, 1.5) == 2.0 and math.isnan(ratio(1.0, 0.0)) and math.isnan(ratio(1.0, float("inf")))


# --- Bounded memory: a response may hold only so many bytes ------------------------------------

LIMIT = 256 * 1024  # small, so that an endless body trips it in a few milliseconds


async def endless(request: web.Request) -> web.StreamResponse:
    """A body that never ends: an event stream, a JSON answer or an error body, by the prompt."""
    body = await request.json()
    shape = body["messages"][-1]["content"]
    status, content_type, head, piece = {
        "stream": (200, "text/event-stream", b"", sse(chunk({"content": "x" * 1000}))),
        "json": (200, "application/json", b'{"choices": [{"message": {"content": "', b"x" * 65536),
        "error": (500, "application/json", b'{"error": {"message": "', b"x" * 65536),
        "line": (200, "text/event-stream", b"data: ", b"y" * 65536),
    }[shape]
    response = web.StreamResponse(status=status, headers={"Content-Type": content_type})
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):
        await response.write(head)
        while True:  # until the client goes away
            await response.write(piece)
    return response


async def test_an_endless_response_is_cut_at_the_size_limit(backend_kind: str) -> None:
    backend = backend_for(backend_kind, "http://127.0.0.1:9/v1")
    async with hostile(endless) as url:
        backend = type(backend)(base_url=url, api_key=CANARY, model="m", max_response_bytes=LIMIT)
        async with Orchestrator(backend, timeout=60, retry=Retry.never()) as orch:
            shapes = ["stream", "json", "error"]
            run = await orch.run([Query(s, s, stream=s == "stream") for s in shapes], raise_if_all_failed=False)
    kinds = {r.query.name: (r.error.kind if r.error else "ok") for r in run.results}
    assert kinds == dict.fromkeys(shapes, "invalid_response")
    assert all("max_response_bytes" in str(r.error) for r in run.results)


async def test_an_endless_event_line_is_invalid_response_on_both_backends(backend_kind: str) -> None:
    """One SSE line may hold at most 512 KiB, whatever the response limit."""
    async with hostile(endless) as url, Orchestrator(backend_for(backend_kind, url), retry=Retry.never()) as orch:
        run = await orch.run([Query("line", "line", stream=True)], raise_if_all_failed=False)
    error = run["line"].error
    assert error is not None and error.kind == "invalid_response" and "line" in str(error)


def test_the_response_limit_is_checked_when_the_backend_is_made() -> None:
    with pytest.raises(ConfigError, match="max_response_bytes"):
        HTTPBackend(base_url="http://127.0.0.1:9/v1", api_key="k", model="m", max_response_bytes=0)


async def test_a_lying_content_encoding_is_invalid_response_on_both_backends(backend_kind: str) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        payload = orjson.dumps({"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]})
        return web.Response(body=payload, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})

    async with hostile(handler) as url, Orchestrator(backend_for(backend_kind, url), retry=Retry.never()) as orch:
        run = await orch.run([Query("q", "hi")], raise_if_all_failed=False)
    error = run["q"].error
    assert error is not None and error.kind == "invalid_response" and "decode" in str(error)


async def test_a_redirect_loop_leaves_no_key_in_errors_or_verbose_tracebacks(backend_kind: str) -> None:
    """aiohttp's redirect error carries the request headers; a verbose traceback (``%xmode Verbose``,
    rich's ``show_locals``, Sentry) prints frame locals.  Neither may show the key."""
    import traceback

    from hybrid import AllQueriesFailed

    async def handler(request: web.Request) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect(str(request.url))

    async with hostile(handler) as url, Orchestrator(backend_for(backend_kind, url), retry=Retry.never()) as orch:
        with pytest.raises(AllQueriesFailed) as info:
            await orch.run([Query("q", "hi")])
    run = orch.last_run
    assert run is not None and run["q"].error is not None and run["q"].error.kind == "invalid_response"
    verbose = "".join(traceback.TracebackException.from_exception(info.value, capture_locals=True).format())
    surfaces = [verbose, repr(run["q"].error), repr(run["q"].error.__cause__), run.to_json()]
    assert "hi" in verbose and not [s for s in surfaces if CANARY in s]


async def test_a_server_asking_to_wait_longer_than_the_timeout_fails_at_once(backend_kind: str) -> None:
    """``Retry-After: 99999`` or ``inf`` with a 30 s timeout: one attempt, ``rate_limited`` with the
    server's value, not a 30 s sleep ending in ``timeout``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        wait = (await request.json())["messages"][-1]["content"]
        return web.json_response({"error": {"message": "slow down"}}, status=429, headers={"Retry-After": wait})

    async with hostile(handler) as url, Orchestrator(backend_for(backend_kind, url), timeout=30) as orch:
        run = await orch.run([Query("a", "99999"), Query("b", "inf")], raise_if_all_failed=False)
    waits = [r.error.retry_after_s if r.error and r.error.kind == "rate_limited" else None for r in run.results]
    assert waits == [99999.0, float("inf")] and [r.attempts for r in run.results] == [1, 1]


async def test_the_key_never_reaches_the_run_store(backend_kind: str, tmp_path: Path) -> None:
    """A server echoing the key in errors and answers: the database file (and its WAL) never holds it."""
    from hybrid import Store

    async def handler(request: web.Request) -> web.StreamResponse:
        key = request.headers["Authorization"]
        if (await request.json())["messages"][-1]["content"] == "fail":
            return web.json_response({"error": {"message": f"bad key {key}"}}, status=401)
        answer = {"choices": [{"message": {"content": "fine"}, "finish_reason": "stop"}]}
        return web.json_response(answer, headers={"X-Echo": key})

    path = tmp_path / "runs.sqlite"
    with Store(path) as store:
        async with hostile(handler) as url:
            async with Orchestrator(backend_for(backend_kind, url), store=store, cache=True) as orch:
                await orch.run([Query("ok", "fine"), Query("bad", "fail")], name="canary", raise_if_all_failed=False)
        store.flush()
        assert store.load("canary")["bad"].error is not None
        assert database_files_holding(path, CANARY) == []


def database_files_holding(path: Path, text: str) -> list[str]:
    """The store's files (the database, its WAL and shared memory) whose bytes contain ``text``."""
    files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
    assert path in files and sum(p.stat().st_size for p in files) > 0
    return [p.name for p in files if text.encode() in p.read_bytes()]


async def test_a_body_declared_larger_than_the_limit_is_refused(backend_kind: str) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b'{"choices": "' + b"x" * (2 * LIMIT) + b'"}', content_type="application/json")

    async with hostile(handler) as url:
        backend = type(backend_for(backend_kind, url))(
            base_url=url, api_key=CANARY, model="m", max_response_bytes=LIMIT
        )
        async with Orchestrator(backend, retry=Retry.never()) as orch:
            run = await orch.run([Query("big", "x")], raise_if_all_failed=False)
    error = run["big"].error
    assert error is not None and error.kind == "invalid_response" and "max_response_bytes" in str(error)
