"""``mode="batch"``: a run through the provider's Batch API, at half price, behind the same ``run()``.

A prompt grid too big for one key's rate limits goes to the provider as JSONL files instead of one
request per query: the provider answers within its window (OpenAI: 24 h) at a discount
(``Price.batch_discount``).  The contract stays the kit's: the same ``Query`` list in, one row per
query in input order out, whatever fails.

How a run goes (:class:`Batch`, :class:`_BatchRun`):

1. With a store, batches this run created earlier and never collected (the kernel died while they
   ran) are reattached, not paid again.
2. Every query goes through the run's cache and budget links, as a live attempt does
   (``RunPort.chain``): a hit is answered there (no line is paid for twice), the budget reserves
   the line's worst case at the batch price.  The chain's last step files the rest as JSONL lines
   ``{"custom_id", "method", "url", "body"}``, the ``custom_id`` made of the query's index and its
   request fingerprint, split at the provider's limits (requests and bytes per file), uploaded and
   started as batches.  Each batch id is written to the store the moment it exists.
3. Batches are polled with a growing interval (a bar shows the provider's counts); a finished
   batch's output and error files are downloaded and every line's verdict goes back, by
   ``custom_id``, to the attempt waiting for it.
4. Lines that failed retryably (5xx, 429), expired, or are missing from both files go through the
   chain again into new batches, up to ``resubmits`` times; then they are rows with an error
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
import functools
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from hybrid import progress
from hybrid.backends.batch_api import BatchAPI, batch_api_of, check_batch_api
from hybrid.backends.openai_wire import completion_from_body, error_for_status, error_message, request_body
from hybrid.chain import Attempt
from hybrid.errors import BatchIncomplete, QueryError, check_int, check_number
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
        check_batch_api(orchestrator.backend)

    async def execute(self, run: RunContext) -> None:
        await _BatchRun(self, run).run()


register(Batch())


class _TryAgain(Exception):
    """A line's verdict that sends its query into the next batch (a 5xx or 429, an expired or missing
    line, an answer that could not be read): raised through the chain, so the budget gives back its
    reservation, and caught by the attempt, which leaves the query pending."""

    def __init__(self, error: QueryError) -> None:
        super().__init__(str(error))
        self.error = error


class _BatchRun:
    """One run's batches.  Every query goes through the run's cache and budget links
    (:meth:`RunPort.chain <hybrid.strategies.RunPort.chain>`) as a live attempt would; the chain's
    last step (:meth:`_send`) is the provider's side: it files the line for the next batch and waits
    for the line's verdict, so a hit is never put in a batch, a line is reserved before upload and
    paid at the batch price, and an answer fills the cache, by the same links as a live call."""

    def __init__(self, settings: Batch, run: RunContext) -> None:
        self.settings = settings
        self.ctx = run
        self.port = run.port
        self.state = run.state
        self.model = self.port.backend.model
        self.chain = self.port.chain(self._send)
        #: Each query's line id: its index and request fingerprint, so a line maps back only to it.
        self.custom_ids = {index: f"{index}-{fingerprint(query, self.model)[:16]}" for index, query in run.todo}
        #: custom_id -> (index, query) of every query not answered yet.
        self.pending: dict[str, tuple[int, Query]] = {
            self.custom_ids[index]: (index, query) for index, query in run.todo
        }
        #: Lines handed to the provider's side, each waiting for its verdict (an answer or an error).
        self.waiting: dict[str, tuple[Attempt, asyncio.Future[Completion]]] = {}
        #: Lines filed for the next batches.
        self.queued: list[tuple[str, bytes]] = []
        #: Verdicts of batches reattached after a restart, collected before their query asked.
        self.early: dict[str, Completion | QueryError] = {}
        self.submitted_at: dict[int, float] = {}
        self.lines_sent: Counter[int] = Counter()
        self.last_error: dict[str, QueryError] = {}
        self.job_lines: dict[str, list[str]] = {}
        self.active: list[str] = []
        self.collected_jobs: set[str] = set()
        self.collected = 0
        self.attempts: list[asyncio.Task[None]] = []
        self._handed: set[str] = set()
        self._expected = 0
        self._all_handed = asyncio.Event()

    @functools.cached_property
    def api(self) -> BatchAPI:
        """The provider's Batch API, asked for when the first line goes out: a replay, whose every
        query the cache answers or refuses, never opens a client."""
        return batch_api_of(self.port.backend)

    # -- the run ------------------------------------------------------------------------------
    async def run(self) -> None:
        with progress.bar(
            len(self.pending), "batch (provider's counts)", requested=progress.wanted(self.port.progress)
        ) as bar:
            try:
                record = self.ctx.record
                if record is not None:
                    self.active = record.open_remote_jobs("batch")
                    if self.active:
                        log.info("hybrid: reattaching to %d batch(es) of run %r", len(self.active), record.name)
                        await self._wait_for(self.active, bar)
                for number in range(1, 2 + self.settings.resubmits):
                    if not self.pending:
                        break
                    await self._round(number, bar)
            except asyncio.CancelledError:
                await self._stop()
                raise
        for custom_id in list(self.pending):
            error = self.last_error.get(custom_id) or BatchIncomplete(
                f"The Batch API gave no answer for this query in {self.settings.resubmits + 1} batch(es)."
            )
            self._fail(custom_id, error)

    async def _round(self, number: int, bar: Any) -> None:
        """One attempt of every pending query: through the chain, the lines that reach the provider's
        side go into batches; wait for them, and for every attempt to land or be left pending."""
        items = list(self.pending.items())
        self._handed.clear()
        self._expected = len(items)
        self._all_handed.clear()
        loop = asyncio.get_running_loop()
        self.attempts = [loop.create_task(self._attempt(cid, index, query, number)) for cid, (index, query) in items]
        await self._all_handed.wait()  # each answered by the cache, refused by the budget, or filed
        self.active = await self._submit()
        await self._wait_for(self.active, bar)
        for custom_id in list(self.waiting):  # a line no batch accounted for
            self._verdict(custom_id, _TryAgain(BatchIncomplete("No batch returned this line.")))
        await asyncio.gather(*self.attempts)

    async def _attempt(self, custom_id: str, index: int, query: Query, number: int) -> None:
        """Query ``index``'s attempt ``number`` through the chain, and its row when it has a verdict."""
        attempt = Attempt(index=index, number=number, batch=True, on_sent=functools.partial(self._sent, index))
        try:
            completion = await self.chain(query, attempt)
        except _TryAgain as again:
            self.last_error[custom_id] = again.error
        except QueryError as error:
            self._fail(custom_id, error)
        else:
            self._answer(custom_id, completion)
        finally:
            self._handed_over(custom_id)

    def _handed_over(self, custom_id: str) -> None:
        """Count ``custom_id``'s attempt as past the links (filed, or done without a line)."""
        if custom_id not in self._handed:
            self._handed.add(custom_id)
            if len(self._handed) >= self._expected:
                self._all_handed.set()

    async def _send(self, query: Query, attempt: Attempt) -> Completion:
        """The chain's last step: the line goes to the provider's side; its verdict comes back."""
        custom_id = self.custom_ids[attempt.index]
        early = self.early.pop(custom_id, None)
        if early is not None:  # answered by a batch reattached after a restart
            self._handed_over(custom_id)
            attempt.mark_sent(self.state.clock())
            if isinstance(early, QueryError):
                raise early
            return early
        body = request_body(query, self.model)
        body.pop("stream", None)
        body.pop("stream_options", None)
        line = orjson.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})
        verdict: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        self.waiting[custom_id] = (attempt, verdict)
        self.queued.append((custom_id, line))
        self._handed_over(custom_id)
        return await verdict

    def _sent(self, index: int, at: float) -> None:
        if index not in self.submitted_at:
            self.submitted_at[index] = at
            self.state.started(index, at)
        self.lines_sent[index] += 1

    def _verdict(self, custom_id: str, verdict: Completion | QueryError | _TryAgain) -> None:
        """Answer the attempt waiting for ``custom_id``; a line of a reattached batch is kept until
        its query asks (a line to try again is simply sent again)."""
        waiting = self.waiting.pop(custom_id, None)
        if waiting is None:
            if custom_id in self.pending:
                if isinstance(verdict, _TryAgain):
                    self.last_error[custom_id] = verdict.error
                else:
                    self.early[custom_id] = verdict
            return
        future = waiting[1]
        if future.done():
            return
        if isinstance(verdict, Completion):
            future.set_result(verdict)
        else:
            future.set_exception(verdict)

    # -- submitting ---------------------------------------------------------------------------
    def _files(self) -> Iterator[list[tuple[str, bytes]]]:
        """The filed lines, cut into files within the provider's limits."""
        limit_n, limit_bytes = self.settings.max_requests_per_file, self.settings.max_bytes_per_file
        lines: list[tuple[str, bytes]] = []
        size = 0
        queued, self.queued = self.queued, []
        for custom_id, line in queued:
            if lines and (len(lines) >= limit_n or size + len(line) + 1 > limit_bytes):
                yield lines
                lines, size = [], 0
            lines.append((custom_id, line))
            size += len(line) + 1
        if lines:
            yield lines

    async def _submit(self) -> list[str]:
        """Upload and start a batch per file of filed lines; their ids (each saved at once)."""
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
                    self._verdict(custom_id, _TryAgain(exc) if exc.retryable else exc)
                continue
            job_id = str(batch["id"])
            if record is not None:
                record.add_remote_job(job_id, kind="batch", input_file_id=file_id, requests=len(ids))
            now = self.state.clock()
            for custom_id in ids:
                self.waiting[custom_id][0].mark_sent(now)
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
                if status == "failed":
                    self._verdict(custom_id, BatchIncomplete(f"Batch {job} failed: {problem}"))
                else:
                    what = "expired before answering it" if status == "expired" else f"ended ({status}) without it"
                    self._verdict(custom_id, _TryAgain(BatchIncomplete(f"Batch {job} {what}.")))
        self.collected_jobs.add(job)
        self.collected += len(seen)
        record = self.ctx.record
        if record is not None:
            record.end_remote_job(job, status)

    def _land_line(self, raw: bytes, job: str) -> str:
        """Give one line of a result file to the attempt waiting for it; its custom_id."""
        try:
            line = orjson.loads(raw)
            custom_id = str(line["custom_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("hybrid: batch %s returned a line that is not a result: %.200r", job, raw)
            return ""
        if custom_id not in self.pending:
            return custom_id  # already answered, or a query this run no longer has
        query = self.pending[custom_id][1]
        response = line.get("response") if isinstance(line.get("response"), dict) else None
        if response is None:
            failure = line.get("error") if isinstance(line.get("error"), dict) else {}
            message = f"Batch {job}: {failure.get('code', 'error')}: {failure.get('message', 'no response')}"
            self._verdict(custom_id, _TryAgain(BatchIncomplete(message)))
            return custom_id
        status, body = response.get("status_code"), response.get("body")
        if status != 200:
            code = status if isinstance(status, int) else 500
            error = error_for_status(code, error_message(body, code), {})
            self._verdict(custom_id, _TryAgain(error) if error.retryable else error)
            return custom_id
        try:
            completion = completion_from_body(query, body, query.model or self.model)
        except QueryError as exc:
            self._verdict(custom_id, _TryAgain(exc))
            return custom_id
        self._verdict(custom_id, completion)
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

    async def _stop(self) -> None:
        """The run is cancelled: cancel its remote batches, let the answers they had land, and end
        the attempts still waiting (their rows become ``cancelled``)."""
        unfinished = [job for job in self.active if job not in self.collected_jobs]
        if unfinished:
            stop = asyncio.ensure_future(self._cancel(unfinished))
            with contextlib.suppress(BaseException):
                await asyncio.shield(stop)
        for _, verdict in self.waiting.values():
            verdict.cancel()
        ending = asyncio.gather(*self.attempts, return_exceptions=True)
        with contextlib.suppress(BaseException):
            await asyncio.shield(ending)

    # -- landing rows -------------------------------------------------------------------------
    def _answer(self, custom_id: str, completion: Completion) -> None:
        index, query = self.pending.pop(custom_id)
        if completion.cached:  # the cache link answered: no line, no cost, no time
            self.port.land_cached([(index, query, completion)])
            return
        self._land(index, query, completion, None, self.port.cost(completion, batch=True))

    def _fail(self, custom_id: str, error: QueryError) -> None:
        index, query = self.pending.pop(custom_id)
        self._land(index, query, None, error.detached(), None)

    def _land(
        self, index: int, query: Query, completion: Completion | None, error: QueryError | None, cost: float | None
    ) -> None:
        now = self.state.clock()
        self.port.land(
            index,
            query,
            completion,
            error,
            attempts=max(1, self.lines_sent[index]),
            origin="batch",
            cost=cost,
            started=self.submitted_at.get(index, now),
            finished=now,
        )


def _batch_problem(batch: dict[str, Any]) -> str:
    """What a failed batch object says went wrong (its first errors)."""
    errors = (batch.get("errors") or {}).get("data") or []
    described = [
        f"line {e.get('line')}: {e.get('message')}" if e.get("line") else str(e.get("message")) for e in errors
    ]
    return "; ".join(described[:3]) or "no reason given"
