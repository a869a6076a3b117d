"""The run store: results persisted as they land, resume, the response cache, history, and a store
that fails or is unusable.  Orchestration runs on FakeBackend in virtual time; the store is a real
SQLite file in a temporary folder."""

from __future__ import annotations

import logging
import math
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from hybrid import ConfigError, Orchestrator, Price, Query, Retry, ServerError, Store
from hybrid.store.schema import APPLICATION_ID, INSERT_RESULT, SCHEMA_VERSION
from hybrid.testing import Answer, Fail, FakeBackend

pytestmark = pytest.mark.looptime

PRICE = Price(prompt_per_mtok=1.0, completion_per_mtok=2.0)


def grid(n: int, prefix: str = "q") -> list[Query]:
    return [Query(f"{prefix}{i}", f"question {i}") for i in range(n)]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with Store(tmp_path / "runs.sqlite") as opened:
        yield opened


async def test_every_result_is_in_the_store_as_the_run_returns(store: Store) -> None:
    backend = FakeBackend({"q1": Fail(ServerError("down", status=503))}, default=Answer("fine", delay=1.0))
    async with Orchestrator(backend, store=store, retry=Retry.never()) as orch:
        run = await orch.run(grid(4), name="first")
    saved = store.load("first")
    assert [r.as_row() for r in saved.results] == [r.as_row() for r in run.results]
    assert (
        saved["q1"].error is not None and saved["q1"].error.kind == "server_error" and saved["q1"].error.status == 503
    )
    assert store.runs()[["name", "status", "queries", "ok", "failed"]].values.tolist() == [
        ["first", "finished", 4, 3, 1]
    ]


async def test_resume_sends_only_what_is_not_answered_ok_and_keeps_the_order(store: Store) -> None:
    later = Answer("later", delay=1.0)
    flaky = {"q1": [Fail(ServerError("down")), later], "q3": [Fail(ServerError("down")), later]}
    backend = FakeBackend(flaky, default=Answer("fine", delay=1.0))
    async with Orchestrator(backend, store=store, retry=Retry.never()) as orch:
        first = await orch.run(grid(4), name="grid")
        assert [r.ok for r in first.results] == [True, False, True, False]
        changed = [*grid(3), Query("q3", "a changed question")]
        resumed = await orch.run(changed, name="grid", resume=True)
    assert [c.name for c in backend.calls[4:]] == ["q1", "q3"]  # the failed and the changed query only
    assert [r.origin for r in resumed.results] == ["resumed", "sent", "resumed", "sent"]
    assert [r.name for r in resumed.results] == ["q0", "q1", "q2", "q3"] and resumed.ok
    m = resumed.metrics
    assert m.resumed == 2 and m.attempts == 2 and m.sum_latency_s == 2.0  # resumed rows stay out of the timings
    assert store.load("grid").ok


async def test_a_run_name_is_never_silently_reused(store: Store) -> None:
    async with Orchestrator(FakeBackend(), store=store) as orch:
        await orch.run(grid(1), name="once")
        with pytest.raises(ConfigError, match="resume=True"):
            await orch.run(grid(1), name="once")
        with pytest.raises(ConfigError, match="needs the name"):
            await orch.run(grid(1), resume=True)
    with pytest.raises(ConfigError, match="need a run store"):
        async with Orchestrator(FakeBackend()) as plain:
            await plain.run(grid(1), name="x")


async def test_the_cache_answers_a_repeated_grid_for_free_and_only_changed_queries_are_sent(store: Store) -> None:
    backend = FakeBackend(default=Answer("fine", delay=2.0, prompt_tokens=10, completion_tokens=5))
    prices = {"fake": Price(prompt_per_mtok=1e5, completion_per_mtok=1e5)}
    async with Orchestrator(backend, store=store, cache=True, prices=prices) as orch:
        first = await orch.run(grid(3))
        again = await orch.run(grid(3))
        edited = await orch.run([*grid(2), Query("q2", "question 2, reworded")])
    assert len(backend.calls) == 3 + 0 + 1
    assert [r.origin for r in again.results] == ["cache"] * 3 and again.texts() == first.texts()
    assert all(r.cost_usd == 0.0 and r.latency_s == 0.0 and r.attempts == 0 for r in again.results)
    assert again.metrics.from_cache == 3 and again.metrics.sum_latency_s == 0.0 and again.metrics.cost_usd == 0.0
    assert [r.origin for r in edited.results] == ["cache", "cache", "sent"]
    assert edited.metrics.cost_usd == pytest.approx(1.5) and edited.metrics.sum_latency_s == 2.0


async def test_errors_are_never_cached_and_samples_stay_distinct(store: Store) -> None:
    backend = FakeBackend({"bad": Fail(ServerError("down"))})
    async with Orchestrator(backend, store=store, cache=True, retry=Retry.never()) as orch:
        await orch.run(
            [Query("bad", "x"), Query("s0", "same"), Query("s1", "same", sample=1)], raise_if_all_failed=False
        )
        again = await orch.run(
            [Query("bad", "x"), Query("s0", "same"), Query("s1", "same", sample=1)], raise_if_all_failed=False
        )
    assert [r.origin for r in again.results] == ["sent", "cache", "cache"]
    assert [c.name for c in backend.calls] == ["bad", "s0", "s1", "bad"]


async def test_cache_modes_read_write_and_expiry(store: Store) -> None:
    backend = FakeBackend()
    async with Orchestrator(backend, store=store, cache="read") as reader:
        await reader.run(grid(1))
        await reader.run(grid(1))
    assert len(backend.calls) == 2  # read-only adds nothing
    async with Orchestrator(backend, store=store, cache="write") as writer:
        await writer.run(grid(1))
        await writer.run(grid(1))
    assert len(backend.calls) == 4  # refresh always sends, and stores
    async with Orchestrator(backend, store=store, cache=True) as cached:
        assert (await cached.run(grid(1))).results[0].origin == "cache"
    store.flush()
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE cache SET created_at = created_at - 7200")
    async with Orchestrator(backend, store=store, cache=True, cache_max_age_s=3600) as fresh_only:
        assert (await fresh_only.run(grid(1))).results[0].origin == "sent"


def test_a_cache_needs_a_store_and_a_known_mode() -> None:
    with pytest.raises(ConfigError, match="store="):
        Orchestrator(FakeBackend(), cache=True)
    with pytest.raises(ConfigError, match="cache"):
        Orchestrator(FakeBackend(), store=":memory:", cache="sometimes")


def test_unusable_stores_are_refused_before_anything_is_sent(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Store(tmp_path / "missing" / "runs.sqlite")
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="cannot be used"):
        Store(garbage)
    newer = tmp_path / "newer.sqlite"
    with sqlite3.connect(newer) as db:
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(ConfigError, match="newer version"):
        Store(newer)
    with pytest.raises(ConfigError, match="cannot be"):
        Store("/proc/hybrid-runs.sqlite")  # a folder nobody can create files in, not even root


def test_a_sqlite_file_the_kit_did_not_create_is_refused_untouched(tmp_path: Path) -> None:
    foreign = tmp_path / "app.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO runs (name) VALUES ('someone else''s')")
    before = foreign.read_bytes()
    with pytest.raises(ConfigError, match=r"did not create .* left untouched"):
        Store(foreign)
    assert foreign.read_bytes() == before and not (tmp_path / "app.sqlite-wal").exists()


def test_a_store_of_an_earlier_kit_is_adopted_and_stamped(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with Store(path) as store:
        store.flush()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA application_id = 0")  # as every store was before the stamp
    with Store(path):
        pass
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


def test_a_damaged_store_is_refused_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "damaged.sqlite"
    with Store(path) as store:
        store._enqueue("INSERT INTO cache VALUES (?, ?, 'm', NULL, 1, 1, 0, 0)", ("k" * 40, "x" * 20_000))
        store.flush()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    data = bytearray(path.read_bytes())
    data[page_size * 2 : page_size * 4] = b"\xff" * (page_size * 2)  # the header (page 1) stays intact
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="damaged"):
        Store(path)


def lease(path: Path, name: str, pid: int, host: str, heartbeat_at: float) -> None:
    """Make run ``name`` look held by another writer."""
    with sqlite3.connect(path) as db:
        (run_id,) = db.execute("SELECT id FROM runs WHERE name = ?", (name,)).fetchone()
        db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?)", (run_id, pid, host, heartbeat_at))


async def test_a_run_another_live_process_writes_cannot_be_resumed_twice(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    backend = FakeBackend(default=Answer("fine", delay=1.0))
    async with Orchestrator(backend, store=path) as orch:
        await orch.run(grid(2), name="grid")
    holder, host = os.getppid(), socket.gethostname()  # a live process that is not this one
    lease(path, "grid", holder, host, time.time())
    async with Orchestrator(backend, store=path) as orch:
        with pytest.raises(ConfigError, match=f"being written by process {holder}"):
            await orch.run(grid(4), name="grid", resume=True)
    assert len(backend.calls) == 2  # nothing was sent twice
    gone = next(pid for pid in range(4_000_000, 3_000_000, -1) if not psutil.pid_exists(pid))
    lease(path, "grid", gone, host, time.time())  # its process is gone: the lease lapses at once
    async with Orchestrator(backend, store=path) as orch:
        resumed = await orch.run(grid(3), name="grid", resume=True)
    lease(path, "grid", 1, "another-host", time.time() - 3600)  # silent for an hour on another host: lapsed
    async with Orchestrator(backend, store=path) as orch:
        again = await orch.run(grid(4), name="grid", resume=True)
    assert resumed.metrics.resumed == 2 and again.metrics.resumed == 3 and len(backend.calls) == 4
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 0  # each run gave its lease back


def test_two_writers_starting_one_name_at_once_get_a_config_error_not_a_sqlite_one(tmp_path: Path) -> None:
    """Two stores on one file (two notebooks) start the same new run names at the same moment:
    for each name one wins, the other is told the name is taken."""
    path = tmp_path / "runs.sqlite"
    names = [f"grid-{i}" for i in range(40)]
    start = threading.Barrier(2)
    outcomes: list[list[str]] = [[], []]

    def writer(store: Store, seen: list[str]) -> None:
        for name in names:
            start.wait()
            try:
                store.begin_segment(name, mode="gather", settings={}, queries=1, concurrency=1, resume=False)
                seen.append("began")
            except Exception as exc:
                seen.append(type(exc).__name__)

    with Store(path) as first, Store(path) as second:
        pairs = zip((first, second), outcomes, strict=True)
        threads = [threading.Thread(target=writer, args=(store, seen)) for store, seen in pairs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert all(sorted(pair) == ["ConfigError", "began"] for pair in zip(*outcomes, strict=True))


async def test_a_store_that_fails_mid_run_is_loud_and_loses_no_answer(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def disk_full(*args: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Store, "_write", staticmethod(disk_full))
    async with Orchestrator(FakeBackend(), store=store) as orch:
        with caplog.at_level(logging.ERROR, logger="hybrid"):
            run = await orch.run(grid(5))
            store.flush()
    assert run.ok and len(run.results) == 5 and "disk is full" in caplog.text
    follow_up = orch.last_run
    assert follow_up is not None and any("run store" in w for w in follow_up.warnings)


async def test_a_run_that_lost_rows_to_a_full_disk_is_stored_as_incomplete(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up for a while, then has room again: the rows written before and after are
    kept, the run's end is written, and it says ``incomplete``, not ``finished``."""
    real_write = Store._write
    failed = []

    def full_for_a_while(connection: sqlite3.Connection, statements: list[tuple[str, object]]) -> None:
        if any(sql is INSERT_RESULT for sql, _ in statements) and not failed:
            failed.append(True)
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("ROLLBACK")  # SQLite rolled back by itself, as on SQLITE_FULL
            raise sqlite3.OperationalError("database or disk is full")
        real_write(connection, statements)

    monkeypatch.setattr(Store, "_write", staticmethod(full_for_a_while))
    async with Orchestrator(FakeBackend(default=Answer("fine", delay=1.0)), store=store) as orch:
        run = await orch.run(grid(5), name="grid")
    store.flush()
    info = store.runs().set_index("name").loc["grid"]
    assert info["status"] == "incomplete" and failed
    assert any("incomplete" in w for w in run.warnings) and "disk is full" in str(store.failure)


async def test_history_compare_and_export(store: Store, tmp_path: Path) -> None:
    async with Orchestrator(FakeBackend(default=Answer("one")), store=store) as orch:
        await orch.run(grid(2), name="a")
    async with Orchestrator(FakeBackend({"q1": Answer("two, longer")}, default=Answer("one")), store=store) as orch:
        await orch.run(grid(2), name="b")
    diff = store.compare("a", "b")
    assert diff["text_changed"].tolist() == [False, True] and diff.loc["q1", "text_b"] == "two, longer"
    for suffix in (".csv", ".jsonl", ".parquet"):
        path = store.export("b", tmp_path / f"b{suffix}")
        frame = (
            pd.read_csv(path)
            if suffix == ".csv"
            else (pd.read_json(path, lines=True) if suffix == ".jsonl" else pd.read_parquet(path))
        )
        assert frame["text"].tolist() == ["one", "two, longer"]
    with pytest.raises(ConfigError, match="No run named"):
        store.load("zzz")


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from hybrid import Orchestrator, Query, Store
    from hybrid.testing import Answer, FakeBackend

    async def main():
        async with Orchestrator(FakeBackend(default=Answer("x")), store=Store(sys.argv[1]), max_concurrency=50) as orch:
            await orch.run([Query(f"q{i}", f"p {i}") for i in range(300)], name=sys.argv[2])

    asyncio.run(main())
    """
)


@pytest.mark.heavy
@pytest.mark.looptime(False)
def test_two_processes_write_one_store_at_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    Store(path).close()
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), name]) for name in ("left", "right")]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    with Store(path) as shared:
        assert sorted(shared.runs()["name"]) == ["left", "right"]
        assert shared.load("left").ok and shared.load("right").ok and len(shared.load("right")) == 300


async def test_the_runs_command_lists_shows_exports_and_compares(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hybrid.cli import main

    path = tmp_path / "cli.sqlite"
    with Store(path) as store:
        for name, text in (("monday", "one"), ("tuesday", "two")):
            async with Orchestrator(FakeBackend(default=Answer(text)), store=store) as orch:
                await orch.run([Query("q", "hello")], name=name)

    def hybrid(*args: str) -> tuple[int, str, str]:
        code = main(["runs", "--store", str(path), *args])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = hybrid("list")
    assert code == 0 and "monday" in out and "tuesday" in out
    assert "two" in hybrid("show", "tuesday")[1]
    assert hybrid("export", "monday", str(tmp_path / "m.csv"))[0] == 0
    assert pd.read_csv(tmp_path / "m.csv")["text"].tolist() == ["one"]
    code, out, _ = hybrid("compare", "monday", "tuesday")
    assert code == 0 and "True" in out  # the text changed
    code, _, err = hybrid("show", "sunday")
    assert code == 2 and "No run named 'sunday'" in err


async def test_benchmarks_refuse_a_cache_unless_told(store: Store) -> None:
    from hybrid import bench

    async with Orchestrator(FakeBackend(), store=store, cache=True) as orch:
        with pytest.raises(ConfigError, match="measures the cache"):
            await bench.compare(orch, grid(2), modes=("gather",), repeats=1)
        frame = await bench.compare(orch, grid(2), modes=("gather",), repeats=2, allow_cache=True)
    assert frame["succeeded"].tolist() == [2, 2]
    with pytest.raises(ConfigError, match="measures the cache"):
        await bench.sweep(FakeBackend(), grid(2), levels=(1,), store=store, cache=True)


#: The results table as schema 4 wrote it (one row per run and index, no segments, no cached prompt
#: tokens): frozen here so that the upgrade is tested against a real old file, not a made-up one.
_SCHEMA_4 = """
CREATE TABLE runs (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, mode TEXT NOT NULL, settings TEXT NOT NULL,
    kit_version TEXT, git_commit TEXT, machine TEXT, queries INTEGER NOT NULL, started_at REAL NOT NULL,
    ended_at REAL, status TEXT NOT NULL);
CREATE TABLE results (run_id INTEGER NOT NULL REFERENCES runs(id), idx INTEGER NOT NULL, name TEXT NOT NULL,
    fingerprint TEXT NOT NULL, query TEXT NOT NULL, text TEXT, error_kind TEXT, error_message TEXT,
    error_status INTEGER, retry_after_s REAL, model TEXT, finish_reason TEXT, prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL, tokens_estimated INTEGER NOT NULL, cost_usd REAL, latency_s REAL NOT NULL,
    queue_s REAL NOT NULL, ttft_s REAL, attempts INTEGER NOT NULL, started_s REAL NOT NULL,
    finished_s REAL NOT NULL, stage INTEGER, origin TEXT NOT NULL, recorded_at REAL NOT NULL, retry_s REAL,
    client_s REAL, server_queue_s REAL, server_s REAL, network_s REAL, PRIMARY KEY (run_id, idx));
CREATE TABLE remote_jobs (run_id INTEGER NOT NULL REFERENCES runs(id), job_id TEXT NOT NULL, kind TEXT NOT NULL,
    input_file_id TEXT, requests INTEGER NOT NULL, status TEXT NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (run_id, job_id));
CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id INTEGER NOT NULL REFERENCES runs(id),
    kind TEXT NOT NULL, idx INTEGER, at REAL NOT NULL, tokens INTEGER);
CREATE TABLE cache (fingerprint TEXT PRIMARY KEY, text TEXT NOT NULL, model TEXT NOT NULL, finish_reason TEXT,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, tokens_estimated INTEGER NOT NULL,
    created_at REAL NOT NULL);
"""


def _old_store(path: Path, *, version: int) -> None:
    """A store as kit schema ``version`` (3 or 4) left it: run 'before', two rows answered in 1 s each."""
    from hybrid.fingerprint import fingerprint

    with sqlite3.connect(path) as db:
        db.executescript(_SCHEMA_4)
        if version < 4:
            for column in ("retry_s", "client_s", "server_queue_s", "server_s", "network_s"):
                db.execute(f"ALTER TABLE results DROP COLUMN {column}")
        db.execute(
            "INSERT INTO runs VALUES (1, 'before', 'gather', '{}', NULL, NULL, NULL, 2, 100.0, 103.0, 'finished')"
        )
        for i in range(2):
            query = Query(f"q{i}", f"question {i}")
            db.execute(
                "INSERT INTO results (run_id, idx, name, fingerprint, query, text, model, prompt_tokens, "
                "completion_tokens, tokens_estimated, latency_s, queue_s, attempts, started_s, finished_s, origin, "
                "recorded_at) VALUES (1, ?, ?, ?, ?, 'fine', 'fake', 3, 4, 0, 1.0, 0.0, 1, 0.0, 1.0, 'sent', 101.0)",
                (i, query.name, fingerprint(query, "fake"), f'{{"prompt": "{query.prompt}"}}'),
            )
        db.execute(f"PRAGMA user_version = {version}")


@pytest.mark.parametrize("version", [3, 4])
async def test_an_older_store_is_upgraded_in_place_and_says_what_it_never_recorded(
    tmp_path: Path, version: int
) -> None:
    """A schema-3 or -4 file opens, keeps its runs (each as one segment), says that its concurrency
    and CPU were not recorded (unknown, not guessed), resumes without sending what it answered, and
    records everything new."""
    from hybrid import store as store_module

    old = tmp_path / "old.sqlite"
    _old_store(old, version=version)
    with Store(old) as upgraded:
        before = upgraded.load("before")
        assert before.metrics.succeeded == 2 and before.metrics.total_tokens == 14
        assert before.metrics.concurrency is None and math.isnan(before.metrics.ideal_efficiency)
        assert math.isnan(before.metrics.cpu_s) and before.metrics.wall_s == 1.0
        assert "older version of the kit" in before.warnings[0]
        assert "ideal unknown" in before.summary()
        backend = FakeBackend(default=Answer(delay=1.0))
        async with Orchestrator(backend, store=upgraded) as orch:
            again = await orch.run(grid(3), name="before", resume=True)
            run = await orch.run(grid(2), name="after")
        assert [r.origin for r in again.results] == ["resumed", "resumed", "sent"] and len(backend.calls) == 3
        assert upgraded.runs().set_index("name").loc["before", "segments"] == 2
        assert [r.as_row() for r in upgraded.load("after").results] == [r.as_row() for r in run.results]
        assert run.results[0].network_s == pytest.approx(1.0)
    with sqlite3.connect(old) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == store_module.SCHEMA_VERSION


async def test_a_schema_5_store_gains_leases_and_budgets_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v5.sqlite"
    capped = [Query(q.name, q.prompt, max_tokens=8) for q in grid(3)]  # a budget needs max_tokens
    with Store(path) as store:
        async with Orchestrator(FakeBackend(default=Answer(delay=1.0)), store=store) as orch:
            first = await orch.run(capped[:2], name="before")
    with sqlite3.connect(path) as db:  # as schema 5 left it: no leases, no budgets, no stamp
        db.execute("DROP TABLE leases")
        db.execute("ALTER TABLE segments DROP COLUMN budget")
        db.execute("ALTER TABLE segments DROP COLUMN diagnostics")
        _drop_schema_9_columns(db)
        db.execute("PRAGMA application_id = 0")
        db.execute("PRAGMA user_version = 5")
    prices = {"fake": Price(prompt_per_mtok=1.0, completion_per_mtok=1.0)}
    with Store(path) as upgraded:
        assert upgraded.load("before").summary() == first.summary()
        backend = FakeBackend(default=Answer(delay=1.0))
        async with Orchestrator(backend, store=upgraded, prices=prices, budget_usd=1.0) as orch:
            resumed = await orch.run(capped, name="before", resume=True)
        assert len(backend.calls) == 1
        assert upgraded.load("before", segment=-1).metrics.budget == resumed.metrics.budget is not None
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


def _drop_schema_9_columns(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE segments DROP COLUMN flags")
    db.execute("ALTER TABLE results DROP COLUMN scheduled_s")
    _drop_schema_10_columns(db)


def _drop_schema_10_columns(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE segments DROP COLUMN prices")


async def test_a_schema_9_store_gains_price_sources_in_place(tmp_path: Path) -> None:
    """A store from before prices said where they came from loads its runs with none, then keeps them."""
    path = tmp_path / "v9.sqlite"
    with Store(path) as store:
        async with Orchestrator(FakeBackend(default=Answer(delay=1.0)), store=store, prices={"fake": PRICE}) as orch:
            first = await orch.run(grid(2), name="before")
    assert first.prices == {"fake": "your prices="}
    with sqlite3.connect(path) as db:
        _drop_schema_10_columns(db)
        db.execute("PRAGMA user_version = 9")
    with Store(path) as upgraded:
        before = upgraded.load("before")
        assert before.prices == {} and before.summary() == first.summary()
        async with Orchestrator(FakeBackend(default=Answer(delay=1.0)), store=upgraded, prices={"fake": PRICE}) as orch:
            await orch.run(grid(2), name="after")
        assert upgraded.load("after").prices == {"fake": "your prices="}
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_a_schema_8_store_gains_flags_and_scheduled_times_in_place(tmp_path: Path) -> None:
    """A store from before validity flags and replays loads its runs with no flags and no scheduled
    times, then keeps both for new runs."""
    path = tmp_path / "v8.sqlite"
    with Store(path) as store:
        async with Orchestrator(FakeBackend(default=Answer(delay=1.0)), store=store) as orch:
            first = await orch.run(grid(2), name="before")
    with sqlite3.connect(path) as db:
        _drop_schema_9_columns(db)
        db.execute("PRAGMA user_version = 8")
    with Store(path) as upgraded:
        before = upgraded.load("before")
        assert before.flags == () and before.summary() == first.summary()
        assert [r.scheduled_s for r in before.results] == [None, None]
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            db.execute("UPDATE segments SET flags = '[\"saturated\"]'")
            db.execute("UPDATE results SET scheduled_s = 0.5")
        again = upgraded.load("before")
        assert again.flags == ("saturated",) and {r.scheduled_s for r in again.results} == {0.5}


async def test_a_schema_7_store_gains_diagnostics_in_place(tmp_path: Path) -> None:
    """A store of the kit before diagnostics were kept loads its runs with none, and keeps them from then on."""
    path = tmp_path / "v7.sqlite"
    with Store(path) as store:
        async with Orchestrator(FakeBackend(default=Answer(delay=1.0)), store=store) as orch:
            first = await orch.run(grid(2), name="before")
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE segments DROP COLUMN diagnostics")
        _drop_schema_9_columns(db)
        db.execute("PRAGMA user_version = 7")
    with Store(path) as upgraded:
        assert upgraded.load("before").diagnostics == () and upgraded.load("before").summary() == first.summary()
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            db.execute("UPDATE segments SET diagnostics = '[\"the loop was blocked\"]'")
        assert upgraded.load("before").diagnostics == ("the loop was blocked",)
