"""The response cache knows which server answered; resume does not need to.

Two servers serving one model name are two sources of answers: a cached answer from one must not
answer for the other.  A resumed run is about the run's own rows, matched by fingerprint, so it
keeps what it has when its server comes back on another port.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hybrid import HTTPBackend, Orchestrator, Query, Store, sim
from hybrid.backends.endpoint import endpoint_identity
from hybrid.backends.in_process import InProcessTransport
from hybrid.fingerprint import fingerprint
from hybrid.query import Completion, Usage

QUERIES = [Query(f"q{i}", f"question {i}") for i in range(4)]


def served_in_process(identity: str | None, seed: int = 1) -> tuple[HTTPBackend, sim.Simulator]:
    """An HTTPBackend to its own simulator (in this process), all on one base URL."""
    simulator = sim.Simulator(sim.SimConfig(seed=seed, time_scale=0.0))
    backend = HTTPBackend(
        base_url="http://127.0.0.1:8000/v1",
        api_key="sk-test-key",
        model="sim-small",
        check_reachable=False,
        transport=InProcessTransport(simulator),
        identity=identity,
    )
    return backend, simulator


def test_an_endpoint_is_its_url_without_a_loopback_port() -> None:
    from urllib.parse import urlsplit

    def identity(url: str) -> str:
        return endpoint_identity(urlsplit(url))

    assert identity("http://127.0.0.1:8123/v1/") == identity("http://127.0.0.1:9001/v1") == "http://127.0.0.1/v1"
    assert identity("http://[::1]:8000/v1") == "http://[::1]/v1" and identity("http://localhost:1/v1").endswith("/v1")
    assert identity("http://10.0.0.5:8000/v1") != identity("http://10.0.0.5:8001/v1")  # not loopback: the port counts
    assert identity("https://api.example.com/v1?key=secret") == "https://api.example.com/v1"  # never the query
    assert identity("http://127.0.0.1:1/v1") != identity("http://127.0.0.1:1/other/v1")


@pytest.mark.looptime
async def test_two_backends_with_different_identities_never_share_cache_entries(tmp_path: Path) -> None:
    first, first_server = served_in_process("deployment-a")
    second, second_server = served_in_process("deployment-b", seed=2)
    with Store(tmp_path / "runs.sqlite") as store:
        async with Orchestrator(first, store=store, cache=True) as orch:
            await orch.run(QUERIES)
        async with Orchestrator(second, store=store, cache=True) as orch:
            other = await orch.run(QUERIES)
        shared, shared_server = served_in_process("deployment-a", seed=3)
        async with Orchestrator(shared, store=store, cache=True) as orch:
            again = await orch.run(QUERIES)
    assert {r.origin for r in other.results} == {"sent"} and second_server.stats()["requests"] == 4
    assert {r.origin for r in again.results} == {"cache"} and shared_server.stats()["requests"] == 0  # on purpose
    assert first_server.stats()["requests"] == 4


@pytest.mark.looptime
async def test_in_process_simulators_share_answers_only_when_built_alike(tmp_path: Path) -> None:
    origins = []
    with Store(tmp_path / "runs.sqlite") as store:
        for seed in (1, 2, 1):
            backend = sim.backend(sim.SimConfig(seed=seed, time_scale=0.0))
            async with Orchestrator(backend, store=store, cache=True) as orch:
                origins.append({r.origin for r in (await orch.run(QUERIES)).results})
    assert origins == [{"sent"}, {"sent"}, {"cache"}]


@pytest.mark.looptime
async def test_an_entry_from_before_identities_answers_for_any_server(tmp_path: Path) -> None:
    """A store written by an earlier kit keyed answers by fingerprint alone; they still answer."""
    backend, server = served_in_process(None)
    with Store(tmp_path / "runs.sqlite") as store:
        old = Completion(text="from an old store", usage=Usage(prompt_tokens=3, completion_tokens=4), model="sim-small")
        store.cache(fingerprint(QUERIES[0], "sim-small"), old)
        store.flush()
        async with Orchestrator(backend, store=store, cache=True) as orch:
            run = await orch.run(QUERIES)
    assert run["q0"].origin == "cache" and run["q0"].text == "from an old store"
    assert server.stats()["requests"] == 3


async def test_a_resumed_run_on_a_server_restarted_on_another_port_sends_only_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    async with sim.serve(sim.SimConfig(seed=1, time_scale=0.0)) as server:
        backend = HTTPBackend(base_url=server.url, api_key=server.api_key, model="sim-small")
        async with Orchestrator(backend, store=path) as orch:
            await orch.run(QUERIES[:2], name="grid")
    async with sim.serve(sim.SimConfig(seed=1, time_scale=0.0)) as restarted:
        assert restarted.url != server.url
        backend = HTTPBackend(base_url=restarted.url, api_key=restarted.api_key, model="sim-small")
        async with Orchestrator(backend, store=path) as orch:
            run = await orch.run(QUERIES, name="grid", resume=True)
        sent = restarted.stats()["requests"]
    assert [r.origin for r in run.results] == ["resumed", "resumed", "sent", "sent"] and sent == 2
