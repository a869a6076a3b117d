"""Secrets never leak; odd but valid input works; garbage from a server is a failed row, not a crash."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hybrid import (
    AllQueriesFailed,
    AuthenticationFailed,
    HTTPBackend,
    OpenAIBackend,
    Orchestrator,
    Query,
    Retry,
    sim,
)
from hybrid.query import Completion, Usage
from hybrid.sim import Faults, Script, SimConfig

from .conftest import orchestrated

CANARY = "sk-canary-7f3a9c1e55d04b2e8a6f"


@pytest.mark.parametrize("backend_cls", [OpenAIBackend, HTTPBackend])
async def test_the_api_key_never_appears_anywhere(
    backend_cls: type, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, the SDK's and aiohttp's included
    texts: list[str] = []
    config = SimConfig(seed=1, time_scale=0, api_key=CANARY, faults=Faults(server_error=0.3))
    async with sim.serve(config) as server:
        backend = backend_cls(base_url=server.url, api_key=CANARY, model="sim-small")
        async with Orchestrator(backend, retry=Retry(attempts=2, base=0.001)) as orch:
            queries = [Query(f"q{i}", f"question {i}", stream=i % 2 == 1) for i in range(6)]
            queries.append(Query("bad", "question", model="nope"))
            run = await orch.run(queries)
            texts += [
                repr(backend),
                str(backend),
                repr(orch),
                repr(run),
                run.summary(),
                run.to_json(),
                run._repr_html_(),
            ]
            texts += [run.to_frame().to_string(), run.to_frame().to_csv(), str(run.to_dict())]
            texts += [repr(r) for r in run.results] + [f"{r.error!r} {r.error}" for r in run.results if r.error]
        wrong = backend_cls(base_url=server.url, api_key=CANARY + "-wrong", model="sim-small")
        async with Orchestrator(wrong, retry=Retry.never()) as orch:
            with pytest.raises(AllQueriesFailed) as info:
                await orch.run([Query("a", "b")])
        texts += [str(info.value), repr(info.value), repr(info.value.run.results[0].error)]
        texts.append(repr(server))
    assert isinstance(info.value.run.results[0].error, AuthenticationFailed)
    assert any(not r.ok for r in run.results) and any(r.ok for r in run.results)
    captured = capsys.readouterr()
    texts += [caplog.text, captured.out, captured.err]
    assert caplog.records, "DEBUG logging was captured"
    leaks = [t for t in texts if CANARY in t]
    assert leaks == []


@pytest.mark.heavy
@pytest.mark.parametrize(
    ("backend_cls", "mode"), [(OpenAIBackend, "gather"), (HTTPBackend, "gather"), (OpenAIBackend, "batch")]
)
async def test_a_key_the_server_echoes_in_its_answers_is_never_stored(
    backend_cls: type, mode: str, tmp_path: Path
) -> None:
    """A server that puts the caller's key in its answer text: the rows, the frame and the store
    file hold ``<redacted>`` where the key was."""
    echo = Script(pattern="echo", reply=f"your key is {CANARY}.")
    config = SimConfig(seed=1, time_scale=0, api_key=CANARY, scripts=(echo,))
    path = tmp_path / "runs.sqlite"
    async with sim.serve(config) as server:
        backend = backend_cls(base_url=server.url, api_key=CANARY, model="sim-small")
        async with Orchestrator(backend, store=path, cache=True) as orch:
            queries = [Query(f"q{i}", "echo my key", stream=i == 1 and mode != "batch") for i in range(2)]
            run = await orch.run(queries, mode=mode)
    assert [r.text for r in run.results] == ["your key is <redacted>."] * 2
    assert CANARY not in run.to_frame().to_csv()
    stored = b"".join([f.read_bytes() for f in tmp_path.iterdir()])  # noqa: ASYNC240 (the run is over)
    assert CANARY.encode() not in stored and b"<redacted>" in stored


def test_a_short_test_key_is_not_cut_out_of_answers() -> None:
    """``api_key="sim"`` is no secret: scrubbing it would turn "simple" into "<redacted>ple"."""
    answer = Completion(text="a simple answer", usage=Usage(prompt_tokens=1, completion_tokens=3), model="m")
    short = HTTPBackend(base_url="http://127.0.0.1:9/v1", api_key="sim", model="m")
    assert short.scrubbed(answer) is answer
    real = HTTPBackend(base_url="http://127.0.0.1:9/v1", api_key=CANARY, model="m")
    leaked = Completion(text=f"key {CANARY}", usage=answer.usage, model="m")
    assert real.scrubbed(leaked).text == "key <redacted>" and real.scrubbed(answer) is answer


def test_the_key_never_appears_in_notebook_output() -> None:
    from .helpers import Kernel

    kernel = Kernel()
    try:
        out = kernel.run(
            "import logging, os; logging.basicConfig(level=logging.DEBUG)\n"
            "os.environ['HYBRID_PROGRESS'] = '0'\n"
            "from hybrid import OpenAIBackend, Orchestrator, Query, sim\n"
            f"server_cm = sim.serve(sim.SimConfig(time_scale=0, api_key={CANARY!r}))\n"
            "server = await server_cm.__aenter__()\n"
            f"backend = OpenAIBackend(base_url=server.url, api_key={CANARY!r}, model='sim-small')\n"
            "async with Orchestrator(backend) as orch:\n"
            "    run = await orch.run([Query('a', 'hello')])\n"
            "display(backend, orch, run, run.to_frame(), server)\n"
            "await server_cm.__aexit__(None, None, None)\n"
        )
    finally:
        kernel.close()
    assert out["error"] is None and "OpenAIBackend" in out["text"]
    assert CANARY not in out["text"]


async def test_huge_unicode_and_empty_answers_work() -> None:
    huge = "word " * 200_000  # ~1 MB prompt
    unicode = "Überprüfe die Bewehrung: 鉄筋, арматура, 🏗️ — and reply in kind."
    config = SimConfig(
        seed=3, time_scale=0, scripts=(Script(pattern="say nothing", reply=""), Script(pattern="鉄筋", reply="回答: ✓"))
    )
    async with orchestrated("openai", config=config) as (orch, _):
        run = await orch.run(
            [
                Query("huge", huge),
                Query("unicode", unicode),
                Query("empty", "say nothing"),
                Query("empty-stream", "say nothing", stream=True),
            ]
        )
    assert run.ok
    assert run["huge"].usage.prompt_tokens > 200_000
    assert run["unicode"].text == "回答: ✓"
    assert run["empty"].text == "" and run["empty-stream"].text == ""


async def test_a_server_answering_garbage_gives_failed_rows_not_a_crash(backend_kind: str) -> None:
    from aiohttp import web

    async def garbage(request: web.Request) -> web.Response:
        kind = (await request.json())["messages"][-1]["content"]
        bodies = {
            "html": web.Response(text="<html>502 Bad Gateway</html>", content_type="text/html"),
            "list": web.json_response([1, 2, 3]),
            "nochoices": web.json_response({"choices": []}),
            "nulltext": web.json_response({"choices": [{"message": {"content": 5}}]}),
        }
        return bodies[kind]

    app = web.Application()
    app.router.add_post("/v1/chat/completions", garbage)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        backend = (OpenAIBackend if backend_kind == "openai" else HTTPBackend)(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="k", model="m"
        )
        async with Orchestrator(backend, retry=Retry.never()) as orch:
            with pytest.raises(AllQueriesFailed) as info:
                await orch.run([Query(k, k) for k in ("html", "list", "nochoices", "nulltext")])
    finally:
        await runner.cleanup()
    assert [r.error.kind for r in info.value.run.results] == ["invalid_response"] * 4  # type: ignore[union-attr]
