"""A store's runs as they happen: segments begun and ended, rows and events queued, what resume
skips, and what a viewer reads of a run in progress."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
import psutil

from hybrid.errors import ConfigError
from hybrid.metrics import percentile
from hybrid.provenance import git_commit, machine_info
from hybrid.query import QueryResult
from hybrid.store.base import HOST, LEASE_EXPIRY_S, StoreFile, holder
from hybrid.store.schema import IN_LATEST_SEGMENT, INSERT_EVENT, INSERT_RESULT, kit_version, result_from

if TYPE_CHECKING:
    from hybrid.results import RunResult


#: A row's latency, or for a row its segment resumed, the latency of the latest row that answered it.
_ANSWERED_LATENCY = (
    "CASE WHEN r.origin = 'resumed' THEN COALESCE((SELECT o.latency_s FROM results o WHERE o.run_id = r.run_id "
    "AND o.name = r.name AND o.fingerprint = r.fingerprint AND o.origin != 'resumed' AND o.error_kind IS NULL "
    "ORDER BY o.segment DESC LIMIT 1), r.latency_s) ELSE r.latency_s END"
)


#: How much of a row's text a viewer shows, in characters.
SHOWN_CHARS = 300
#: The bytes that hold them (UTF-8 is at most 4 bytes a character), read as a blob: SQLite's text
#: functions stop at a NUL byte, which an answer may hold.
_SHOWN_TEXT = f"substr(CAST(r.text AS BLOB), 1, {4 * SHOWN_CHARS})"


def _shown(raw: bytes | None) -> str | None:
    """The text a viewer shows of a row: its first characters, a NUL as ␀ (a browser would drop it)."""
    if raw is None:
        return None
    return raw.decode("utf-8", "ignore")[:SHOWN_CHARS].replace("\x00", "\u2400")


class RunLog(StoreFile):
    """Writing runs and reading them back while they go (part of :class:`~hybrid.store.Store`)."""

    def begin_segment(
        self, name: str, *, mode: str, settings: dict[str, Any], queries: int, concurrency: int | None, resume: bool
    ) -> tuple[int, int]:
        """Start a segment of run ``name`` and return (run id, segment number): segment 0 of a new
        run, or with ``resume`` the next segment of the existing one (the run is marked running
        again), and take the run's lease.  One transaction that holds the file's write lock from
        the first read, so two processes starting one name, or resuming one run, cannot both go:
        the second gets a :class:`ConfigError` before anything is sent.  Written here, directly, so
        no queued write has to be waited for."""
        now = time.time()
        with self._read_lock:
            self._reader.execute("BEGIN IMMEDIATE")
            try:
                run_id, segment = self._begin(name, mode, settings, queries, concurrency, resume, now)
            except BaseException:
                self._reader.execute("ROLLBACK")
                raise
            self._reader.execute("COMMIT")
        self._leased.add(run_id)
        return run_id, segment

    def _begin(
        self,
        name: str,
        mode: str,
        settings: dict[str, Any],
        queries: int,
        concurrency: int | None,
        resume: bool,
        now: float,
    ) -> tuple[int, int]:
        """:meth:`begin_segment`'s statements, inside its transaction."""
        found = self._reader.execute("SELECT id FROM runs WHERE name = ?", (name,)).fetchall()
        if found and not resume:
            raise ConfigError(
                f"A run named {name!r} is already in {self}. Pass resume=True to continue it (only what is not "
                "answered ok yet is sent), or choose another name."
            )
        if found:
            run_id = int(found[0][0])
            self._refuse_leased(name, run_id, now)
            self._reader.execute(
                "UPDATE runs SET mode = ?, settings = ?, queries = ?, status = 'running', ended_at = NULL WHERE id = ?",
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
                    kit_version(),
                    git_commit(),
                    orjson.dumps(machine_info()).decode(),
                    queries,
                    now,
                ),
            )
            run_id = int(cursor.lastrowid or 0)
        self._reader.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?)", (run_id, *holder(), now))
        segment = self._reader.execute(
            "SELECT COALESCE(MAX(segment) + 1, 0) FROM segments WHERE run_id = ?", (run_id,)
        ).fetchone()[0]
        self._reader.execute(
            "INSERT INTO segments (run_id, segment, mode, queries, concurrency, started_at, status) "
            "VALUES (?, ?, ?, ?, ?, ?, 'running')",
            (run_id, segment, mode, queries, concurrency, now),
        )
        return run_id, int(segment)

    def _refuse_leased(self, name: str, run_id: int, now: float) -> None:
        """Raise :class:`ConfigError` if another live process holds run ``name``'s lease."""
        row = self._reader.execute("SELECT pid, host, heartbeat_at FROM leases WHERE run_id = ?", (run_id,)).fetchone()
        if row is None or (row[0], row[1]) == holder():
            return
        pid, host, heartbeat_at = row
        silent = now - heartbeat_at
        gone = silent > LEASE_EXPIRY_S or (host == HOST and not psutil.pid_exists(pid))
        if not gone:
            raise ConfigError(
                f"Run {name!r} is being written by process {pid} on {host} (its last sign of life {silent:.0f} s "
                f"ago), so resuming it here would send its queries twice. Wait for that run to end or stop it; a "
                f"lease lapses when its process is gone, or {LEASE_EXPIRY_S:.0f} s after its last sign of life."
            )

    def record(self, run_id: int, segment: int, result: QueryResult, default_model: str) -> None:
        """Queue ``result`` for writing: it returns at once, and the writer thread computes the
        request's fingerprint, builds the row and commits it, so the loop pays only for the queue."""
        self._queue.put((INSERT_RESULT, (run_id, segment, result, default_model, time.time())))

    def record_start(self, run_id: int, index: int) -> None:
        """Queue the event that query ``index`` of run ``run_id`` sent its first request (for a viewer)."""
        self._enqueue(INSERT_EVENT, (run_id, "query_started", index, time.time(), None))

    def record_progress(self, run_id: int, index: int, tokens: int) -> None:
        """Queue the event that streamed query ``index`` has received ``tokens`` tokens so far."""
        self._enqueue(INSERT_EVENT, (run_id, "query_progress", index, time.time(), tokens))

    def end_segment(self, run_id: int, segment: int, status: str, run: RunResult) -> None:
        """Queue a segment's end: ``finished``, ``cancelled`` or ``failed``, and what the run measured
        beyond its rows (wall, CPU, warnings, the adaptive limit's trace, the budget, diagnostics, flags, prices), so
        that loading it computes the same metrics with the same code (``RunMetrics.compute``)."""
        now = time.time()
        m = run.metrics
        self._enqueue(
            "UPDATE segments SET status = ?, ended_at = ?, wall_s = ?, cpu_s = ?, cancelled = ?, warnings = ?, "
            "concurrency_trace = ?, budget = ?, diagnostics = ?, flags = ?, prices = ? "
            "WHERE run_id = ? AND segment = ?",
            (
                status,
                now,
                m.wall_s,
                m.cpu_s,
                int(run.cancelled),
                orjson.dumps(run.warnings).decode(),
                orjson.dumps(m.concurrency_trace).decode(),
                None if m.budget is None else orjson.dumps(dataclasses.astuple(m.budget)).decode(),
                orjson.dumps(run.diagnostics).decode(),
                orjson.dumps(run.flags).decode(),
                orjson.dumps(run.prices).decode(),
                run_id,
                segment,
            ),
        )
        self._enqueue("UPDATE runs SET status = ?, ended_at = ? WHERE id = ?", (status, now, run_id))
        self._enqueue("DELETE FROM leases WHERE run_id = ? AND pid = ? AND host = ?", (run_id, *holder()))
        self._leased.discard(run_id)
        self._enqueue(INSERT_EVENT, (run_id, "final_result", None, now, None))

    def events(
        self, name: str, *, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, str, int | None, float, int | None]]:
        """Run ``name``'s events after sequence number ``after``, at most ``limit`` of them: (seq,
        kind, query index, wall time, tokens so far), oldest first.  Kinds: ``query_started``,
        ``query_progress`` (streamed queries), ``query_completed``, ``final_result`` (the run ended;
        a resumed run starts again after it)."""
        rows = self._read(
            "SELECT e.seq, e.kind, e.idx, e.at, e.tokens FROM events e JOIN runs ON runs.id = e.run_id "
            "WHERE runs.name = ? AND e.seq > ? ORDER BY e.seq LIMIT ?",
            (name, after, limit),
        )
        return [(int(seq), str(kind), idx, float(at), tokens) for seq, kind, idx, at, tokens in rows]

    def last_event(self, name: str) -> int:
        """The sequence number of run ``name``'s newest event (0 without one): where a page rendered
        now should start following."""
        found = self._read(
            "SELECT MAX(e.seq) FROM events e JOIN runs ON runs.id = e.run_id WHERE runs.name = ?", (name,)
        )
        return int(found[0][0] or 0)

    def brief_rows(self, name: str, indexes: Sequence[int]) -> dict[int, dict[str, Any]]:
        """What a viewer shows of some rows of run ``name`` (committed ones only, without waiting for
        the writer): name, ok, error kind, the first 300 characters of text, latency, tokens, cost.
        Each query in its latest segment; a row that segment resumed shows the latency of the row
        that answered it, as ``load(name)`` does."""
        found: dict[int, dict[str, Any]] = {}
        for start in range(0, len(indexes), 500):
            chunk = list(indexes[start : start + 500])
            rows = self._read(
                f"SELECT r.idx, r.name, r.error_kind, {_SHOWN_TEXT}, {_ANSWERED_LATENCY}, "
                "r.prompt_tokens + r.completion_tokens, r.cost_usd, r.origin, length(CAST(r.text AS BLOB)) "
                "FROM results r "
                f"JOIN runs ON runs.id = r.run_id WHERE runs.name = ? AND {IN_LATEST_SEGMENT} "
                f"AND r.idx IN ({', '.join('?' * len(chunk))})",
                (name, *chunk),
            )
            keys = ("index", "name", "error_kind", "text", "latency_s", "total_tokens", "cost_usd", "origin", "bytes")
            for row in rows:
                brief = dict(zip(keys, row, strict=True))
                size, shown = brief.pop("bytes"), _shown(brief["text"])
                brief["text"] = shown
                brief["truncated"] = shown is not None and size > len(shown.encode())
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
        return {(row["name"], row["fingerprint"]): result_from(row) for row in rows}

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
