"""The run store's file: one reading connection, and the one writer thread that commits.

``record`` and friends only put a statement on a queue; the writer thread takes everything
queued, lets a burst gather for ``COMMIT_INTERVAL_S``, writes it in one transaction and commits,
so under load commits are batched and at low rates each row is committed within milliseconds.
Results are queued as objects and turned into rows by the writer, off the event loop.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from hybrid.errors import ConfigError
from hybrid.store.schema import INSERT_EVENT, INSERT_RESULT, check_owned, connect, prepare, result_row

log = logging.getLogger("hybrid")

#: How long the writer lets rows gather before one commit: bounds what a kill can lose beyond
#: the requests in flight (answers of the last few milliseconds), and keeps commits few under load.
COMMIT_INTERVAL_S = 0.005
#: This machine, as a run's lease names it.
HOST = socket.gethostname()
#: How often the writer renews the leases of the runs this process writes.
HEARTBEAT_S = 10.0
#: A lease whose process shows no sign of life for this long lapses (a process on another host,
#: whose death cannot be seen from here; on this host a dead process's lease lapses at once).
LEASE_EXPIRY_S = 60.0


def holder() -> tuple[int, str]:
    """This process, as a run's lease names its writer: (pid, host); read at each use, since a
    forked child is another writer than its parent."""
    return os.getpid(), HOST


@dataclass(frozen=True, slots=True)
class _Flush:
    """A marker on the writer's queue: set ``done`` once everything before it is committed."""

    done: threading.Event


class StoreFile:
    """A store file opened for reading and writing (the parts of :class:`~hybrid.store.Store`
    build on it)."""

    def __init__(self, path: str | Path) -> None:
        if not isinstance(path, str | Path) or not str(path).strip():
            raise ConfigError(f"Store(path) needs a file path such as 'runs.sqlite', got {path!r}.")
        self.path = Path(path).expanduser()
        folder = self.path.parent
        if not folder.is_dir():
            raise ConfigError(f"Store({str(path)!r}): the folder {str(folder)!r} does not exist; create it first.")
        check_owned(self.path)
        try:
            self._reader = connect(self.path)
            prepare(self._reader, self.path)
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"Store({str(path)!r}) cannot be used: {exc}. If it is not a hybrid run store (or is damaged), "
                "pass another path; to inspect it, open it with the sqlite3 shell."
            ) from None
        self._read_lock = threading.Lock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.failure: BaseException | None = None
        #: Runs this process is writing: the writer renews their leases every ``HEARTBEAT_S``.
        self._leased: set[int] = set()
        self._writer = threading.Thread(target=self._write_forever, name="hybrid-store-writer", daemon=True)
        self._writer.start()
        # A script that ends without closing the store must still have every row on disk.
        atexit.register(self.close)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # -- writing (off the event loop) ---------------------------------------------------------
    def _write_forever(self) -> None:
        connection: sqlite3.Connection | None = None
        renewed = time.monotonic()
        while True:
            try:
                batch = [self._queue.get(timeout=HEARTBEAT_S)]
                time.sleep(COMMIT_INTERVAL_S)  # let a burst gather: one commit for many rows
            except queue.Empty:
                batch = []
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            statements = [item for item in batch if isinstance(item, tuple)]
            if self._leased and time.monotonic() - renewed >= HEARTBEAT_S:
                renewed = time.monotonic()
                renew = "UPDATE leases SET heartbeat_at = ? WHERE run_id = ? AND pid = ? AND host = ?"
                statements += [(renew, (time.time(), run, *holder())) for run in list(self._leased)]
            try:
                connection = connection or connect(self.path)
                self._write(connection, statements)
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
            connection.executemany(INSERT_RESULT, results)
            connection.executemany(INSERT_EVENT, events)
            results.clear()
            events.clear()

        try:
            for sql, values in statements:
                if sql is INSERT_RESULT:
                    results.append(result_row(*values))
                    run_id, _, result, _, recorded_at = values
                    events.append((run_id, "query_completed", result.index, recorded_at, None))
                elif sql is INSERT_EVENT:
                    events.append(values)
                else:  # anything else keeps its place after what came before it
                    write_pending()
                    connection.execute(sql, values)
            write_pending()
        except BaseException:
            if connection.in_transaction:  # SQLite rolls back by itself on some errors (a full disk)
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------
    def _read(self, sql: str, values: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._read_lock:
            return self._reader.execute(sql, tuple(values)).fetchall()

    def _result_rows(self, sql: str, values: Iterable[Any]) -> list[dict[str, Any]]:
        with self._read_lock:
            cursor = self._reader.execute(sql, tuple(values))
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
