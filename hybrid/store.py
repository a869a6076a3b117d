"""The run store: every result written to SQLite as it lands, the response cache, and run history.

Why ``sqlite3`` from the standard library, in WAL mode, with one writer thread: results must reach
the disk while the run goes on (a crashed or killed kernel loses at most what was in flight), but
the event loop must never wait on the disk.  ``record`` only puts the row on a queue; a single
writer thread takes everything queued, writes it in one transaction and commits, so under load
commits are batched and at low rates each row is committed within a millisecond.  WAL lets readers
(``runs()``, ``load()``, ``hybrid view``, another notebook) read beside the writer, and with
``synchronous=NORMAL`` a commit is in the OS's hands at once: a ``kill -9`` of the process loses
nothing committed (a power cut may lose the last commits, never corrupt the file).  ``aiosqlite``
was not needed: it also runs one thread per connection, but would put each write's round trip on
the loop.

Several processes may write to one store (two notebooks): SQLite serialises the writers and each
waits up to ``BUSY_TIMEOUT_S`` for the lock.  The schema is versioned with ``PRAGMA user_version``;
a file written by a newer kit, a corrupt file or a folder that cannot be written is a
:class:`~hybrid.errors.ConfigError` when the store is opened, before anything is sent.  If writing
fails mid-run (a full disk), the failure is logged, the run gets a warning, and the run completes
in memory: no answer is lost.

What is stored: runs (name, mode, settings without secrets, kit version, git commit, machine,
start/end, status) and every result field, the request's fingerprint, and the cache.  Never the
API key or request headers: nothing here ever sees them.
"""

from __future__ import annotations

import atexit
import functools
import logging
import math
import queue
import sqlite3
import statistics
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from hybrid.errors import ConfigError, error_of_kind
from hybrid.fingerprint import fingerprint
from hybrid.metrics import RunMetrics, percentile
from hybrid.provenance import git_commit, machine_info
from hybrid.query import Completion, Query, QueryResult, Usage
from hybrid.results import RunResult
from hybrid.segments import Segment, merge

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("hybrid")

#: 2: remote_jobs (batch ids); 3: events (what a live viewer follows); 4: latency parts;
#: 5: segments (a run and each resume, with what the run measured beyond its rows) and cached prompt tokens.
SCHEMA_VERSION = 5
BUSY_TIMEOUT_S = 30.0
#: How long the writer lets rows gather before one commit: bounds what a kill can lose beyond
#: the requests in flight (answers of the last few milliseconds), and keeps commits few under load.
COMMIT_INTERVAL_S = 0.005

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    mode TEXT NOT NULL,
    settings TEXT NOT NULL,
    kit_version TEXT,
    git_commit TEXT,
    machine TEXT,
    queries INTEGER NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS segments (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    segment INTEGER NOT NULL,
    mode TEXT NOT NULL,
    queries INTEGER NOT NULL,
    concurrency INTEGER,
    started_at REAL NOT NULL,
    ended_at REAL,
    status TEXT NOT NULL,
    wall_s REAL,
    cpu_s REAL,
    cancelled INTEGER,
    warnings TEXT,
    concurrency_trace TEXT,
    PRIMARY KEY (run_id, segment)
);
CREATE TABLE IF NOT EXISTS results (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    segment INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    name TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    query TEXT NOT NULL,
    text TEXT,
    error_kind TEXT,
    error_message TEXT,
    error_status INTEGER,
    retry_after_s REAL,
    model TEXT,
    finish_reason TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    tokens_estimated INTEGER NOT NULL,
    cached_prompt_tokens INTEGER NOT NULL,
    cost_usd REAL,
    latency_s REAL NOT NULL,
    queue_s REAL NOT NULL,
    ttft_s REAL,
    attempts INTEGER NOT NULL,
    started_s REAL NOT NULL,
    finished_s REAL NOT NULL,
    stage INTEGER,
    origin TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    retry_s REAL,
    client_s REAL,
    server_queue_s REAL,
    server_s REAL,
    network_s REAL,
    PRIMARY KEY (run_id, segment, idx)
);
CREATE TABLE IF NOT EXISTS remote_jobs (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    job_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    input_file_id TEXT,
    requests INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (run_id, job_id)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    kind TEXT NOT NULL,
    idx INTEGER,
    at REAL NOT NULL,
    tokens INTEGER
);
CREATE INDEX IF NOT EXISTS events_by_run ON events (run_id, seq);
CREATE TABLE IF NOT EXISTS cache (
    fingerprint TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    model TEXT NOT NULL,
    finish_reason TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    tokens_estimated INTEGER NOT NULL,
    created_at REAL NOT NULL
);
"""

#: A row's latency decomposition (schema 4 added these columns).
_LATENCY_PARTS = ("retry_s", "client_s", "server_queue_s", "server_s", "network_s")
_RESULT_COLUMNS = (
    "run_id, segment, idx, name, fingerprint, query, text, error_kind, error_message, error_status, retry_after_s, "
    "model, finish_reason, prompt_tokens, completion_tokens, tokens_estimated, cached_prompt_tokens, cost_usd, "
    "latency_s, queue_s, ttft_s, attempts, started_s, finished_s, stage, origin, recorded_at, "
    + ", ".join(_LATENCY_PARTS)
)
#: Schema 5 keys results by segment: a file written before gets each run as its one segment 0.
_TO_SEGMENTS = (
    "ALTER TABLE results RENAME TO results_v4;"
    + _SCHEMA
    + "INSERT INTO results ({columns}) SELECT {old} FROM results_v4; DROP TABLE results_v4;"
    "INSERT INTO segments (run_id, segment, mode, queries, started_at, ended_at, status) "
    "SELECT id, 0, mode, queries, started_at, ended_at, status FROM runs;"
).format(
    columns=_RESULT_COLUMNS,
    old=_RESULT_COLUMNS.replace("segment,", "0,", 1).replace("cached_prompt_tokens,", "0,", 1),
)
_QUERY_FIELDS = ("prompt", "system", "model", "max_tokens", "temperature", "stream", "json_mode", "sample")


@dataclass(frozen=True, slots=True)
class _Flush:
    """A marker on the writer's queue: set ``done`` once everything before it is committed."""

    done: threading.Event


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


class Store:
    """A SQLite run store at ``path`` (created if missing).  See the module docstring."""

    def __init__(self, path: str | Path) -> None:
        if not isinstance(path, str | Path) or not str(path).strip():
            raise ConfigError(f"Store(path) needs a file path such as 'runs.sqlite', got {path!r}.")
        self.path = Path(path).expanduser()
        folder = self.path.parent
        if not folder.is_dir():
            raise ConfigError(f"Store({str(path)!r}): the folder {str(folder)!r} does not exist; create it first.")
        try:
            self._reader = _connect(self.path)
            self._prepare_schema()
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"Store({str(path)!r}) cannot be used: {exc}. If it is not a hybrid run store (or is damaged), "
                "pass another path; to inspect it, open it with the sqlite3 shell."
            ) from None
        self._read_lock = threading.Lock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.failure: BaseException | None = None
        self._writer = threading.Thread(target=self._write_forever, name="hybrid-store-writer", daemon=True)
        self._writer.start()
        # A script that ends without closing the store must still have every row on disk.
        atexit.register(self.close)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    def _prepare_schema(self) -> None:
        version = self._reader.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"Store({str(self.path)!r}) was written by a newer version of the kit (schema {version}, this one "
                f"reads {SCHEMA_VERSION}); upgrade hybrid-llm-kit, or use another file."
            )
        if version < SCHEMA_VERSION:  # one transaction creates a new file or upgrades an old one in place
            if version == 0:
                script = _SCHEMA
            else:  # schema 4 added the latency decomposition's columns, schema 5 the segments
                added = "".join(f"ALTER TABLE results ADD COLUMN {c} REAL;" for c in _LATENCY_PARTS)
                script = (added if version < 4 else "") + _TO_SEGMENTS
            try:
                self._reader.executescript(f"BEGIN;{script}PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
            except sqlite3.OperationalError as exc:
                raise ConfigError(
                    f"Store({str(self.path)!r}) cannot be written ({exc}): choose a folder you can write to."
                ) from None

    # -- writing (off the event loop) ---------------------------------------------------------
    def _write_forever(self) -> None:
        connection: sqlite3.Connection | None = None
        while True:
            batch = [self._queue.get()]
            time.sleep(COMMIT_INTERVAL_S)  # let a burst gather: one commit for many rows
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                connection = connection or _connect(self.path)
                self._write(connection, [item for item in batch if isinstance(item, tuple)])
            except (sqlite3.Error, OSError) as exc:
                if self.failure is None:
                    log.error("hybrid: writing to the run store %s failed: %s; runs continue in memory", self, exc)
                self.failure = exc
            for item in batch:
                if isinstance(item, _Flush):
                    item.done.set()
            if None in batch:
                if connection is not None:
                    connection.close()
                return

    @staticmethod
    def _write(connection: sqlite3.Connection, statements: list[tuple[str, Any]]) -> None:
        """Write ``statements`` in one transaction; consecutive rows of one statement go in one
        ``executemany``.  Results are queued as objects and turned into rows here, off the loop."""
        if not statements:
            return
        connection.execute("BEGIN IMMEDIATE")
        results: list[tuple[Any, ...]] = []
        events: list[tuple[Any, ...]] = []

        def write_pending() -> None:
            connection.executemany(_INSERT_RESULT, results)
            connection.executemany(_INSERT_EVENT, events)
            results.clear()
            events.clear()

        try:
            for sql, values in statements:
                if sql is _INSERT_RESULT:
                    results.append(_result_row(*values))
                    run_id, _, result, _, recorded_at = values
                    events.append((run_id, "query_completed", result.index, recorded_at, None))
                elif sql is _INSERT_EVENT:
                    events.append(values)
                else:  # anything else keeps its place after what came before it
                    write_pending()
                    connection.execute(sql, values)
            write_pending()
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def _enqueue(self, sql: str, values: tuple[Any, ...]) -> None:
        self._queue.put((sql, values))

    def flush(self, timeout: float | None = 60.0) -> None:
        """Wait until everything recorded so far is committed."""
        if not self._writer.is_alive():
            return
        marker = _Flush(threading.Event())
        self._queue.put(marker)
        marker.done.wait(timeout)

    def close(self) -> None:
        """Commit what is queued, stop the writer and close the file."""
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join()
        with self._read_lock:
            self._reader.close()
        atexit.unregister(self.close)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs ---------------------------------------------------------------------------------
    def _read(self, sql: str, values: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._read_lock:
            return self._reader.execute(sql, tuple(values)).fetchall()

    def refuse_taken(self, name: str) -> None:
        """Raise :class:`ConfigError` if a run called ``name`` exists: a name is never silently reused."""
        if self._read("SELECT 1 FROM runs WHERE name = ?", (name,)):
            raise ConfigError(
                f"A run named {name!r} is already in {self}. Pass resume=True to continue it (only what is not "
                "answered ok yet is sent), or choose another name."
            )

    def begin_segment(
        self, name: str, *, mode: str, settings: dict[str, Any], queries: int, concurrency: int, resume: bool
    ) -> tuple[int, int]:
        """Start a segment of run ``name`` and return (run id, segment number): segment 0 of a new
        run, or with ``resume`` the next segment of the existing one (the run is marked running
        again).  Written here, directly, so no queued write has to be waited for."""
        if not resume:
            self.refuse_taken(name)
        now = time.time()
        with self._read_lock:
            found = self._reader.execute("SELECT id FROM runs WHERE name = ?", (name,)).fetchall()
            if found:
                run_id = int(found[0][0])
                self._reader.execute(
                    "UPDATE runs SET mode = ?, settings = ?, queries = ?, status = 'running', ended_at = NULL "
                    "WHERE id = ?",
                    (mode, orjson.dumps(settings).decode(), queries, run_id),
                )
            else:
                cursor = self._reader.execute(
                    "INSERT INTO runs (name, mode, settings, kit_version, git_commit, machine, queries, started_at, "
                    "status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running')",
                    (
                        name,
                        mode,
                        orjson.dumps(settings).decode(),
                        _kit_version(),
                        git_commit(),
                        orjson.dumps(machine_info()).decode(),
                        queries,
                        now,
                    ),
                )
                run_id = int(cursor.lastrowid or 0)
            segment = self._reader.execute(
                "SELECT COALESCE(MAX(segment) + 1, 0) FROM segments WHERE run_id = ?", (run_id,)
            ).fetchone()[0]
            self._reader.execute(
                "INSERT INTO segments (run_id, segment, mode, queries, concurrency, started_at, status) "
                "VALUES (?, ?, ?, ?, ?, ?, 'running')",
                (run_id, segment, mode, queries, concurrency, now),
            )
            return run_id, int(segment)

    def record(self, run_id: int, segment: int, result: QueryResult, default_model: str) -> None:
        """Queue ``result`` for writing: it returns at once, and the writer thread computes the
        request's fingerprint, builds the row and commits it, so the loop pays only for the queue."""
        self._queue.put((_INSERT_RESULT, (run_id, segment, result, default_model, time.time())))

    def record_start(self, run_id: int, index: int) -> None:
        """Queue the event that query ``index`` of run ``run_id`` sent its first request (for a viewer)."""
        self._enqueue(_INSERT_EVENT, (run_id, "query_started", index, time.time(), None))

    def record_progress(self, run_id: int, index: int, tokens: int) -> None:
        """Queue the event that streamed query ``index`` has received ``tokens`` tokens so far."""
        self._enqueue(_INSERT_EVENT, (run_id, "query_progress", index, time.time(), tokens))

    def end_segment(self, run_id: int, segment: int, status: str, run: RunResult) -> None:
        """Queue a segment's end: ``finished``, ``cancelled`` or ``failed``, and what the run measured
        beyond its rows (wall, CPU, warnings, the adaptive limit's trace), so that loading it
        computes the same metrics with the same code (``RunMetrics.compute``)."""
        now = time.time()
        m = run.metrics
        self._enqueue(
            "UPDATE segments SET status = ?, ended_at = ?, wall_s = ?, cpu_s = ?, cancelled = ?, warnings = ?, "
            "concurrency_trace = ? WHERE run_id = ? AND segment = ?",
            (
                status,
                now,
                m.wall_s,
                m.cpu_s,
                int(run.cancelled),
                orjson.dumps(run.warnings).decode(),
                orjson.dumps(m.concurrency_trace).decode(),
                run_id,
                segment,
            ),
        )
        self._enqueue("UPDATE runs SET status = ?, ended_at = ? WHERE id = ?", (status, now, run_id))
        self._enqueue(_INSERT_EVENT, (run_id, "final_result", None, now, None))

    def events(self, name: str, *, after: int = 0) -> list[tuple[int, str, int | None, float, int | None]]:
        """Run ``name``'s events after sequence number ``after``: (seq, kind, query index, wall time,
        tokens so far), oldest first.  Kinds: ``query_started``, ``query_progress`` (streamed queries),
        ``query_completed``, ``final_result`` (the run ended; a resumed run starts again after it)."""
        rows = self._read(
            "SELECT e.seq, e.kind, e.idx, e.at, e.tokens FROM events e JOIN runs ON runs.id = e.run_id "
            "WHERE runs.name = ? AND e.seq > ? ORDER BY e.seq",
            (name, after),
        )
        return [(int(seq), str(kind), idx, float(at), tokens) for seq, kind, idx, at, tokens in rows]

    def add_remote_job(self, run_id: int, job_id: str, *, kind: str, input_file_id: str | None, requests: int) -> None:
        """Remember a job started at a provider for run ``run_id`` (a batch id), committed before this
        returns: a kernel that dies a moment later can still find, and reattach to, what it paid for."""
        with self._read_lock:
            self._reader.execute(
                "INSERT OR REPLACE INTO remote_jobs (run_id, job_id, kind, input_file_id, requests, status, "
                "created_at) VALUES (?, ?, ?, ?, ?, 'open', ?)",
                (run_id, job_id, kind, input_file_id, requests, time.time()),
            )

    def end_remote_job(self, run_id: int, job_id: str, status: str) -> None:
        """Mark a remote job's results collected (``status`` is its final state at the provider)."""
        with self._read_lock:
            self._reader.execute(
                "UPDATE remote_jobs SET status = ? WHERE run_id = ? AND job_id = ?", (status, run_id, job_id)
            )

    def open_remote_jobs(self, run_id: int, kind: str) -> list[str]:
        """Ids of run ``run_id``'s remote jobs whose results were not collected yet, oldest first."""
        rows = self._read(
            "SELECT job_id FROM remote_jobs WHERE run_id = ? AND kind = ? AND status = 'open' ORDER BY created_at",
            (run_id, kind),
        )
        return [str(row[0]) for row in rows]

    def remote_jobs(self, name: str) -> pd.DataFrame:
        """Run ``name``'s remote jobs (batch ids): id, kind, input file, requests, status, created."""
        import pandas as pd

        rows = self._read(
            "SELECT j.job_id, j.kind, j.input_file_id, j.requests, j.status, j.created_at FROM remote_jobs j "
            "JOIN runs ON runs.id = j.run_id WHERE runs.name = ? ORDER BY j.created_at",
            (name,),
        )
        columns = ["job_id", "kind", "input_file_id", "requests", "status", "created_at"]
        return pd.DataFrame(rows, columns=columns)

    def brief_rows(self, name: str, indexes: Sequence[int]) -> dict[int, dict[str, Any]]:
        """What a viewer shows of some rows of run ``name`` (committed ones only, without waiting for
        the writer): name, ok, error kind, the first 300 characters of text, latency, tokens, cost."""
        found: dict[int, dict[str, Any]] = {}
        for start in range(0, len(indexes), 500):
            chunk = list(indexes[start : start + 500])
            rows = self._read(
                "SELECT r.idx, r.name, r.error_kind, substr(r.text, 1, 300), r.latency_s, "
                "r.prompt_tokens + r.completion_tokens, r.cost_usd, r.origin FROM results r "
                f"JOIN runs ON runs.id = r.run_id WHERE runs.name = ? AND {_IN_LATEST_SEGMENT} "
                f"AND r.idx IN ({', '.join('?' * len(chunk))})",
                (name, *chunk),
            )
            keys = ("index", "name", "error_kind", "text", "latency_s", "total_tokens", "cost_usd", "origin")
            for row in rows:
                brief = dict(zip(keys, row, strict=True))
                brief["ok"] = brief["error_kind"] is None
                found[int(row[0])] = brief
        return found

    def answered(self, name: str) -> dict[tuple[str, str], QueryResult]:
        """The results answered ok in run ``name``, by (query name, fingerprint): what resume skips.
        Of a query answered in several segments, the latest row that was not itself resumed wins."""
        self.flush()
        rows = self._result_rows(
            "SELECT r.* FROM results r JOIN runs ON runs.id = r.run_id WHERE runs.name = ? AND r.error_kind IS NULL "
            "ORDER BY r.origin != 'resumed', r.segment",
            (name,),
        )
        return {(row["name"], row["fingerprint"]): _result_from(row) for row in rows}

    def typical_answers(self) -> dict[str, tuple[float, float, float, float]]:
        """Per model, from its answers sent ok in past runs: the median completion tokens, the
        median latency and the 5th and 95th percentile latencies.  What
        :func:`hybrid.estimate.estimate` assumes when the backend has no model of its own."""
        self.flush()
        rows = self._read(
            "SELECT model, completion_tokens, latency_s FROM results "
            "WHERE origin = 'sent' AND error_kind IS NULL AND model IS NOT NULL"
        )
        by_model: dict[str, list[tuple[int, float]]] = {}
        for model, tokens, latency in rows:
            by_model.setdefault(model, []).append((tokens, latency))
        typical = {}
        for model, seen in by_model.items():
            latencies = sorted(x for _, x in seen)
            typical[model] = (
                statistics.median(t for t, _ in seen),
                statistics.median(latencies),
                percentile(latencies, 5, is_sorted=True),
                percentile(latencies, 95, is_sorted=True),
            )
        return typical

    # -- the cache ----------------------------------------------------------------------------
    def cached(self, fingerprint: str, *, max_age_s: float | None = None) -> Completion | None:
        """The cached answer for ``fingerprint``, if any (and younger than ``max_age_s``)."""
        rows = self._read(
            "SELECT text, model, finish_reason, prompt_tokens, completion_tokens, tokens_estimated, created_at "
            "FROM cache WHERE fingerprint = ?",
            (fingerprint,),
        )
        if not rows:
            return None
        text, model, finish, prompt, completion, estimated, created = rows[0]
        if max_age_s is not None and time.time() - created > max_age_s:
            return None
        usage = Usage(prompt_tokens=prompt, completion_tokens=completion, estimated=bool(estimated))
        return Completion(text=text, usage=usage, model=model, finish_reason=finish, cached=True)

    def cached_many(self, fingerprints: Iterable[str], *, max_age_s: float | None = None) -> dict[str, Completion]:
        """The cached answers among ``fingerprints``, in a few queries (a run's look-up, done once)."""
        wanted = list(dict.fromkeys(fingerprints))
        found: dict[str, Completion] = {}
        oldest = -math.inf if max_age_s is None else time.time() - max_age_s
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = self._read(
                "SELECT fingerprint, text, model, finish_reason, prompt_tokens, completion_tokens, tokens_estimated "
                f"FROM cache WHERE created_at >= ? AND fingerprint IN ({', '.join('?' * len(chunk))})",
                (oldest, *chunk),
            )
            for key, text, model, finish, prompt, completion, estimated in rows:
                usage = Usage(prompt_tokens=prompt, completion_tokens=completion, estimated=bool(estimated))
                found[key] = Completion(text=text, usage=usage, model=model, finish_reason=finish, cached=True)
        return found

    def cache(self, fingerprint: str, completion: Completion) -> None:
        """Queue ``completion`` as the cached answer for ``fingerprint`` (errors are never cached)."""
        usage = completion.usage
        self._enqueue(
            "INSERT OR REPLACE INTO cache VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                fingerprint,
                completion.text,
                completion.model,
                completion.finish_reason,
                usage.prompt_tokens,
                usage.completion_tokens,
                int(usage.estimated),
                time.time(),
            ),
        )

    # -- history ------------------------------------------------------------------------------
    def runs(self) -> pd.DataFrame:
        """One row per saved run: name, mode, status, when, segments (the first run and each
        resume), queries, ok/failed and tokens (each query in its latest state), wall (the
        segments' walls summed), cost (every paid attempt of every segment)."""
        import pandas as pd

        self.flush()
        rows = self._read(
            "SELECT runs.name, runs.mode, runs.status, runs.started_at, runs.ended_at, "
            "(SELECT COUNT(*) FROM segments s WHERE s.run_id = runs.id), runs.queries, "
            "SUM(r.error_kind IS NULL), SUM(r.error_kind IS NOT NULL), "
            "(SELECT SUM(COALESCE(s.wall_s, (SELECT MAX(x.finished_s) FROM results x "
            "  WHERE x.run_id = s.run_id AND x.segment = s.segment), 0)) FROM segments s WHERE s.run_id = runs.id), "
            "SUM(r.prompt_tokens + r.completion_tokens), "
            "(SELECT SUM(x.cost_usd) FROM results x WHERE x.run_id = runs.id AND x.origin IN ('sent', 'batch')), "
            "runs.kit_version, runs.git_commit "
            f"FROM runs LEFT JOIN results r ON r.run_id = runs.id AND r.idx < runs.queries AND {_IN_LATEST_SEGMENT} "
            "GROUP BY runs.id ORDER BY runs.started_at"
        )
        columns = [
            "name",
            "mode",
            "status",
            "started_at",
            "ended_at",
            "segments",
            "queries",
            "ok",
            "failed",
            "wall_s",
            "total_tokens",
            "cost_usd",
            "kit_version",
            "git_commit",
        ]
        frame = pd.DataFrame(rows, columns=columns)
        for column in ("started_at", "ended_at"):
            frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
        return frame

    def load(self, name: str, *, segment: int | None = None) -> RunResult:
        """Run ``name`` as it was saved: a :class:`RunResult` with ``to_frame()``, plots and all,
        whose metrics are computed from the stored rows and run fields by the same code as the live
        run's, so they are equal.  ``segment=k`` gives one segment as it ran (0 is the first run,
        1 its first resume, -1 the latest); without it a resumed run's segments are merged
        (:func:`hybrid.segments.merge`).  Queries that never finished (a killed run) come back as
        ``cancelled`` rows."""
        self.flush()
        found = self._read("SELECT id FROM runs WHERE name = ?", (name,))
        if not found:
            known = [row[0] for row in self._read("SELECT name FROM runs ORDER BY started_at")]
            raise ConfigError(f"No run named {name!r} in {self}; saved runs: {known}.")
        infos = self._result_rows("SELECT * FROM segments WHERE run_id = ? ORDER BY segment", (found[0][0],))
        if segment is None:
            return merge([self._segment(name, info) for info in infos])
        if not isinstance(segment, int) or isinstance(segment, bool) or not -len(infos) <= segment < len(infos):
            raise ConfigError(
                f"Run {name!r} has {len(infos)} segment(s): pass segment=0 (the first run) to "
                f"{len(infos) - 1} (the latest resume), or -1 for the latest; got {segment!r}."
            )
        return self._segment(name, infos[segment])[0]

    def _segment(self, name: str, info: dict[str, Any]) -> Segment:
        """One stored segment as it ran, and each row's fingerprint (for :func:`merge`)."""
        count = info["queries"]
        rows = self._result_rows(
            "SELECT * FROM results WHERE run_id = ? AND segment = ? AND idx < ? ORDER BY idx",
            (info["run_id"], info["segment"], count),
        )
        by_index = {row["idx"]: row for row in rows}
        results: list[QueryResult] = []
        for i in range(count):
            row = by_index.get(i)
            results.append(
                _result_from(row)
                if row is not None
                else QueryResult(
                    query=Query(f"#{i}", "(never finished)"),
                    index=i,
                    error=error_of_kind("cancelled", f"Run {name!r} ended before this query finished."),
                )
            )
        ended = info["wall_s"] is not None
        if ended:
            wall, warnings = info["wall_s"], tuple(orjson.loads(info["warnings"]))
            cancelled = bool(info["cancelled"])
        else:  # a killed run, or a file from a kit that kept only the rows
            wall = max((r.finished_s for r in results), default=0.0)
            cancelled = info["status"] != "finished"
            warnings = (
                f"Run {name!r} never recorded its end (its process was killed, or it is still running): its wall is "
                "up to its last result and its CPU time is unknown."
                if info["ended_at"] is None
                else f"Run {name!r} was saved by an older version of the kit, which did not keep its concurrency, CPU "
                "time or warnings: its ideal efficiency and CPU per call are unknown.",
            )
            if len(by_index) < count:
                warnings += (
                    f"{count - len(by_index)} of {count} queries never finished (the run was {info['status']}).",
                )
        trace = [(at, limit) for at, limit in orjson.loads(info["concurrency_trace"] or "[]")]
        metrics = RunMetrics.compute(
            results,
            wall_s=wall,
            cpu_s=math.nan if info["cpu_s"] is None else info["cpu_s"],  # SQLite keeps NaN as NULL
            concurrency=info["concurrency"],
            concurrency_trace=trace,
        )
        run = RunResult(
            results=tuple(results), metrics=metrics, mode=info["mode"], warnings=warnings, cancelled=cancelled
        )
        return run, [None if (row := by_index.get(i)) is None else row["fingerprint"] for i in range(count)]

    def compare(self, a: str, b: str) -> pd.DataFrame:
        """Per query name, runs ``a`` and ``b`` side by side: text changed, tokens, latency, cost, error."""
        import pandas as pd

        left = self.load(a).to_frame().set_index("name")
        right = self.load(b).to_frame().set_index("name")
        columns = ["ok", "error_kind", "total_tokens", "latency_s", "cost_usd", "text"]
        frame = left[columns].add_suffix(f"_{a}").join(right[columns].add_suffix(f"_{b}"), how="outer")
        frame.insert(0, "text_changed", frame[f"text_{a}"].fillna("") != frame[f"text_{b}"].fillna(""))
        frame.insert(1, "tokens_delta", frame[f"total_tokens_{b}"] - frame[f"total_tokens_{a}"])
        frame.insert(2, "latency_delta_s", frame[f"latency_s_{b}"] - frame[f"latency_s_{a}"])
        return pd.DataFrame(frame)

    def export(self, name: str, path: str | Path) -> Path:
        """Write run ``name``'s rows to ``path``: ``.parquet``, ``.csv`` or ``.jsonl`` by its suffix."""
        target = Path(path)
        frame = self.load(name).to_frame()
        if target.suffix == ".parquet":
            frame.to_parquet(target)
        elif target.suffix == ".csv":
            frame.to_csv(target, index=False)
        elif target.suffix == ".jsonl":
            frame.to_json(target, orient="records", lines=True)
        else:
            raise ConfigError(f"Export to {str(path)!r}: use a .parquet, .csv or .jsonl file name.")
        return target

    def _result_rows(self, sql: str, values: Iterable[Any]) -> list[dict[str, Any]]:
        with self._read_lock:
            cursor = self._reader.execute(sql, tuple(values))
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


#: A condition on ``results r``: the row belongs to its run's latest segment (every query once).
_IN_LATEST_SEGMENT = "r.segment = (SELECT MAX(s.segment) FROM segments s WHERE s.run_id = r.run_id)"
_PLACEHOLDERS = ", ".join("?" * len(_RESULT_COLUMNS.split(",")))
_INSERT_RESULT = f"INSERT OR REPLACE INTO results ({_RESULT_COLUMNS}) VALUES ({_PLACEHOLDERS})"
_INSERT_EVENT = "INSERT INTO events (run_id, kind, idx, at, tokens) VALUES (?, ?, ?, ?, ?)"


def _result_row(
    run_id: int, segment: int, result: QueryResult, default_model: str, recorded_at: float
) -> tuple[Any, ...]:
    error = result.error
    return (
        run_id,
        segment,
        result.index,
        result.query.name,
        fingerprint(result.query, default_model),
        _query_json(result.query),
        result.text,
        None if error is None else error.kind,
        None if error is None else error.message,
        None if error is None else error.status,
        getattr(error, "retry_after_s", None),
        result.model,
        result.finish_reason,
        result.usage.prompt_tokens,
        result.usage.completion_tokens,
        int(result.usage.estimated),
        result.usage.cached_prompt_tokens,
        result.cost_usd,
        result.latency_s,
        result.queue_s,
        result.ttft_s,
        result.attempts,
        result.started_s,
        result.finished_s,
        result.stage,
        result.origin,
        recorded_at,
        *(getattr(result, part) for part in _LATENCY_PARTS),
    )


@functools.lru_cache(maxsize=65536)
def _query_json(query: Query) -> str:
    """The query's fields as JSON (memoised: a grid re-run records the same queries again)."""
    fields: dict[str, Any] = {f: getattr(query, f) for f in _QUERY_FIELDS}
    fields["metadata"] = None if query.metadata is None else dict(query.metadata)
    return orjson.dumps(fields, default=str).decode()


def _kit_version() -> str | None:
    try:
        return metadata.version("hybrid-llm-kit")
    except metadata.PackageNotFoundError:
        return None


def _result_from(row: dict[str, Any]) -> QueryResult:
    """A stored row back as a :class:`QueryResult`."""
    query = Query(row["name"], **orjson.loads(row["query"]))
    error = None
    if row["error_kind"] is not None:
        error = error_of_kind(row["error_kind"], row["error_message"] or "", status=row["error_status"])
        if row["retry_after_s"] is not None:
            error.retry_after_s = row["retry_after_s"]  # type: ignore[attr-defined]
    usage = Usage(
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        estimated=bool(row["tokens_estimated"]),
        cached_prompt_tokens=row["cached_prompt_tokens"],
    )
    return QueryResult(
        query=query,
        index=row["idx"],
        text=row["text"],
        error=error,
        usage=usage,
        model=row["model"],
        finish_reason=row["finish_reason"],
        latency_s=row["latency_s"],
        queue_s=row["queue_s"],
        ttft_s=row["ttft_s"],
        attempts=row["attempts"],
        started_s=row["started_s"],
        finished_s=row["finished_s"],
        stage=row["stage"],
        cost_usd=row["cost_usd"],
        origin=row["origin"],
        **{part: row[part] for part in _LATENCY_PARTS},
    )
