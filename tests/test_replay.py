"""Replay: a recorded suite answers from the store alone, sends nothing, and a miss says what changed.

The wire tests record against the simulator over loopback, stop it, and replay with every network
socket blocked (pytest-socket; the event loop's own AF_UNIX pair stays allowed), for both backends
and for ``mode="batch"``.  The orchestration tests (modes, the environment override, the miss
messages) run on the scripted backend in virtual time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_socket

import hybrid.fingerprint as fingerprint
from hybrid import ConfigError, Orchestrator, Query, Retry, RunResult, Store, sim
from hybrid.testing import Answer, FakeBackend

from .conftest import BACKENDS

SUITE = [Query(f"case-{i}", f"What is {i} + {i}?", max_tokens=16) for i in range(6)]


@pytest.fixture(autouse=True)
def no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests set HYBRID_CACHE themselves; one set by the caller's shell must not leak in."""
    monkeypatch.delenv("HYBRID_CACHE", raising=False)


@pytest.fixture
def sockets_off() -> Iterator[None]:
    pytest_socket.disable_socket(allow_unix_socket=True)
    try:
        yield
    finally:
        pytest_socket.enable_socket()


def edited(suite: list[Query], index: int) -> list[Query]:
    """``suite`` with query ``index``'s prompt changed."""
    changed = list(suite)
    changed[index] = Query(suite[index].name, suite[index].prompt + " Answer in words.", max_tokens=16)
    return changed


def misses(run: RunResult) -> dict[str, str]:
    return {r.name: str(r.error) for r in run.results if r.error is not None}


@pytest.mark.parametrize(("backend_kind", "mode"), [("http", "gather"), ("openai", "gather"), ("openai", "batch")])
async def test_a_recording_replays_with_the_server_stopped_and_sockets_blocked(
    tmp_path: Path, backend_kind: str, mode: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(HTTPBackend has no Batch API: batch mode is the SDK's files and batches.)"""
    store = Store(tmp_path / "suite.sqlite")
    async with sim.serve(sim.SimConfig(seed=3, time_scale=0.0)) as server:
        backend = BACKENDS[backend_kind](base_url=server.url, api_key=server.api_key, model="sim-small")
        async with Orchestrator(backend, store=store, cache="record", retry=Retry(attempts=1)) as orch:
            recorded = await orch.run(SUITE, mode=mode, name="record")
        url = server.url
    assert recorded.metrics.succeeded == len(SUITE)

    request.getfixturevalue("sockets_off")  # from here on, any AF_INET socket raises
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # CI replays with no key in its environment
    replayer = BACKENDS[backend_kind](base_url=url, model="sim-small")  # and its server is gone
    async with Orchestrator(replayer, store=store, cache="replay") as orch:
        replayed = await orch.run(SUITE, mode=mode, name="replay")
        changed = await orch.run(edited(SUITE, 2), mode=mode, name="edited", raise_if_all_failed=False)

    assert [r.origin for r in replayed.results] == ["cache"] * len(SUITE)
    assert [r.text for r in replayed.results] == [r.text for r in recorded.results]
    assert replayed.metrics.cost_usd in (None, 0.0) and replayed.metrics.attempts == 0
    assert list(misses(changed)) == ["case-2"]
    row = changed["case-2"]
    assert row.error is not None and row.error.kind == "not_recorded" and row.attempts == 0 and row.origin == "cache"
    assert "'case-2'" in str(row.error) and "in messages" in str(row.error)
    assert "HYBRID_CACHE=record" in str(row.error)
    assert all(r.ok and r.origin == "cache" for r in changed.results if r.name != "case-2")


async def test_a_replay_on_another_port_finds_the_recording(tmp_path: Path) -> None:
    """The cache key holds the server's identity, which drops a loopback port: a local server
    restarted on another port replays what was recorded against it."""
    store = Store(tmp_path / "suite.sqlite")
    for cache in ("record", "replay"):
        async with sim.serve(sim.SimConfig(seed=3, time_scale=0.0)) as server:
            backend = BACKENDS["http"](base_url=server.url, api_key=server.api_key, model="sim-small")
            async with Orchestrator(backend, store=store, cache=cache) as orch:
                run = await orch.run(SUITE[:2])
            sent = server.stats()["requests"]
        assert sent == (2 if cache == "record" else 0)
    assert [r.origin for r in run.results] == ["cache", "cache"]


# -- the modes and the environment override (scripted backend, virtual time) --------------------


async def recorded_store(tmp_path: Path, queries: list[Query] = SUITE) -> Store:
    store = Store(tmp_path / "suite.sqlite")
    async with Orchestrator(FakeBackend(default=Answer("4")), store=store, cache="record") as orch:
        await orch.run(queries, name="recording")
    return store


@pytest.mark.looptime
async def test_a_replay_never_opens_the_backend_and_never_retries_a_miss(tmp_path: Path) -> None:
    store = await recorded_store(tmp_path)
    backend = FakeBackend(default=Answer("live"))
    async with Orchestrator(backend, store=store, cache="replay", retry=Retry(attempts=5)) as orch:
        run = await orch.run([*SUITE, Query("new", "Never recorded")])
    assert backend.open_count == 0 and backend.calls == []
    assert run["new"].error is not None and run["new"].error.kind == "not_recorded" and run["new"].attempts == 0
    assert "no query of that name was ever recorded" in str(run["new"].error)
    assert run.metrics.from_cache == len(SUITE) and run.metrics.failed == 1


@pytest.mark.looptime
async def test_record_is_on_and_live_is_no_cache(tmp_path: Path) -> None:
    store = await recorded_store(tmp_path)
    backend = FakeBackend(default=Answer("live"))
    async with Orchestrator(backend, store=store, cache="record") as orch:
        hit = await orch.run([SUITE[0], Query("fresh", "A new case")])
    async with Orchestrator(backend, store=store, cache="live") as orch:
        live = await orch.run([SUITE[0]])
    assert orch.cache is None
    assert [r.origin for r in hit.results] == ["cache", "sent"] and live[SUITE[0].name].origin == "sent"
    assert [c.name for c in backend.calls] == ["fresh", SUITE[0].name]


@pytest.mark.looptime
async def test_hybrid_cache_in_the_environment_overrides_every_orchestrator_with_a_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await recorded_store(tmp_path)
    monkeypatch.setenv("HYBRID_CACHE", "replay")
    backend = FakeBackend(default=Answer("live"))
    async with Orchestrator(backend, store=store) as orch:  # no cache= at all: CI forces it
        run = await orch.run(SUITE)
    assert orch.replaying and backend.calls == [] and run.metrics.from_cache == len(SUITE)

    monkeypatch.setenv("HYBRID_CACHE", "live")
    async with Orchestrator(backend, store=store, cache="record") as orch:
        await orch.run(SUITE[:1])
    assert orch.cache is None and len(backend.calls) == 1


def test_a_forced_replay_without_a_store_is_refused_before_anything_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRID_CACHE", "replay")
    with pytest.raises(ConfigError, match=r"HYBRID_CACHE=replay .* pass store=hybrid.Store"):
        Orchestrator(FakeBackend())
    monkeypatch.setenv("HYBRID_CACHE", "record")  # nothing to record into: the override does not apply
    assert Orchestrator(FakeBackend()).cache is None
    monkeypatch.setenv("HYBRID_CACHE", "sometimes")
    with pytest.raises(ConfigError, match="HYBRID_CACHE must be one of 'record', 'replay'"):
        Orchestrator(FakeBackend())


def test_a_cache_mode_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cache .* must be one of"):
        Orchestrator(FakeBackend(), store=tmp_path / "s.sqlite", cache="replays")
    with pytest.raises(ConfigError, match="cache='replay' keeps answers in the run store"):
        Orchestrator(FakeBackend(), cache="replay")


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"model": "other-model"}, "model (recorded 'fake', now 'other-model')"),
        ({"temperature": 0.7}, "sampling parameter temperature (recorded None, now 0.7)"),
        ({"max_tokens": 99}, "sampling parameter max_tokens (recorded 16, now 99)"),
        ({"json_mode": True}, "response format (json_mode) (recorded False, now True)"),
        ({"sample": 3}, "sample index (recorded 0, now 3)"),
        ({"system": "Be terse."}, "in messages."),
    ],
)
async def test_a_miss_names_the_part_of_the_request_that_changed(
    tmp_path: Path, change: dict[str, object], named: str
) -> None:
    store = await recorded_store(tmp_path)
    base = SUITE[1]
    query = Query(base.name, base.prompt, **{"max_tokens": base.max_tokens, **change})  # type: ignore[arg-type]
    async with Orchestrator(FakeBackend(), store=store, cache="replay") as orch:
        run = await orch.run([query], raise_if_all_failed=False)
    message = str(run[base.name].error)
    assert named in message and "closest recording (run 'recording', row 1)" in message


@pytest.mark.looptime
async def test_a_miss_says_when_the_recording_was_made_against_another_server(tmp_path: Path) -> None:
    from hybrid import HTTPBackend
    from hybrid.backends.in_process import InProcessTransport

    def backend(identity: str) -> HTTPBackend:
        simulator = sim.Simulator(sim.SimConfig(seed=1, time_scale=0.0))
        transport = InProcessTransport(simulator)
        url = "http://127.0.0.1:8000/v1"
        return HTTPBackend(
            base_url=url,
            api_key="sk-test",
            model="sim-small",
            check_reachable=False,
            transport=transport,
            identity=identity,
        )

    store = Store(tmp_path / "s.sqlite")
    async with Orchestrator(backend("staging"), store=store, cache="record") as orch:
        await orch.run(SUITE[:1])
    async with Orchestrator(backend("production"), store=store, cache="replay") as orch:
        run = await orch.run(SUITE[:1], raise_if_all_failed=False)
    assert "recorded (run" in str(run.results[0].error)
    assert "against another server, not 'production'" in str(run.results[0].error)


@pytest.mark.looptime
async def test_a_recording_under_an_older_fingerprint_version_is_refused_with_the_command_to_rerecord(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A committed recording outlives a kit that changes what it hashes: its rows then say so and
    name how to record again, rather than pass as 'changed messages' or fail without a word."""
    store = await recorded_store(tmp_path)
    monkeypatch.setattr(fingerprint, "FINGERPRINT_VERSION", fingerprint.FINGERPRINT_VERSION + 1)
    fingerprint.fingerprint.cache_clear()
    try:
        async with Orchestrator(FakeBackend(), store=store, cache="replay") as orch:
            run = await orch.run(SUITE, raise_if_all_failed=False)
    finally:
        fingerprint.fingerprint.cache_clear()
    assert {r.error.kind for r in run.results if r.error} == {"not_recorded"} and run.metrics.failed == len(SUITE)
    message = str(run.results[0].error)
    assert "older fingerprint version" in message and "HYBRID_CACHE=record" in message
    assert "--hybrid-cache=record" in message


def test_replay_refuses_ray(tmp_path: Path) -> None:
    from hybrid import HTTPBackend
    from hybrid.ray_shards import RayShards

    backend = HTTPBackend(base_url="http://127.0.0.1:9/v1", model="m", check_reachable=False)
    orch = Orchestrator(backend, store=tmp_path / "s.sqlite", cache="replay")
    with pytest.raises(ConfigError, match="replay with mode='gather'"):
        RayShards(shards=2).check(orch)


@pytest.mark.looptime
async def test_pruning_keeps_the_named_recording_replayable_and_drops_the_rest(tmp_path: Path) -> None:
    store = Store(tmp_path / "suite.sqlite")
    backend = FakeBackend(default=Answer("4"))
    for name, suffix in (("old", " (v1)"), ("explore", " (draft)"), ("suite", "")):
        async with Orchestrator(backend, store=store, cache="record") as orch:
            await orch.run([Query(q.name, q.prompt + suffix, max_tokens=16) for q in SUITE], name=name)

    dry = store.prune(["suite"], dry_run=True)
    assert dry.runs == ("old", "explore") and dry.cached_answers == 2 * len(SUITE)
    assert list(store.runs()["name"]) == ["old", "explore", "suite"]  # a dry run changes nothing

    pruned = store.prune(["suite"])
    assert pruned.runs == ("old", "explore") and pruned.cached_answers == 2 * len(SUITE)
    assert list(store.runs()["name"]) == ["suite"] and pruned.bytes_after < pruned.bytes_before
    async with Orchestrator(FakeBackend(), store=store, cache="replay") as orch:
        run = await orch.run(SUITE)
    assert run.metrics.from_cache == len(SUITE)
    with pytest.raises(ConfigError, match=r"No run named 'gone'.*nothing was pruned"):
        store.prune(["suite", "gone"])


def test_hybrid_runs_prune_from_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hybrid.cli import main
    from hybrid.testing import write_large_run

    path = tmp_path / "suite.sqlite"
    with Store(path) as store:
        write_large_run(store, "keep-me", rows=3, text_bytes=10)
        write_large_run(store, "drop-me", rows=3, text_bytes=10)
    assert main(["runs", "--store", str(path), "prune", "--keep", "keep-me"]) == 0
    assert capsys.readouterr().out.startswith("Removed 1 run(s) (drop-me) and 0 cached answer(s); ")
    assert main(["runs", "--store", str(path), "prune", "--keep", "nope"]) == 2
    assert "No run named 'nope'" in capsys.readouterr().err
