"""``mode="batch"``: a run through the provider's Batch API, at half price, behind the same ``run()``.

A prompt grid too big for one key's rate limits goes to the provider as JSONL files instead of one
request per query: the provider answers within its window (OpenAI: 24 h) at a discount
(``Price.batch_discount``).  The contract stays the kit's: the same ``Query`` list in, one row per
query in input order out, whatever fails.

How a run goes (:class:`Batch`, :class:`_BatchRun`):

1. Cache hits answer first (no line is paid for twice).  With a store, batches this run created
   earlier and never collected (the kernel died while they ran) are reattached, not paid again.
2. The rest becomes JSONL lines ``{"custom_id", "method", "url", "body"}``, the ``custom_id`` made
   of the query's index and its request fingerprint, split at the provider's limits (requests and
   bytes per file), uploaded and started as batches.  Each batch id is written to the store the
   moment it exists.
3. Batches are polled with a growing interval (a bar shows the provider's counts); a finished
   batch's output and error files are downloaded and every line is mapped back by ``custom_id``.
4. Lines that failed retryably (5xx, 429), expired, or are missing from both files are resubmitted
   in new batches, up to ``resubmits`` times; then they are rows with an error
   (``batch_incomplete`` when the provider never answered).  A 4xx answer is final at once.
5. Cancelling the run (an interrupt) cancels the remote batches, collects what they had finished,
   and leaves the rest as ``cancelled`` rows.

Rows answered here have ``origin="batch"``; their latency is the batch's turnaround (submit to
download), kept out of latency and efficiency metrics; their cost is at the batch price and is
summed apart as ``RunMetrics.batch_cost_usd``.  Client-side ``rpm``/``tpm`` limits do not apply
(the provider queues a batch against its own batch limits); a budget does, reserved per line
before upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from hybrid import progress
from hybrid.backends.batch_api import BatchAPI, batch_api_of
from hybrid.backends.openai_wire import completion_from_body, error_for_status, error_message, request_body
from hybrid.errors import BatchIncomplete, BudgetExceeded, QueryError, check_int, check_number
from hybrid.fingerprint import fingerprint
from hybrid.query import Completion, Query
from hybrid.strategies import RunContext, Strategy, register

if TYPE_CHECKING:
    from hybrid.orchestrator import Orchestrator

log = logging.getLogger("hybrid")

#: A batch's states after which it changes no more.
TERMINAL = ("completed", "failed", "expired", "cancelled")
#: How long an interrupted run waits for the provider to confirm its cancellations and hand over
#: what the batches had finished.
CANCEL_WAIT_S = 60.0
#: Polls of one batch that may fail in a row (network, 5xx) before its lines are given up on.
POLL_FAILURES_ALLOWED = 10


@dataclass(frozen=True, kw_only=True)
class Batch(Strategy):
    """The Batch API strategy (see the module docstring).  ``orch.run(qs, mode="batch")`` uses the
    defaults; pass ``mode=Batch(...)`` to change them.

    ``max_requests_per_file`` and ``max_bytes_per_file`` are the provider's limits per input file
    (OpenAI: 50,000 requests, 200 MB); ``poll_s`` is the first poll interval, doubled after each
    poll up to ``poll_max_s``; ``resubmits`` is how many more batches a line may go into.
    """

    name: ClassVar[str] = "batch"
    whole_run: ClassVar[bool] = True

    max_requests_per_file: int = 50_000
    max_bytes_per_file: int = 190 * 1024 * 1024
    poll_s: float = 0.05
    poll_max_s: float = 60.0
    resubmits: int = 2

    def __post_init__(self) -> None:
        check_int("Batch(max_requests_per_file=...)", self.max_requests_per_file, minimum=1)
        check_int("Batch(max_bytes_per_file=...)", self.max_bytes_per_file, minimum=1024)
        check_number("Batch(poll_s=...)", self.poll_s, positive=True, unit="seconds")
        check_number("Batch(poll_max_s=...)", self.poll_max_s, positive=True, unit="seconds")
        check_int("Batch(resubmits=...)", self.resubmits, minimum=0)

    def check(self, orchestrator: Orchestrator) -> None:
        batch_api_of(orchestrator.backend)

    async def execute(self, run: RunContext) -> None:
        await _BatchRun(self, run).run()


register(Batch())


class _BatchRun:
    """One run's batches: what is still owed an answer, and the bookkeeping to pay for each line once."""

    def __init__(self, settings: Batch, run: RunContext) -> None:
        self.settings = settings
        self.ctx = run
        self.port = run.port
        self.state = run.state
        self.api: BatchAPI = batch_api_of(self.port.backend)
        model = self.port.backend.model
        todo = self.port.land_cache_hits(run.todo)  # no line is paid for twice
        #: custom_id -> (index, query) of every query not answered yet.
        self.pending: dict[str, tuple[int, Query]] = {
            f"{index}-{fingerprint(query, model)[:16]}": (index, query) for index, query in todo
        }
        self.submitted_at: dict[int, float] = {}
        self.lines_sent: Counter[int] = Counter()
        self.last_error: dict[str, QueryError] = {}
        self.reserved: dict[str, float] = {}
        self.job_lines: dict[str, list[str]] = {}
        self.collected_jobs: set[str] = set()
        self.collected = 0

    # -- the run ------------------------------------------------------------------------------
    async def run(self) -> None:
        active: list[str] = []
        with progress.bar(
            len(self.pending), "batch (provider's counts)", requested=progress.wanted(self.port.progress)
        ) as bar:
            try:
                record = self.ctx.record
                if record is not None:
                    active = record.open_remote_jobs("batch")
                    if active:
                        log.info("hybrid: reattaching to %d batch(es) of run %r", len(active), record.name)
                        await self._wait_for(active, bar)
                for _ in range(1 + self.settings.resubmits):
                    if not self.pending:
                        break
                    active = await self._submit()
                    await self._wait_for(active, bar)
            except asyncio.CancelledError:
                unfinished = [job for job in active if job not in self.collected_jobs]
                if unfinished:
                    stop = asyncio.ensure_future(self._cancel(unfinished))
                    with contextlib.suppress(BaseException):
                        await asyncio.shield(stop)
                raise
        for custom_id in list(self.pending):
            error = self.last_error.get(custom_id) or BatchIncomplete(
                f"The Batch API gave no answer for this query in {self.settings.resubmits + 1} batch(es)."
            )
            self._fail(custom_id, error)

    # -- submitting ---------------------------------------------------------------------------
    def _files(self) -> Iterator[list[tuple[str, bytes]]]:
        """The pending lines, cut into files within the provider's limits (a budget may refuse some)."""
        limit_n, limit_bytes = self.settings.max_requests_per_file, self.settings.max_bytes_per_file
        lines: list[tuple[str, bytes]] = []
        size = 0
        model = self.port.backend.model
        for custom_id, (_, query) in list(self.pending.items()):
            try:
                reserved = self.port.reserve(query, batch=True)
            except BudgetExceeded as exc:
                self._fail(custom_id, exc)
                continue
            if reserved is not None:
                self.reserved[custom_id] = reserved
            body = request_body(query, model)
            body.pop("stream", None)
            body.pop("stream_options", None)
            line = orjson.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})
            if lines and (len(lines) >= limit_n or size + len(line) + 1 > limit_bytes):
                yield lines
                lines, size = [], 0
            lines.append((custom_id, line))
            size += len(line) + 1
        if lines:
            yield lines

    async def _submit(self) -> list[str]:
        """Upload and start a batch per file of pending lines; their ids (each saved at once)."""
        record = self.ctx.record
        started: list[str] = []
        for part, lines in enumerate(self._files(), start=1):
            ids = [custom_id for custom_id, _ in lines]
            try:
                file_id = await self.api.upload(b"\n".join(line for _, line in lines) + b"\n", f"hybrid-{part}.jsonl")
                metadata = {"hybrid_run": "" if record is None else record.name, "part": str(part)}
                batch = await self.api.create(file_id, metadata)
            except QueryError as exc:
                for custom_id in ids:
                    self._release(custom_id)
                    if exc.retryable:
                        self.last_error[custom_id] = exc
                    else:
                        self._fail(custom_id, exc)
                continue
            job_id = str(batch["id"])
            if record is not None:
                record.add_remote_job(job_id, kind="batch", input_file_id=file_id, requests=len(ids))
            now = self.state.clock()
            for custom_id in ids:
                index = self.pending[custom_id][0]
                if index not in self.submitted_at:
                    self.submitted_at[index] = now
                    self.state.started(index, now)
                self.lines_sent[index] += 1
            self.job_lines[job_id] = ids
            started.append(job_id)
        return started

    # -- waiting and collecting ---------------------------------------------------------------
    async def _wait_for(self, jobs: list[str], bar: Any) -> None:
        """Poll ``jobs`` until each has ended and its results are collected."""
        active = list(jobs)
        counts: dict[str, int] = {}
        failures: Counter[str] = Counter()
        delay = self.settings.poll_s
        while active:
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.poll_max_s)
            for job in list(active):
                try:
                    batch = await self.api.retrieve(job)
                except QueryError as exc:
                    failures[job] += 1
                    if exc.retryable and failures[job] < POLL_FAILURES_ALLOWED:
                        continue
                    log.warning("hybrid: giving up on batch %s: %s", job, exc)
                    batch = {"id": job, "status": "failed", "errors": {"data": [{"message": str(exc)}]}}
                failures[job] = 0
                request_counts = batch.get("request_counts") or {}
                counts[job] = int(request_counts.get("completed") or 0) + int(request_counts.get("failed") or 0)
                if batch.get("status") in TERMINAL:
                    await self._collect(batch)
                    active.remove(job)
                    counts.pop(job)
            if bar is not None:
                bar.n = min(bar.total, self.collected + sum(counts.values()))
                bar.refresh()

    async def _collect(self, batch: dict[str, Any]) -> None:
        """Land every line of a finished batch: answers from its output file, errors from its error
        file; lines it owed and did not give are noted for resubmission."""
        job, status = str(batch["id"]), str(batch.get("status"))
        seen: set[str] = set()
        for key in ("output_file_id", "error_file_id"):
            file_id = batch.get(key)
            if not file_id:
                continue
            try:
                data = await self.api.content(str(file_id))
            except QueryError as exc:
                log.warning("hybrid: the %s of batch %s could not be downloaded: %s", key, job, exc)
                continue
            for raw in data.splitlines():
                if raw.strip():
                    seen.add(self._land_line(raw, job))
        problem = _batch_problem(batch)
        for custom_id in self.job_lines.get(job, []):
            if custom_id in self.pending and custom_id not in seen:
                self._release(custom_id)
                if status == "failed":
                    self._fail(custom_id, BatchIncomplete(f"Batch {job} failed: {problem}"))
                else:
                    what = "expired before answering it" if status == "expired" else f"ended ({status}) without it"
                    self.last_error[custom_id] = BatchIncomplete(f"Batch {job} {what}.")
        self.collected_jobs.add(job)
        self.collected += len(seen)
        record = self.ctx.record
        if record is not None:
            record.end_remote_job(job, status)

    def _land_line(self, raw: bytes, job: str) -> str:
        """Land one line of a result file if it answers a pending query; its custom_id."""
        try:
            line = orjson.loads(raw)
            custom_id = str(line["custom_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("hybrid: batch %s returned a line that is not a result: %.200r", job, raw)
            return ""
        if custom_id not in self.pending:
            return custom_id  # already answered, or a query this run no longer has
        query = self.pending[custom_id][1]
        self._release(custom_id)  # the line has its verdict: an answer, an error, or a reason to resubmit
        response = line.get("response") if isinstance(line.get("response"), dict) else None
        if response is None:
            failure = line.get("error") if isinstance(line.get("error"), dict) else {}
            self.last_error[custom_id] = BatchIncomplete(
                f"Batch {job}: {failure.get('code', 'error')}: {failure.get('message', 'no response')}"
            )
            return custom_id
        status, body = response.get("status_code"), response.get("body")
        if status != 200:
            code = status if isinstance(status, int) else 500
            error = error_for_status(code, error_message(body, code), {})
            if error.retryable:
                self.last_error[custom_id] = error
            else:
                self._fail(custom_id, error)
            return custom_id
        try:
            completion = completion_from_body(query, body, query.model or self.port.backend.model)
        except QueryError as exc:
            self.last_error[custom_id] = exc
            return custom_id
        self._answer(custom_id, completion)
        return custom_id

    # -- cancelling ---------------------------------------------------------------------------
    async def _cancel(self, jobs: list[str]) -> None:
        """Cancel ``jobs`` at the provider and collect what they had finished (bounded wait)."""
        for job in jobs:
            with contextlib.suppress(QueryError):
                await self.api.cancel(job)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CANCEL_WAIT_S):
                await self._wait_for(jobs, None)

    # -- landing rows -------------------------------------------------------------------------
    def _answer(self, custom_id: str, completion: Completion) -> None:
        index, query = self.pending.pop(custom_id)
        cost = self.port.cost(completion, batch=True)
        self.port.settle(0.0, cost or 0.0)
        self.port.remember(query, completion)
        self._land(index, query, completion, None, cost)

    def _fail(self, custom_id: str, error: QueryError) -> None:
        self._release(custom_id)
        index, query = self.pending.pop(custom_id)
        self._land(index, query, None, error.detached(), None)

    def _land(
        self, index: int, query: Query, completion: Completion | None, error: QueryError | None, cost: float | None
    ) -> None:
        now = self.state.clock()
        sent = self.submitted_at.get(index, now)
        self.port.land(
            index,
            query,
            completion,
            error,
            attempts=max(1, self.lines_sent[index]),
            origin="batch",
            cost=cost,
            started=sent,
            finished=now,
        )

    def _release(self, custom_id: str) -> None:
        """Give back a line's budget reservation (it was answered, failed, or goes round again)."""
        reserved = self.reserved.pop(custom_id, None)
        if reserved is not None:
            self.port.settle(reserved, 0.0)


def _batch_problem(batch: dict[str, Any]) -> str:
    """What a failed batch object says went wrong (its first errors)."""
    errors = (batch.get("errors") or {}).get("data") or []
    described = [
        f"line {e.get('line')}: {e.get('message')}" if e.get("line") else str(e.get("message")) for e in errors
    ]
    return "; ".join(described[:3]) or "no reason given"
