"""Hard kills: a run with a store, killed with SIGKILL at seeded moments, resumed until done.

A child process runs 2,000 queries (``HTTPBackend``, a store, ``resume=True``) against a simulator
in its own process, which counts every request it sees.  The parent kills the child with SIGKILL
once a seeded number of new rows has landed in the store, again and again, then lets a last child
finish.  Afterwards the store holds all 2,000 answers sent exactly once (each child is a segment
of the run; a segment also lists the rows it resumed) and passes ``PRAGMA
integrity_check``, and the requests add up exactly: 2,000 plus, for each kill, the requests that
child sent whose answers were not on disk when it died (in flight, or answered in the writer's
last milliseconds before its commit).  So nothing the store held was ever paid for twice, and
each kill costs at most about ``max_concurrency`` requests.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import sys
import textwrap
from pathlib import Path

import pytest

from hybrid import Store, sim

QUERIES = 2000
CONCURRENCY = 16

CHILD = textwrap.dedent(
    f"""
    import asyncio, sys
    from hybrid import HTTPBackend, Orchestrator, Query, Store

    async def main(url, key, path):
        queries = [Query(f"q{{i}}", f"durable question {{i}}") for i in range({QUERIES})]
        backend = HTTPBackend(base_url=url, api_key=key, model="sim-small")
        async with Orchestrator(backend, store=Store(path), max_concurrency={CONCURRENCY}, timeout=120) as orch:
            await orch.run(queries, name="durable", resume=True)

    asyncio.run(main(*sys.argv[1:4]))
    """
)

#: Kernels, subprocesses or nbval: left out of `make test-fast`.
pytestmark = pytest.mark.heavy


def stored_ok(path: Path) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
        try:
            sent_ok = "SELECT COUNT(*) FROM results WHERE error_kind IS NULL AND origin = 'sent'"
            return int(db.execute(sent_ok).fetchone()[0])
        except sqlite3.OperationalError:  # the schema is not there yet
            return 0


async def settled_requests(server: sim.SimServer) -> int:
    """The requests the server has seen, once none is in flight (a killed client's are cut off)."""
    while (stats := await server.fetch_stats())["in_flight"]:
        await asyncio.sleep(0.01)
    return int(stats["requests"])


async def kill_and_resume(tmp_path: Path, kills: int, seed: int) -> list[int]:
    """Kill a stored run ``kills`` times, then let it finish; returns the answers lost at each kill."""
    rng = random.Random(seed)
    path = tmp_path / "durable.sqlite"
    config = sim.SimConfig(seed=seed, time_scale=0.05)
    lost = []
    async with sim.serve_process(config) as server:
        args = [sys.executable, "-c", CHILD, server.url, server.api_key, str(path)]
        for _ in range(kills):
            stored_before, sent_before = stored_ok(path), await settled_requests(server)
            target = stored_before + rng.randint(1, 150)
            child = await asyncio.create_subprocess_exec(*args)
            while child.returncode is None and stored_ok(path) < target:
                await asyncio.sleep(0.005)
            if child.returncode is None:
                child.send_signal(signal.SIGKILL)
            await child.wait()
            sent = await settled_requests(server) - sent_before
            lost.append(sent - (stored_ok(path) - stored_before))  # sent by this child, but not on disk
        last = await asyncio.create_subprocess_exec(*args)
        assert await last.wait() == 0
        requests = await settled_requests(server)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        sent = "SELECT COUNT(*), COUNT(DISTINCT name), SUM(error_kind IS NULL) FROM results WHERE origin = 'sent'"
        rows = db.execute(sent).fetchone()
    assert rows == (QUERIES, QUERIES, QUERIES)  # each answer sent and stored exactly once
    with Store(path) as store:  # each child is one segment; the merged run has every answer
        merged = store.load("durable")
        assert merged.segments == kills + 1 and merged.metrics.succeeded == QUERIES
    # Exact accounting: every request beyond one per query is one whose answer a kill cut off before
    # it reached the disk; nothing the store held was ever sent again.
    assert requests == QUERIES + sum(lost), (requests, lost)
    print(f"{kills} kills: {requests} requests for {QUERIES} queries; lost per kill {lost}")
    return lost


@pytest.mark.timeout(600)
async def test_three_hard_kills_lose_nothing_and_pay_nothing_twice(tmp_path: Path) -> None:
    lost = await kill_and_resume(tmp_path, kills=3, seed=1)
    assert max(lost) <= 2 * CONCURRENCY  # what was in flight, and the writer's last few milliseconds


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_twenty_hard_kills_lose_nothing_and_pay_nothing_twice(tmp_path: Path) -> None:
    lost = await kill_and_resume(tmp_path, kills=20, seed=2)
    assert max(lost) <= 2 * CONCURRENCY
