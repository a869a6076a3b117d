"""The simulator, driven by real clients over loopback: the openai SDK (sync, async, streaming),
raw aiohttp for what an SDK would refuse to send, and langchain-openai."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import aiohttp
import openai
import pytest

from hybrid import ConfigError, Orchestrator, Query, Retry, RunResult, sim
from hybrid.sim import Faults, ModelProfile, Script, SimConfig

from .conftest import settled

MESSAGES = [{"role": "user", "content": "Name three risks of a foundation pour."}]


def client(server: sim.SimServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url, api_key=server.api_key, max_retries=0)


async def test_async_sdk_gets_completion_with_usage() -> None:
    async with sim.serve(SimConfig(seed=1, time_scale=0)) as server:
        async with client(server) as c:
            reply = await c.chat.completions.create(model="sim-small", messages=MESSAGES)
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


async def test_streaming_sends_text_then_a_usage_chunk_with_empty_choices() -> None:
    async with sim.serve(SimConfig(seed=1, time_scale=0)) as server:
        async with client(server) as c:
            plain = await c.chat.completions.create(model="sim-small", messages=MESSAGES)
            stream = await c.chat.completions.create(
                model="sim-small", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
            chunks = [chunk async for chunk in stream]
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens  # type: ignore[union-attr]
    assert all(ch.usage is None for ch in chunks[:-1])


async def test_stream_without_include_usage_has_no_usage_chunk() -> None:
    async with sim.serve(SimConfig(time_scale=0)) as server:
        async with client(server) as c:
            stream = await c.chat.completions.create(model="sim-small", messages=MESSAGES, stream=True)
            chunks = [chunk async for chunk in stream]
    assert all(ch.choices for ch in chunks) and all(ch.usage is None for ch in chunks)


def test_sync_sdk_against_a_server_in_a_thread() -> None:
    with sim.serve_in_thread(SimConfig(seed=3, time_scale=0)) as server:
        with openai.OpenAI(base_url=server.url, api_key=server.api_key, max_retries=0) as c:
            reply = c.chat.completions.create(model="sim-large", messages=MESSAGES)
            models = [m.id for m in c.models.list()]
        assert server.stats()["by_status"] == {"200": 2}
    assert reply.choices[0].message.content
    assert models == ["sim-small", "sim-large", "gemma3-270m-cpu"]


async def test_same_seed_same_answer_and_tokens_other_seed_differs() -> None:
    answers = []
    for seed in (5, 5, 6):
        async with sim.serve(SimConfig(seed=seed, time_scale=0)) as server:
            async with client(server) as c:
                r = await c.chat.completions.create(model="sim-small", messages=MESSAGES, temperature=0)
                answers.append((r.choices[0].message.content, r.usage.completion_tokens))  # type: ignore[union-attr]
    assert answers[0] == answers[1]
    assert answers[0] != answers[2]


async def test_max_tokens_truncates_with_finish_reason_length() -> None:
    async with sim.serve(SimConfig(time_scale=0)) as server:
        async with client(server) as c:
            r = await c.chat.completions.create(model="sim-small", messages=MESSAGES, max_tokens=5)
    assert r.usage.completion_tokens == 5  # type: ignore[union-attr]
    assert r.choices[0].finish_reason == "length"


async def test_scripted_reply_and_json_mode() -> None:
    config = SimConfig(time_scale=0, scripts=(Script(pattern=r"audit", reply={"verdict": "ok", "issues": 2}),))
    async with sim.serve(config) as server:
        async with client(server) as c:
            scripted = await c.chat.completions.create(
                model="sim-small", messages=[{"role": "user", "content": "Please audit this."}]
            )
            as_json = await c.chat.completions.create(
                model="sim-small", messages=MESSAGES, response_format={"type": "json_object"}
            )
    import json

    assert json.loads(scripted.choices[0].message.content or "") == {"verdict": "ok", "issues": 2}
    assert isinstance(json.loads(as_json.choices[0].message.content or "")["answer"], str)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
        (b'{"model": "sim-small"}', 400, "messages"),
        (b'{"model": "sim-small", "messages": "hi"}', 400, "messages"),
        (b'{"model": "sim-small", "messages": [{"role": "robot", "content": "hi"}]}', 400, "messages[0].role"),
        (
            b'{"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "9"}',
            400,
            "max_tokens",
        ),
        (
            b'{"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "temperature": 3}',
            400,
            "temperature",
        ),
        (b'{"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "n": 2}', 400, "n"),
        (b'{"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}', 404, "model"),
    ],
)
async def test_bad_requests_get_openai_shaped_errors(body: bytes, status: int, param: str | None) -> None:
    async with sim.serve(SimConfig(time_scale=0)) as server:
        async with aiohttp.ClientSession() as session:
            async with session.post(server.url + "/chat/completions", data=body) as response:
                payload = await response.json()
                assert response.status == status
        assert server.stats()["by_status"] == {str(status): 1}
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert payload["error"]["param"] == param
    assert "Traceback" not in payload["error"]["message"]


async def test_api_key_is_enforced_when_configured() -> None:
    async with sim.serve(SimConfig(time_scale=0, api_key="sk-right")) as server:
        async with openai.AsyncOpenAI(base_url=server.url, api_key="sk-wrong", max_retries=0) as c:
            with pytest.raises(openai.AuthenticationError) as info:
                await c.chat.completions.create(model="sim-small", messages=MESSAGES)
        async with openai.AsyncOpenAI(base_url=server.url, api_key="sk-right", max_retries=0) as c:
            ok = await c.chat.completions.create(model="sim-small", messages=MESSAGES)
    assert info.value.status_code == 401 and "sk-wrong" not in str(info.value)
    assert ok.choices[0].message.content


async def test_rate_limits_answer_429_with_retry_after_and_ratelimit_headers() -> None:
    config = SimConfig(time_scale=0, rpm=2, limit_window_s=0.5)
    async with sim.serve(config) as server:
        async with aiohttp.ClientSession() as session:
            statuses, headers = [], []
            for _ in range(3):
                body = {"model": "sim-small", "messages": MESSAGES}
                async with session.post(server.url + "/chat/completions", json=body) as r:
                    statuses.append(r.status)
                    headers.append(r.headers)
    assert statuses == [200, 200, 429]
    assert headers[0]["x-ratelimit-limit-requests"] == "2"
    assert headers[0]["x-ratelimit-remaining-requests"] == "1"
    assert headers[2]["x-ratelimit-remaining-requests"] == "0"
    assert 0 < int(headers[2]["retry-after-ms"]) <= 500 and headers[2]["retry-after"] == "1"


@pytest.mark.looptime
async def test_a_rate_limit_window_admits_again_once_it_has_passed() -> None:
    """On the virtual clock: two requests per 0.5 s; the third is refused at once, and one sent
    0.55 s later is admitted."""
    backend = sim.backend(SimConfig(time_scale=0, rpm=2, limit_window_s=0.5))
    async with Orchestrator(backend, retry=Retry.never()) as orch:
        first = await orch.run([Query(f"q{i}", "hello") for i in range(3)], mode="sequential")
        await asyncio.sleep(0.55)
        after = await orch.run([Query("later", "hello")])
    assert [r.error.kind if r.error else "ok" for r in first.results] == ["ok", "ok", "rate_limited"]
    assert after.ok


async def test_token_limit_answers_429() -> None:
    async with sim.serve(SimConfig(time_scale=0, tpm=150, limit_window_s=60)) as server:
        async with client(server) as c:
            await c.chat.completions.create(model="sim-small", messages=MESSAGES, max_tokens=100)
            with pytest.raises(openai.RateLimitError) as info:
                await c.chat.completions.create(model="sim-small", messages=MESSAGES, max_tokens=100)
    assert info.value.response.headers["x-ratelimit-limit-tokens"] == "150"
    assert "tokens" in str(info.value)


FAULT_EXPECTATIONS = [
    ("rate_limit", openai.RateLimitError),
    ("rate_limit_bare", openai.RateLimitError),
    ("server_error", openai.InternalServerError),
    ("unavailable", openai.InternalServerError),
    ("drop", openai.APIConnectionError),
]


@pytest.mark.parametrize(("fault", "error"), FAULT_EXPECTATIONS)
async def test_each_status_fault_is_seen_by_the_sdk(fault: str, error: type[Exception]) -> None:
    config = SimConfig(time_scale=0, faults=Faults(**{fault: 1.0}, retry_after_s=2.5))
    async with sim.serve(config) as server:
        async with client(server) as c:
            with pytest.raises(error) as info:
                await c.chat.completions.create(model="sim-small", messages=MESSAGES)
        stats = server.stats()
    assert stats["faults"] == {fault: 1}
    assert stats["in_flight"] == 0
    if fault == "rate_limit":
        assert info.value.response.headers["retry-after-ms"] == "2500"  # type: ignore[attr-defined]
    if fault == "rate_limit_bare":
        assert "retry-after" not in info.value.response.headers  # type: ignore[attr-defined]


async def test_malformed_truncated_and_missing_usage_faults() -> None:
    async with sim.serve(SimConfig(time_scale=0, faults=Faults(malformed=1.0))) as server:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                server.url + "/chat/completions", json={"model": "sim-small", "messages": MESSAGES}
            ) as r:
                assert r.status == 200
                with pytest.raises(ValueError):
                    await r.json()
    async with sim.serve(SimConfig(time_scale=0, faults=Faults(truncate=1.0))) as server:
        async with client(server) as c:
            stream = await c.chat.completions.create(model="sim-small", messages=MESSAGES, stream=True)
            received = []
            with pytest.raises(openai.APIConnectionError):
                async for chunk in stream:
                    received.append(chunk)
            assert received and not any(ch.choices and ch.choices[0].finish_reason for ch in received)
    async with sim.serve(SimConfig(time_scale=0, faults=Faults(no_usage=1.0))) as server:
        async with client(server) as c:
            reply = await c.chat.completions.create(model="sim-small", messages=MESSAGES)
            stream = await c.chat.completions.create(
                model="sim-small", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
            chunks = [chunk async for chunk in stream]
    assert reply.usage is None and reply.choices[0].message.content
    assert all(ch.usage is None for ch in chunks) and chunks[-1].choices[0].finish_reason == "stop"


async def test_hang_until_client_gives_up_counts_a_disconnect_and_leaves_nothing_in_flight() -> None:
    async with sim.serve(SimConfig(time_scale=0, faults=Faults(hang=1.0))) as server:
        async with client(server) as c:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(None) as give_up:
                    request = asyncio.ensure_future(c.chat.completions.create(model="sim-small", messages=MESSAGES))
                    while server.stats()["in_flight"] == 0:  # armed once the server holds it
                        await asyncio.sleep(0.01)
                    give_up.reschedule(asyncio.get_running_loop().time() + 0.05)
                    await request
        stats = await settled(server, within_s=1.0)
    assert stats["in_flight"] == 0 and stats["disconnects"] == 1 and stats["peak_in_flight"] == 1


async def test_cancelled_slow_request_is_a_disconnect() -> None:
    slow = {"sim-small": ModelProfile(ttft_s=5.0, prompt_tps=1000, completion_tps=10)}
    async with sim.serve(SimConfig(time_scale=1.0, profiles=slow)) as server:
        async with client(server) as c:
            task = asyncio.create_task(c.chat.completions.create(model="sim-small", messages=MESSAGES))
            while server.stats()["in_flight"] == 0:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        stats = await settled(server, within_s=1.0)
        assert stats["disconnects"] == 1 and stats["in_flight"] == 0


async def test_fail_first_n_attempts_of_each_request() -> None:
    async with sim.serve(SimConfig(time_scale=0, faults=Faults(fail_first=2, fail_first_status=503))) as server:
        async with client(server) as c:
            for _ in range(2):
                with pytest.raises(openai.InternalServerError):
                    await c.chat.completions.create(model="sim-small", messages=MESSAGES)
            ok = await c.chat.completions.create(model="sim-small", messages=MESSAGES)
            with pytest.raises(openai.InternalServerError):  # a different request starts its own count
                await c.chat.completions.create(model="sim-small", messages=[{"role": "user", "content": "other"}])
    assert ok.choices[0].message.content
    assert server.stats()["by_status"] == {"200": 1, "503": 3}


@pytest.mark.looptime
async def test_capacity_queues_requests_beyond_the_slots() -> None:
    """On the virtual clock: 4 answers of exactly 0.2 s on 4 slots take 0.2 s; 8 take two waves,
    0.4 s, the second four waiting 0.2 s in the server's queue."""
    profile = {"sim-small": ModelProfile(ttft_s=0.2, prompt_tps=1e9, completion_tps=1e9, jitter=0.0)}

    async def run(n: int) -> RunResult:
        backend = sim.backend(SimConfig(time_scale=1.0, profiles=profile, slots=4))
        async with Orchestrator(backend, max_concurrency=n) as orch:
            return await orch.run([Query(f"q{i}", f"q{i}") for i in range(n)])

    within, queued = await run(4), await run(8)
    assert within.metrics.wall_s == pytest.approx(0.2, abs=1e-5)
    assert queued.metrics.wall_s == pytest.approx(0.4, abs=1e-5)
    assert sorted(round(r.server_queue_s or 0.0, 4) for r in queued.results) == [0.0] * 4 + [0.2] * 4


@pytest.mark.looptime
async def test_time_scale_zero_does_not_wait_and_scaled_profile_does() -> None:
    """The latency model, exactly: time scale 0 answers at once; 0.1 takes a tenth of the profile's
    time to first token plus its completion tokens at its rate."""

    large = dataclasses.replace(sim.PROFILES["sim-large"], jitter=0.0, prompt_tps=1e12)

    async def latency(time_scale: float) -> tuple[float, int]:
        config = SimConfig(time_scale=time_scale, seed=2, profiles={"sim-large": large})
        async with Orchestrator(sim.backend(config, model="sim-large")) as orch:
            run = await orch.run([Query("q", "Say hello.")])
        return run.results[0].latency_s, run.results[0].usage.completion_tokens

    instant, _ = await latency(0)
    scaled, tokens = await latency(0.1)
    assert instant == 0.0
    assert scaled == pytest.approx(0.1 * (large.ttft_s + tokens / large.completion_tps), rel=1e-6)


@pytest.mark.heavy
async def test_server_in_its_own_process_reports_stats_over_http() -> None:
    async with sim.serve_process(SimConfig(seed=4, time_scale=0, api_key="sk-proc")) as server:
        async with openai.AsyncOpenAI(base_url=server.url, api_key="sk-proc", max_retries=0) as c:
            r = await c.chat.completions.create(model="sim-small", messages=MESSAGES)
        stats = await server.fetch_stats()
    assert r.choices[0].message.content and stats["by_status"] == {"200": 1} and stats["in_flight"] == 0


def test_binding_elsewhere_than_loopback_warns() -> None:
    with pytest.warns(UserWarning, match="bind 127.0.0.1"):
        with sim.serve_in_thread(SimConfig(host="0.0.0.0", time_scale=0)):
            pass


def test_config_round_trips_through_json_without_the_key() -> None:
    config = SimConfig(seed=3, faults=Faults(drop=0.1), scripts=(Script(pattern="x", reply={"a": 1}),), api_key="sk-x")
    data = config.to_dict()
    assert "api_key" not in data
    assert SimConfig.from_dict(data) == config.with_changes(api_key=None)


@pytest.mark.parametrize(
    "changes",
    [{"time_scale": -1}, {"slots": 0}, {"rpm": 0}, {"faults": {"drop": 2.0}}, {"bogus": 1}],
)
def test_bad_config_is_rejected_with_a_clear_error(changes: dict[str, object]) -> None:
    from hybrid import ConfigError

    with pytest.raises(ConfigError):
        SimConfig.from_dict(changes)


async def test_langchain_openai_works_unchanged() -> None:
    langchain_openai = pytest.importorskip("langchain_openai", reason="the peers extra is not installed")
    async with sim.serve(SimConfig(seed=1, time_scale=0)) as server:
        llm = langchain_openai.ChatOpenAI(base_url=server.url, api_key=server.api_key, model="sim-small", max_retries=0)
        try:
            replies = await llm.abatch(["one", "two"])
            streamed = [chunk.content async for chunk in llm.astream("three")]
        finally:
            await llm.root_async_client.close()  # ChatOpenAI never closes the client it made
    assert all(r.content for r in replies) and "".join(streamed)


@pytest.mark.looptime
async def test_contention_slows_requests_that_share_the_server_together() -> None:
    """In virtual time, exactly: 40 tokens at 200 tokens/s take 0.2 s alone; with contention 1.0,
    four sharing the server decode 4x slower, all of them (not just the later arrivals)."""
    from hybrid import Orchestrator, Query

    profile = {
        "sim-small": ModelProfile(
            ttft_s=0.0,
            prompt_tps=1e9,
            completion_tps=200,
            jitter=0.0,
            contention=1.0,
            min_completion_tokens=40,
            max_completion_tokens=40,
        )
    }

    async def latencies(n: int) -> list[float]:
        backend = sim.backend(SimConfig(time_scale=1.0, profiles=profile, slots=8))
        async with Orchestrator(backend, progress=False) as orch:
            run = await orch.run([Query(f"q{i}", f"{i}") for i in range(n)])
        return [r.latency_s for r in run.results]

    assert await latencies(1) == [pytest.approx(0.2)]
    # Decoding is paced in 8 pieces of 5 tokens, each at the sharing of its moment: the k-th arrival
    # decodes its first piece while k requests hold slots (25 ms x k), then 7 pieces shared by all 4.
    assert await latencies(4) == pytest.approx([0.025 * k + 7 * 0.1 for k in (1, 2, 3, 4)])


@pytest.mark.heavy
def test_curl_gets_json_and_sse() -> None:
    import json
    import shutil
    import subprocess

    curl = shutil.which("curl")
    assert curl, "curl is part of the machine image this kit is tested on"
    body = json.dumps({"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]})
    with sim.serve_in_thread(SimConfig(seed=1, time_scale=0, api_key="sk-curl")) as server:
        auth = ["-H", "Authorization: Bearer sk-curl", "-H", "Content-Type: application/json"]
        plain = subprocess.run(
            [curl, "-sS", *auth, "-d", body, server.url + "/chat/completions"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        streamed = subprocess.run(
            [
                curl,
                "-sSN",
                *auth,
                "-d",
                body.replace('"hi"}]', '"hi"}], "stream": true'),
                server.url + "/chat/completions",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        refused = subprocess.run(
            [curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "-d", body, server.url + "/chat/completions"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    assert json.loads(plain.stdout)["choices"][0]["message"]["content"]
    assert streamed.stdout.strip().endswith("data: [DONE]") and streamed.stdout.count("data: ") > 3
    assert refused.stdout == "401"


def test_generated_answers_say_they_are_simulated_and_keep_their_seeded_length() -> None:
    """Filler starts with "Simulated answer:" (nobody should read it as a broken model), is a
    seeded slice of the word pool (the same request, the same text; another request, another
    text), and is exactly ``random.Random(seed).randint(low, high)`` tokens long, the length every
    earlier version of the simulator drew, so timings, token counts and costs stay as they were."""
    import random

    from hybrid.sim import model
    from hybrid.tokens import count_tokens

    texts = set()
    for seed in range(300):
        for low, high in ((1, 1), (2, 3), (20, 60), (1, 9000)):
            tokens = model.seeded_tokens(seed, low, high)
            assert len(tokens) == random.Random(seed).randint(low, high) == count_tokens("".join(tokens))
            assert "".join(tokens) == "".join(model.seeded_tokens(seed, low, high))
            assert tokens[:3] == ["Simulated", " answer", ":"][: len(tokens)]
        texts.add("".join(model.seeded_tokens(seed, 40, 40)))
    assert len(texts) > 250  # seeds land on different slices of the pool


async def test_echo_answers_repeat_the_last_message() -> None:
    """``SimConfig(answers="echo")``: what a template or a scorer under test can check."""
    from hybrid.tokens import count_tokens

    config = SimConfig(seed=1, time_scale=0, answers="echo")
    async with Orchestrator(sim.backend(config)) as orch:
        run = await orch.run([Query("q", "What is 2 + 2?", system="Be brief."), Query("j", "Name", json_mode=True)])
    assert run.results[0].text == "Simulated echo: What is 2 + 2?"
    assert run.results[0].usage.completion_tokens == count_tokens("Simulated echo: What is 2 + 2?")
    assert json.loads(run.results[1].text or "") == {"answer": "Simulated echo: Name"}
    with pytest.raises(ConfigError, match="answers"):
        SimConfig(answers="random")


def test_a_reply_keeps_the_token_boundaries_a_fresh_tokenisation_finds() -> None:
    """Generated answers are counted, cut at max_tokens and split into stream pieces from the
    boundaries they were drawn with; they must be the ones the kit's token rule finds in the text."""
    from hybrid.sim.config import PROFILES
    from hybrid.sim.model import ReplyModel
    from hybrid.tokens import count_tokens

    scripts = (
        Script(pattern="scripted", reply="A scripted reply, with: punctuation!"),
        Script(pattern="blank", reply="  "),
    )
    replies = ReplyModel(7, scripts, PROFILES)
    for i in range(300):
        for max_tokens in (None, 1, 7, 40):
            for json_mode in (False, True):
                text = f"scripted {i}" if i % 5 == 0 else f"question {i}"
                reply = replies.reply("sim-small", text, 1, max_tokens, 1.0, json_mode)
                whole = replies.reply("sim-small", text, 1, None, 1.0, json_mode)
                assert reply.completion_tokens == count_tokens(reply.text)
                if max_tokens is not None and whole.completion_tokens > max_tokens:
                    assert reply.finish_reason == "length" and reply.completion_tokens == max_tokens
                    assert whole.text.startswith(reply.text) and whole.text != reply.text
                else:
                    assert reply.finish_reason == "stop" and reply.text == whole.text
                assert "".join(piece for piece, _ in reply.pieces) == "".join(reply.tokens) == reply.text
                assert [n for _, n in reply.pieces] == [count_tokens(piece) for piece, _ in reply.pieces]
    blank = replies.reply("sim-small", "blank", 1, None, 1.0, False)  # nothing the token rule counts
    assert (blank.text, blank.completion_tokens, blank.pieces) == ("  ", 0, (("  ", 0),))


def test_hybrid_sim_takes_the_answer_mode() -> None:
    from hybrid.cli import _sim_config, build_parser

    assert _sim_config(build_parser().parse_args(["sim", "--answers", "echo"])).answers == "echo"
    assert _sim_config(build_parser().parse_args(["sim"])).answers == "filler"
