"""Trace replay: workloads from JSONL, OpenTelemetry spans and stored runs, replayed open-loop with sessions."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import orjson
import pandas.testing
import pytest

from hybrid import ConfigError, Orchestrator, Query, Store, bench, sim, workload
from hybrid.cli import main as cli_main
from hybrid.errors import ServerError
from hybrid.testing import Answer, Fail, FakeBackend

from .conftest import assert_same_run


def _trace(path: Path, lines: list[dict[str, object]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


def test_a_trace_loads_in_order_and_a_bad_line_names_its_file_and_line(tmp_path: Path) -> None:
    trace = _trace(
        tmp_path / "t.jsonl",
        [
            {"t": 0.0, "prompt": "Hello"},
            {"t": 1.5, "prompt_tokens": 40, "prefix": "sys", "prefix_tokens": 30, "completion_tokens": 12},
            {"t": 2.0, "session": "s1", "turn": 2, "prompt": "And then?", "think_s": 3},
            {"t": 1.0, "session": "s1", "turn": 1, "prompt": "Tell me a story"},
        ],
    )
    loaded = workload.load(trace)
    assert [r.name for r in loaded] == ["r0", "r1", "s1/2", "s1/1"] and loaded.requests[1].max_tokens == 12
    assert loaded.sessions() == [(0,), (3, 2), (1,)]  # by first arrival; a session's turns in order
    queries = loaded.queries()
    assert len(queries[1].prompt.split()) == 40  # the size asked, under the kit's token rule
    assert queries[1].metadata["prefix"] == "sys"
    assert workload.load(loaded.save(tmp_path / "again.jsonl")) == workload.Workload(
        loaded.requests, str(tmp_path / "again.jsonl")
    )
    for bad, said in (
        ({"prompt": "no time"}, "t is missing"),
        ({"t": -1, "prompt": "x"}, "t must be a number"),
        ({"t": 0}, "prompt_tokens"),
        ({"t": 0, "prompt": "x", "tokens": 3}, "unknown field"),
    ):
        _trace(tmp_path / "bad.jsonl", [{"t": 0, "prompt": "fine"}, bad])
        with pytest.raises(ConfigError, match=said) as caught:
            workload.load(tmp_path / "bad.jsonl")
        assert "bad.jsonl:2" in str(caught.value)
    with pytest.raises(ConfigError, match="No trace at"):
        workload.load(tmp_path / "missing.jsonl")


async def test_replay_refuses_what_is_not_a_workload_and_a_bad_speed_before_sending() -> None:
    backend = FakeBackend()
    async with Orchestrator(backend) as orch:
        with pytest.raises(ConfigError, match="takes a Workload"):
            await bench.replay(orch, [Query("q", "hi")])  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="speed"):
            await bench.replay(orch, workload.Workload((workload.Request(t=0, name="a", prompt="hi"),)), speed=0)
    assert backend.calls == []


def _day(n: int, *, seconds: float) -> workload.Workload:
    """``n`` single requests spread evenly over ``seconds``, two thirds sharing a prefix."""
    return workload.Workload(
        tuple(
            workload.Request(
                t=i * seconds / n,
                name=f"r{i}",
                prompt_tokens=60,
                prefix="faq" if i % 3 else None,
                prefix_tokens=40 if i % 3 else 0,
                max_tokens=32,
            )
            for i in range(n)
        )
    )


@pytest.mark.looptime
async def test_a_thousand_request_trace_replays_identically_twice_with_its_schedule_kept() -> None:
    trace = _day(1000, seconds=600.0)
    runs = []
    for _ in range(2):
        async with Orchestrator(sim.backend(sim.SimConfig(seed=3)), max_concurrency=64) as orch:
            runs.append(await bench.replay(orch, trace, speed=2.0))
    first, second = runs
    # identical to the nanosecond (the second run starts 300 s later on the loop's clock: float rounding)
    pandas.testing.assert_frame_equal(first.to_frame(), second.to_frame(), rtol=0, atol=1e-9)
    assert [r.name for r in first.results] == [f"r{i}" for i in range(1000)]  # trace order
    assert [r.scheduled_s for r in first.results] == pytest.approx([i * 0.6 / 2 for i in range(1000)])
    assert all(r.started_s >= r.scheduled_s for r in first.results)
    assert first.metrics.wall_s >= 299.7 and first.flags == ()


@pytest.mark.looptime
async def test_turn_two_carries_turn_ones_real_answer_and_leaves_after_it_plus_think_time() -> None:
    seen: dict[str, Query] = {}

    def answer(query: Query, attempt: int) -> Answer:
        seen[query.name] = query
        return Answer(text=f"answer to {query.name}", delay=2.0)

    trace = workload.Workload(
        (
            workload.Request(t=1.0, name="a/1", prompt="First question", session="a", turn=1),
            workload.Request(t=1.5, name="a/2", prompt="Second question", session="a", turn=2, think_s=4.0),
        )
    )
    async with Orchestrator(FakeBackend(answer)) as orch:
        run = await bench.replay(orch, trace, speed=2.0)
    one, two = run.results
    assert seen["a/2"].history == (("user", "First question"), ("assistant", "answer to a/1"))
    assert seen["a/2"].messages()[-1] == {"role": "user", "content": "Second question"}
    assert one.scheduled_s == one.started_s == 0.5 and one.finished_s == 2.5
    assert two.scheduled_s == two.started_s == 2.5 + 4.0 / 2 and two.finished_s == 6.5
    per_session = bench.sessions(run)
    assert per_session.loc[0, "turns"] == 2 and per_session.loc[0, "time_to_last_turn_s"] == 6.0
    assert per_session.loc[0, "tokens_grown"] == two.usage.prompt_tokens - one.usage.prompt_tokens > 0
    assert list(bench.turns(run)["turn"]) == [1, 2]


@pytest.mark.looptime
async def test_a_failed_turn_leaves_the_rest_of_its_session_unsent_and_other_sessions_go_on() -> None:
    backend = FakeBackend({"a/1": Fail(ServerError("boom", status=500))}, default=Answer(delay=1.0))
    trace = workload.Workload(
        tuple(
            workload.Request(t=0.0, name=f"{s}/{n}", prompt=f"{s} {n}", session=s, turn=n) for s in "ab" for n in (1, 2)
        )
    )
    async with Orchestrator(backend) as orch:
        run = await bench.replay(orch, trace)
    kinds = {r.name: None if r.error is None else r.error.kind for r in run.results}
    assert kinds == {"a/1": "server_error", "a/2": "dependency_failed", "b/1": None, "b/2": None}
    assert {c.name for c in backend.calls} == {"a/1", "b/1", "b/2"}  # a/1 with its retries; a/2 never


@pytest.mark.looptime
async def test_a_client_that_cannot_keep_up_shows_lag_and_is_flagged_coordinated_omission() -> None:
    trace = _day(20, seconds=2.0)  # ten arrivals a second
    async with Orchestrator(FakeBackend(default=Answer(delay=1.0)), max_concurrency=1) as orch:
        late = await bench.replay(orch, trace)
    lags = [r.started_s - r.scheduled_s for r in late.results]
    assert lags == pytest.approx([i * 1.0 - i * 0.1 for i in range(20)])  # one slot, one second each
    assert [r.queue_s for r in late.results] == pytest.approx(lags)  # queue counts from when it was due
    assert "coordinated_omission" in late.flags
    async with Orchestrator(FakeBackend(default=Answer(delay=1.0)), max_concurrency=64) as orch:
        on_time = await bench.replay(orch, trace)
    assert on_time.flags == () and [r.started_s for r in on_time.results] == pytest.approx(
        [r.scheduled_s for r in on_time.results]
    )


@pytest.mark.looptime
async def test_sessions_beyond_the_limit_wait_for_one_to_end() -> None:
    trace = workload.Workload(
        tuple(workload.Request(t=0.0, name=f"s{i}/1", prompt="hi", session=f"s{i}") for i in range(3))
    )
    async with Orchestrator(FakeBackend(default=Answer(delay=1.0))) as orch:
        run = await bench.replay(orch, trace, max_sessions=2)
    assert [r.started_s for r in run.results] == [0.0, 0.0, 1.0]


def _shown(store: Store, name: str) -> str:
    """What ``hybrid runs show NAME`` prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(["runs", "--store", str(store.path), "show", name]) == 0
    return out.getvalue()


def _span(start_s: float, end_s: float, conversation: str | None, tokens: int) -> dict[str, object]:
    attributes = [
        {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
        {"key": "gen_ai.usage.input_tokens", "value": {"intValue": str(tokens)}},
        {"key": "gen_ai.usage.output_tokens", "value": {"intValue": "20"}},
    ]
    if conversation is not None:
        attributes.append({"key": "gen_ai.conversation.id", "value": {"stringValue": conversation}})
    return {
        "traceId": "0" * 32,
        "spanId": "0" * 16,
        "name": "chat sim-small",
        "startTimeUnixNano": str(int(start_s * 1e9)),
        "endTimeUnixNano": str(int(end_s * 1e9)),
        "attributes": attributes,
    }


@pytest.mark.looptime
async def test_opentelemetry_genai_spans_become_a_workload_that_replays(tmp_path: Path) -> None:
    start = 1_760_000_000.0
    export = {
        "resourceSpans": [
            {
                "resource": {"attributes": []},
                "scopeSpans": [
                    {
                        "scope": {"name": "openai"},
                        "spans": [
                            _span(start, start + 2, "c1", 50),
                            _span(start + 1, start + 1.5, None, 30),
                            _span(start + 7, start + 9, "c1", 80),
                            {"name": "not genai", "startTimeUnixNano": "0", "attributes": []},
                        ],
                    }
                ],
            }
        ]
    }
    path = tmp_path / "traces.jsonl"
    path.write_bytes(orjson.dumps(export) + b"\n")
    loaded = workload.from_otlp(path)
    assert [(r.name, r.t, r.turn, r.think_s, r.prompt_tokens, r.max_tokens) for r in loaded] == [
        ("c1/1", 0.0, 1, 0.0, 50, 20),
        ("span1", 1.0, 1, 0.0, 30, 20),
        ("c1/2", 7.0, 2, 5.0, 80, 20),
    ]
    async with Orchestrator(sim.backend(sim.SimConfig(seed=1))) as orch:
        run = await bench.replay(orch, loaded)
    assert run.ok and len(run) == 3 and run.results[2].query.history
    with pytest.raises(ConfigError, match="no GenAI spans"):
        workload.from_otlp(_trace(tmp_path / "empty.jsonl", [{"resourceSpans": []}]))


@pytest.mark.looptime
async def test_a_stored_run_becomes_a_workload_that_replays_its_schedule(tmp_path: Path) -> None:
    with Store(tmp_path / "runs.sqlite") as store:
        async with Orchestrator(sim.backend(sim.SimConfig(seed=1)), store=store, max_concurrency=1) as orch:
            first = await bench.replay(orch, _day(30, seconds=3.0), name="day")
            assert "coordinated_omission" in first.flags  # one at a time cannot keep up with ten a second
            assert_same_run(store.load("day"), first)  # its schedule and flags kept as measured
            assert "flag coordinated_omission: replayed requests left well after" in _shown(store, "day")
            again = workload.from_run(store, "day")
            assert [r.t for r in again] == [r.scheduled_s for r in first.results]
            assert [q.prompt for q in again.queries()] == [r.query.prompt for r in first.results]
            second = await bench.replay(orch, again, name="day-again")
    assert second.ok and [r.scheduled_s for r in second.results] == [r.scheduled_s for r in first.results]
