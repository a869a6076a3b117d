"""Jobs a run started at a provider (batch ids), kept so that a restarted kernel reattaches to what
it paid for instead of paying again.  Unlike rows, these are committed before the call returns."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from hybrid.store.base import StoreFile

if TYPE_CHECKING:
    import pandas as pd


class RemoteJobs(StoreFile):
    """A run's remote jobs (part of :class:`~hybrid.store.Store`)."""

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
