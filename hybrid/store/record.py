"""One run's place in the store: the segment it writes, what resume skips, and its remote jobs.

A :class:`RunRecord` is made before anything is sent (it reads what an earlier segment answered)
but writes nothing until :meth:`RunRecord.open`, which refuses a name already taken unless the run
resumes, still before anything is sent: a resume that finds every query
answered sends nothing and leaves the store exactly as it was (rows, metrics, status, end time,
segment count).  Once open, every result, event and remote job goes to its segment, and
:meth:`RunRecord.end` writes what the run measured beyond its rows, so that ``Store.load`` gives
the run back as it was (:mod:`hybrid.store.segments` says how segments add up).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from hybrid.fingerprint import fingerprint
from hybrid.query import Query, QueryResult
from hybrid.results import RunResult

if TYPE_CHECKING:
    from hybrid.store import Store


class RunRecord:
    """The store's record of one run (see the module docstring)."""

    def __init__(
        self, store: Store, name: str, *, mode: str, settings: dict[str, Any], default_model: str, resume: bool
    ) -> None:
        self.store, self.name, self.mode, self.settings = store, name, mode, settings
        self.default_model = default_model
        self.resume = resume
        self.answered = store.answered(name) if resume else {}
        self.run_id: int | None = None
        self.segment = 0

    def open(self, queries: int, concurrency: int | None) -> None:
        """Start this run's segment in the store: from here on, what lands is written."""
        self.run_id, self.segment = self.store.begin_segment(
            self.name,
            mode=self.mode,
            settings=self.settings,
            queries=queries,
            concurrency=concurrency,
            resume=self.resume,
        )

    def save(self, result: QueryResult) -> None:
        if self.run_id is not None:
            self.store.record(self.run_id, self.segment, result, self.default_model)

    def started(self, index: int) -> None:
        if self.run_id is not None:
            self.store.record_start(self.run_id, index)

    def progressed(self, index: int, tokens: int) -> None:
        if self.run_id is not None:
            self.store.record_progress(self.run_id, index, tokens)

    def end(self, run: RunResult, status: str) -> None:
        """Write the segment's end (nothing, if it never opened).  A run that finished while the
        store failed to write some of its rows (a full disk) is stored as ``incomplete``."""
        if self.run_id is not None:
            lost = status == "finished" and self.store.failure is not None
            self.store.end_segment(self.run_id, self.segment, "incomplete" if lost else status, run)

    def resumed(self, queries: Sequence[Query], stages: Sequence[int | None]) -> list[QueryResult]:
        """The rows of ``queries`` already answered ok under this name: not sent again.  Each comes
        back as this segment's row (``origin="resumed"``, no time of its own in this segment)."""
        found = []
        for index, query in enumerate(queries):
            earlier = self.answered.get((query.name, fingerprint(query, self.default_model)))
            if earlier is not None:
                found.append(
                    replace(
                        earlier,
                        query=query,
                        index=index,
                        stage=stages[index],
                        origin="resumed",
                        latency_s=0.0,
                        queue_s=0.0,
                        ttft_s=None,
                        started_s=0.0,
                        finished_s=0.0,
                    )
                )
        return found

    # -- a provider's remote jobs (batch ids), for strategies that start them ---------------------
    def open_remote_jobs(self, kind: str) -> list[str]:
        """Ids of this run's remote jobs whose results were not collected yet, oldest first."""
        return [] if self.run_id is None else self.store.open_remote_jobs(self.run_id, kind)

    def add_remote_job(self, job_id: str, *, kind: str, input_file_id: str | None, requests: int) -> None:
        """Remember a job started at the provider, committed before this returns."""
        if self.run_id is not None:
            self.store.add_remote_job(self.run_id, job_id, kind=kind, input_file_id=input_file_id, requests=requests)

    def end_remote_job(self, job_id: str, status: str) -> None:
        if self.run_id is not None:
            self.store.end_remote_job(self.run_id, job_id, status)
