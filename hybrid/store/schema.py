"""The run store's file format: its tables, the schema version and its upgrades, and rows in and out.

The schema version is SQLite's ``user_version``.  A new version adds its upgrade to
:func:`prepare`, which runs in one transaction: a file is either upgraded whole or left as it was.
"""

from __future__ import annotations

import functools
import sqlite3
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

from hybrid.errors import ConfigError, error_of_kind
from hybrid.fingerprint import fingerprint
from hybrid.query import Query, QueryResult, Usage

#: 2: remote_jobs (batch ids); 3: events (what a live viewer follows); 4: latency parts;
#: 5: segments (a run and each resume, with what the run measured beyond its rows) and cached prompt tokens;
#: 6: leases (which process is writing a run) and each segment's budget as it ended; 7: scores (what
#: scorers said of a run's answers, so a report reads the same verdicts the notebook saw); 8: each
#: segment's diagnostics (real-time notes such as a blocked event loop); 9: each segment's validity flags
#: and each row's scheduled send time (an open-loop replay); 10: where each segment's prices came from.
SCHEMA_VERSION = 10
#: Stamped in every store (``PRAGMA application_id``, "HYBR"): a file without it is not the kit's.
APPLICATION_ID = 0x48594252
#: The tables every store of the kit has had since its first schema.
_OWN_TABLES = {"runs", "results"}

SCHEMA = """
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
    budget TEXT,
    diagnostics TEXT,
    flags TEXT,
    prices TEXT,
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
    scheduled_s REAL,
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
CREATE TABLE IF NOT EXISTS leases (
    run_id INTEGER PRIMARY KEY REFERENCES runs(id),
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    heartbeat_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS scores (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    idx INTEGER NOT NULL,
    scorer TEXT NOT NULL,
    passed INTEGER,
    value REAL,
    reason TEXT NOT NULL,
    PRIMARY KEY (run_id, idx, scorer)
);
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
LATENCY_PARTS = ("retry_s", "client_s", "server_queue_s", "server_s", "network_s")
RESULT_COLUMNS = (
    "run_id, segment, idx, name, fingerprint, query, text, error_kind, error_message, error_status, retry_after_s, "
    "model, finish_reason, prompt_tokens, completion_tokens, tokens_estimated, cached_prompt_tokens, cost_usd, "
    "latency_s, queue_s, ttft_s, attempts, started_s, finished_s, stage, origin, recorded_at, "
    + ", ".join(LATENCY_PARTS)
    + ", scheduled_s"
)
#: Schema 5 keys results by segment: a file written before gets each run as its one segment 0.
TO_SEGMENTS = (
    "ALTER TABLE results RENAME TO results_v4;"
    + SCHEMA
    + "INSERT INTO results ({columns}) SELECT {old} FROM results_v4; DROP TABLE results_v4;"
    "INSERT INTO segments (run_id, segment, mode, queries, started_at, ended_at, status) "
    "SELECT id, 0, mode, queries, started_at, ended_at, status FROM runs;"
).format(
    columns=RESULT_COLUMNS,
    old=RESULT_COLUMNS.replace("segment,", "0,", 1)
    .replace("cached_prompt_tokens,", "0,", 1)
    .replace("scheduled_s", "NULL"),
)
_QUERY_FIELDS = ("prompt", "system", "model", "max_tokens", "temperature", "stream", "json_mode", "sample")
#: How long a writer waits for another process's write lock (two notebooks on one store).
BUSY_TIMEOUT_S = 30.0


def connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


def check_owned(path: Path) -> None:
    """Refuse, before anything touches it, a file that is not a run store of the kit, or is damaged.

    Ours: a file stamped with :data:`APPLICATION_ID`; a store of an earlier kit (no stamp, but the
    kit's own tables and a schema version it wrote), which :func:`prepare` adopts and stamps; or an
    empty file.  Anything else (another program's SQLite file, even one with a ``runs`` table) is
    left exactly as it was: opening it for writing would switch it to WAL and add tables.  A store
    whose pages are damaged is found here (``PRAGMA quick_check``, which reads the whole file once),
    not halfway through a run."""
    if str(path) == ":memory:" or not path.exists() or path.stat().st_size == 0:
        return
    try:
        probe = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"Store({str(path)!r}) cannot be opened: {exc}.") from None
    try:
        stamp = probe.execute("PRAGMA application_id").fetchone()[0]
        version = probe.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in probe.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        earlier_kit = stamp == 0 and 1 <= version <= SCHEMA_VERSION and _OWN_TABLES <= tables
        if stamp != APPLICATION_ID and not earlier_kit and (tables or version or stamp):
            raise ConfigError(
                f"Store({str(path)!r}) is a SQLite file that the kit did not create (its tables: "
                f"{', '.join(sorted(tables)) or 'none'}); it was left untouched. Pass a new path for the run store."
            )
        problems = [row[0] for row in probe.execute("PRAGMA quick_check")]
    except sqlite3.DatabaseError as exc:
        raise ConfigError(
            f"Store({str(path)!r}) cannot be used: {exc}. If it is not a hybrid run store (or is damaged), "
            "pass another path; to inspect it, open it with the sqlite3 shell."
        ) from None
    finally:
        probe.close()
    if problems != ["ok"]:
        raise ConfigError(
            f"Store({str(path)!r}) is damaged ({'; '.join(problems[:3])}). Its runs may be partly readable with "
            "the sqlite3 shell (.recover); start a new store file for new runs."
        )


#: Columns later schemas added to ``segments`` (6: budget, 8: diagnostics, 9: flags, 10: prices), and
#: where in that list a store of each schema since 5 starts missing them.
SEGMENT_COLUMNS = ("budget", "diagnostics", "flags", "prices")
SEGMENT_COLUMNS_SINCE = {5: 0, 6: 1, 7: 1, 8: 2, 9: 3}


def prepare(connection: sqlite3.Connection, path: Path) -> None:
    """Create the tables of a new file, or upgrade an older file in place; refuse a newer one."""
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"Store({str(path)!r}) was written by a newer version of the kit (schema {version}, this one "
            f"reads {SCHEMA_VERSION}); upgrade hybrid-llm-kit, or use another file."
        )
    stamp = f"PRAGMA application_id = {APPLICATION_ID};"
    if version == SCHEMA_VERSION:
        if connection.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
            connection.execute(stamp)  # a store of the kit from before the stamp: adopted
        return
    if version == 0:
        script = SCHEMA
    elif version in SEGMENT_COLUMNS_SINCE:  # 6: a table (leases); 7: a table (scores); the columns below
        columns = SEGMENT_COLUMNS[SEGMENT_COLUMNS_SINCE[version] :]
        script = (
            SCHEMA
            + "".join(f"ALTER TABLE segments ADD COLUMN {column} TEXT;" for column in columns)
            + ("ALTER TABLE results ADD COLUMN scheduled_s REAL;" if version < 9 else "")
        )
    else:  # schema 4 added the latency decomposition's columns, schema 5 the segments
        added = "".join(f"ALTER TABLE results ADD COLUMN {c} REAL;" for c in LATENCY_PARTS)
        script = (added if version < 4 else "") + TO_SEGMENTS
    try:
        connection.executescript(f"BEGIN;{script}{stamp}PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
    except sqlite3.OperationalError as exc:
        raise ConfigError(
            f"Store({str(path)!r}) cannot be written ({exc}): choose a folder you can write to."
        ) from None


#: A condition on ``results r``: the row belongs to its run's latest segment (every query once).
IN_LATEST_SEGMENT = "r.segment = (SELECT MAX(s.segment) FROM segments s WHERE s.run_id = r.run_id)"
_PLACEHOLDERS = ", ".join("?" * len(RESULT_COLUMNS.split(",")))
INSERT_RESULT = f"INSERT OR REPLACE INTO results ({RESULT_COLUMNS}) VALUES ({_PLACEHOLDERS})"
INSERT_EVENT = "INSERT INTO events (run_id, kind, idx, at, tokens) VALUES (?, ?, ?, ?, ?)"


def result_row(
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
        *(getattr(result, part) for part in LATENCY_PARTS),
        result.scheduled_s,
    )


@functools.lru_cache(maxsize=65536)
def _query_json(query: Query) -> str:
    """The query's fields as JSON (memoised: a grid re-run records the same queries again)."""
    fields: dict[str, Any] = {f: getattr(query, f) for f in _QUERY_FIELDS}
    fields["metadata"] = None if query.metadata is None else dict(query.metadata)
    if query.history:  # only a conversation's turn has one: other rows stay as they were
        fields["history"] = query.history
    return orjson.dumps(fields, default=str).decode()


def kit_version() -> str | None:
    try:
        return metadata.version("hybrid-llm-kit")
    except metadata.PackageNotFoundError:
        return None


def result_from(row: dict[str, Any]) -> QueryResult:
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
        scheduled_s=row["scheduled_s"],
        **{part: row[part] for part in LATENCY_PARTS},
    )
