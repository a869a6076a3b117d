"""``mode=RayShards(shards=n)``: shards of a run on a local Ray cluster (``ray.init(num_cpus=2)`` on this machine).

The simulator is served in the test's loop over loopback; each shard is an orchestrator in a Ray
actor (another process) talking to it.  Ray's start-up is slow (seconds), so the tests that need a
cluster share one (a module fixture; ``make test`` runs pytest-xdist with ``--dist loadfile``, so a
module's tests share a worker, and no two Ray tests run at once); the first test lets the run
start and stop a cluster of its own.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from ray import cloudpickle

from hybrid import ConfigError, HTTPBackend, Orchestrator, Price, Query, RayShards, Retry, Store, sim
from hybrid.ray_shards import MaskedKey, shares

from .conftest import assert_same_run

#: A local cluster on a loaded two-core machine starts workers slowly: minutes, not seconds.
pytestmark = [pytest.mark.timeout(600), pytest.mark.heavy]


def grid(n: int) -> list[Query]:
    return [Query(f"q{i}", f"Question number {i}?", max_tokens=16) for i in range(n)]


def backend_for(server: sim.SimServer) -> HTTPBackend:
    return HTTPBackend(base_url=server.url, api_key=server.api_key, model="sim-small")


def shard_pids() -> list[int]:
    """Processes Ray titled after a ShardWorker actor, in this process's cluster only (their parent
    is its raylet), so another cluster on the machine (another test run) is never touched."""
    raylets = set()
    node = ray._private.worker._global_node
    if node is not None:
        raylets = {p.process.pid for p in node.all_processes.get("raylet", [])}
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes()
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if title.startswith(b"ray::ShardWorker") and parent in raylets:
                found.append(int(entry.name))
    return found


async def no_shard_workers_left() -> None:
    """Wait until every ShardWorker process is gone (a run kills its actors when it ends; the
    processes take a moment to exit), and fail if some never do."""
    for _ in range(300):
        if not shard_pids():
            return
        await asyncio.sleep(0.1)
    assert shard_pids() == [], "ShardWorker processes outlived their run"


def files_containing(root: Path, needle: bytes) -> list[Path]:
    """Files under ``root`` (Ray's session: logs, sockets' metadata, spilled objects) holding ``needle``."""
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


async def test_a_run_starts_a_local_cluster_when_there_is_none_and_stops_it() -> None:
    assert not ray.is_initialized()
    async with sim.serve(sim.SimConfig(seed=2, time_scale=0.0)) as server:
        async with Orchestrator(backend_for(server), max_concurrency=4) as orch:
            with pytest.warns(DeprecationWarning, match=r"mode=hybrid.RayShards\(shards=2\)"):
                run = await orch.run(grid(20), mode="ray", shards=2)  # the old spelling, for one release
    assert run.ok and run.mode == "ray" and [r.name for r in run.results] == [q.name for q in grid(20)]
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


async def test_a_ray_run_measures_from_its_first_query_and_round_trips_the_store(cluster: None, tmp_path: Path) -> None:
    """Ray's start-up (actors, their orchestrators) is not the run: the wall counts from when the
    shards are ready, a warning says how long the start-up took, and the stored run loads equal."""
    async with sim.serve(sim.SimConfig(seed=2, time_scale=0.0)) as server:
        with Store(tmp_path / "runs.sqlite") as store:
            async with Orchestrator(backend_for(server), max_concurrency=4, store=store) as orch:
                run = await orch.run(grid(40), mode=RayShards(shards=2), name="sharded")
            assert_same_run(store.load("sharded"), run)
    assert run.ok and run.warnings[0].startswith("Ray took ") and "its 2 shard actors" in run.warnings[0]
    assert min(r.started_s for r in run.results) >= 0.0
    assert run.metrics.wall_s >= max(r.finished_s for r in run.results) > 0.0


async def test_ten_thousand_queries_over_two_shards_match_one_process(cluster: None) -> None:
    queries = [Query(f"q{i}", f"Question number {i}?", max_tokens=12) for i in range(10_000)]
    async with sim.serve(sim.SimConfig(seed=2, time_scale=0.0)) as server:
        async with Orchestrator(backend_for(server), max_concurrency=32) as orch:
            alone = await orch.run(queries)
            sharded = await orch.run(queries, mode=RayShards(shards=2))
    assert sharded.ok and sharded.metrics.queries == 10_000
    assert [r.name for r in sharded.results] == [q.name for q in queries]
    assert [r.text for r in sharded.results] == [r.text for r in alone.results]
    assert [r.usage for r in sharded.results] == [r.usage for r in alone.results]
    assert all(r.origin == "sent" and r.attempts == 1 for r in sharded.results)


def test_limits_are_split_into_shares_that_add_up_to_them() -> None:
    for total in (1, 7, 64, 6000, 150_000):
        for parts in (1, 2, 3, 7):
            if total >= parts:
                split = shares(total, parts)
                assert sum(x or 0 for x in split) == total and min(x or 0 for x in split) >= total // parts
    assert shares(None, 3) == [None, None, None]


async def test_shards_keep_to_the_rate_limit_the_user_set(cluster: None) -> None:
    """The server admits 300 requests per sliding second.  The client's limit, 6,000 per minute
    counted per second (a bucket of 100, refilled at 100/s), lets at most 200 leave in any second
    (the margin absorbs requests that leave apart and arrive together on a busy machine), so two
    shards sharing it see no 429; two orchestrators each with the whole limit, what a naive
    fan-out does, send up to 400 in a second and see many."""
    config = sim.SimConfig(seed=2, time_scale=0.0, rpm=300, limit_window_s=1.0)
    limits = {"rpm": 6000, "rate_window_s": 1.0, "max_concurrency": 32}
    async with sim.serve(config) as server:
        async with Orchestrator(backend_for(server), **limits) as orch:
            run = await orch.run(grid(600), mode=RayShards(shards=2))
        assert run.ok and server.stats()["by_status"].get("429", 0) == 0
        assert run.metrics.wall_s > 4.0  # 500 requests after the first burst, at 100/s
    async with sim.serve(config) as server:
        async with (
            Orchestrator(backend_for(server), **limits) as one,
            Orchestrator(backend_for(server), **limits) as two,
        ):
            await asyncio.gather(
                one.run(grid(300), raise_if_all_failed=False), two.run(grid(300), raise_if_all_failed=False)
            )
        assert server.stats()["by_status"].get("429", 0) > 0


async def test_each_shard_waits_out_retry_after(cluster: None) -> None:
    """Every query's first attempt is answered 429 with Retry-After: 1; the shards' orchestrators
    wait that second (not their 10 ms backoff) and the second attempt succeeds."""
    faults = sim.Faults(fail_first=1, fail_first_status=429, retry_after_s=1.0)
    async with sim.serve(sim.SimConfig(seed=2, time_scale=0.0, faults=faults)) as server:
        fast_retry = Retry(attempts=3, base=0.01, cap=0.01, jitter=0.0)
        async with Orchestrator(backend_for(server), max_concurrency=8, retry=fast_retry) as orch:
            run = await orch.run(grid(40), mode=RayShards(shards=2))
    assert run.ok and {r.attempts for r in run.results} == {2}
    assert min(r.latency_s for r in run.results) >= 1.0


async def test_the_key_reaches_the_workers_but_no_ray_log_or_argument(cluster: None) -> None:
    canary = "sk-canary-" + os.urandom(12).hex()
    async with sim.serve(sim.SimConfig(seed=2, time_scale=0.0, api_key=canary)) as server:
        async with Orchestrator(backend_for(server), max_concurrency=4) as orch:
            run = await orch.run(grid(50), mode=RayShards(shards=2))
    assert run.ok  # so the workers did authenticate with it
    masked = MaskedKey(canary)
    assert canary.encode() not in cloudpickle.dumps(masked) and canary not in repr(masked)
    assert masked.reveal() == canary
    session = Path(ray._private.worker.global_worker.node.get_session_dir_path())
    assert files_containing(session, canary.encode()) == []
    assert canary not in run.to_json() and canary not in repr(run)


async def test_a_worker_killed_mid_run_loses_no_row_and_doubles_none(cluster: None) -> None:
    queries = grid(3000)
    earlier = set(shard_pids())  # workers of earlier runs may still be exiting: not victims
    async with sim.serve(sim.SimConfig(seed=2, time_scale=0.0)) as fast:
        async with Orchestrator(backend_for(fast), max_concurrency=16) as orch:
            expected = await orch.run(queries)
    async with sim.serve(sim.SimConfig(seed=2, time_scale=0.05)) as server:
        async with Orchestrator(backend_for(server), max_concurrency=16) as orch:
            task = asyncio.ensure_future(orch.run(queries, mode=RayShards(shards=2, chunk=64)))
            while server.stats()["requests"] < 500:
                assert not task.done()
                await asyncio.sleep(0.05)
            victims = [pid for pid in shard_pids() if pid not in earlier]
            assert victims, "no worker of this run was found"
            os.kill(victims[0], signal.SIGKILL)
            run = await task
        sent = server.stats()["requests"]
    assert run.ok and run.metrics.queries == 3000
    assert [r.name for r in run.results] == [q.name for q in queries]
    assert [r.text for r in run.results] == [r.text for r in expected.results]
    assert sent >= 3000  # the dead worker's unfinished chunks were sent again
    await no_shard_workers_left()


async def test_ray_mode_refuses_what_it_cannot_do_before_sending() -> None:
    prices = {"sim-small": Price(prompt_per_mtok=1, completion_per_mtok=1)}
    async with sim.serve(sim.SimConfig(time_scale=0.0)) as server:
        async with Orchestrator(backend_for(server), max_concurrency=2) as orch:
            with pytest.raises(ConfigError, match=r"mode=hybrid.RayShards\(shards=2\)"):
                await orch.run(grid(2), shards=2)
            with pytest.raises(ConfigError, match="cannot be shared by 3 shards"):
                await orch.run(grid(2), mode=RayShards(shards=3))
            with pytest.raises(ConfigError, match="pipeline"):
                await orch.pipeline([grid(2)], mode="ray")
        async with Orchestrator(backend_for(server), prices=prices, budget_usd=1.0) as orch:
            with pytest.raises(ConfigError, match="budget_usd"):
                await orch.run(grid(2), mode=RayShards(shards=2))
        assert server.stats()["requests"] == 0
    async with Orchestrator(sim.backend(sim.SimConfig())) as orch:
        with pytest.raises(ConfigError, match="rebuilds the backend"):
            await orch.run(grid(2), mode=RayShards(shards=2))


async def test_the_cache_is_read_before_sharding_and_filled_after(cluster: None, tmp_path: Path) -> None:
    async with sim.serve(sim.SimConfig(seed=2, time_scale=0.0)) as server:
        store = tmp_path / "runs.sqlite"
        async with Orchestrator(backend_for(server), max_concurrency=4, store=store, cache=True) as orch:
            sharded = await orch.run(grid(12), mode=RayShards(shards=2))
            sent = server.stats()["requests"]
            again = await orch.run(grid(12))  # answered from what the shards brought back
            both = await orch.run(grid(14), mode=RayShards(shards=2))  # only the two new ones are sharded
    assert sharded.ok and sent == 12
    assert {r.origin for r in again.results} == {"cache"}
    assert [r.text for r in again.results] == [r.text for r in sharded.results]
    assert [r.origin for r in both.results] == ["cache"] * 12 + ["sent"] * 2
