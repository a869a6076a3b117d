"""Pruning a store down to the runs worth keeping: how a recording committed next to a notebook stays small.

A suite recorded again and again, or a store that also holds exploratory runs, grows with every
run.  :meth:`Pruning.prune` keeps the runs named and the cached answers their rows were answered
with (by fingerprint, for whichever server), deletes every other run with its rows, segments,
events and jobs, and every other cached answer, then compacts the file (``VACUUM``).  A run another
live process is writing is never deleted: that is a :class:`ConfigError`, and nothing changes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from hybrid.errors import ConfigError
from hybrid.store.runs import RunLog

#: The tables holding a run's parts (each has ``run_id``).
RUN_PARTS = ("results", "segments", "events", "remote_jobs", "leases", "scores")


@dataclass(frozen=True, slots=True)
class Pruned:
    """What :meth:`Pruning.prune` removed (or, with ``dry_run``, would remove) and the file's size."""

    runs: tuple[str, ...]
    cached_answers: int
    bytes_before: int
    bytes_after: int

    def __str__(self) -> str:
        runs = ", ".join(self.runs) if self.runs else "none"
        return (
            f"{len(self.runs)} run(s) ({runs}) and {self.cached_answers} cached answer(s); "
            f"{_size(self.bytes_before)} -> {_size(self.bytes_after)}"
        )


class Pruning(RunLog):
    """Deleting runs and unused cached answers (part of :class:`~hybrid.store.Store`)."""

    def prune(self, keep: Sequence[str], *, dry_run: bool = False) -> Pruned:
        """Keep only the runs named in ``keep`` and the cached answers to their queries; delete the
        rest and compact the file.  With ``dry_run`` nothing changes; the result says what would go."""
        if isinstance(keep, str) or not all(isinstance(name, str) for name in keep):
            raise ConfigError(f"keep must be a list of run names, got {keep!r}.")
        self.flush()
        before = self._bytes()
        with self._read_lock:
            known = {name for (name,) in self._reader.execute("SELECT name FROM runs")}
            unknown = sorted(set(keep) - known)
            if unknown:
                raise ConfigError(
                    f"No run named {', '.join(map(repr, unknown))} in {self}: nothing was pruned. "
                    f"Its runs: {', '.join(sorted(known)) or 'none'} (hybrid runs list)."
                )
            self._reader.execute("BEGIN IMMEDIATE")
            try:
                doomed = self._delete_runs_except(list(keep))
                cursor = self._reader.execute(
                    "DELETE FROM cache WHERE substr(fingerprint, 1, 64) NOT IN (SELECT fingerprint FROM results)"
                )
                answers = cursor.rowcount
            except BaseException:
                self._reader.execute("ROLLBACK")
                raise
            self._reader.execute("ROLLBACK" if dry_run else "COMMIT")
            if not dry_run:
                self._reader.execute("VACUUM")
                self._reader.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return Pruned(tuple(doomed), answers, before, before if dry_run else self._bytes())

    def _delete_runs_except(self, keep: list[str]) -> list[str]:
        """Delete every run not in ``keep`` (inside :meth:`prune`'s transaction); their names."""
        marks = ", ".join("?" * len(keep))
        rows = self._reader.execute(f"SELECT id, name FROM runs WHERE name NOT IN ({marks}) ORDER BY id", keep)
        doomed = rows.fetchall()
        now = time.time()
        for run_id, name in doomed:
            self._refuse_leased(name, run_id, now)
        ids = [run_id for run_id, _ in doomed]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            where = f"run_id IN ({', '.join('?' * len(chunk))})"
            for table in RUN_PARTS:
                self._reader.execute(f"DELETE FROM {table} WHERE {where}", chunk)
            self._reader.execute(f"DELETE FROM runs WHERE id IN ({', '.join('?' * len(chunk))})", chunk)
        return [name for _, name in doomed]

    def _bytes(self) -> int:
        """The file's size with its write-ahead log (what a commit of the store adds)."""
        wal = self.path.with_name(self.path.name + "-wal")
        return self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"
