"""The simulator's Batch API: OpenAI's ``/v1/files`` and ``/v1/batches``, on the same engine.

A client uploads a JSONL file of ``{"custom_id", "method": "POST", "url": "/v1/chat/completions",
"body"}`` lines (``purpose="batch"``), creates a batch on it, polls the batch object, then downloads
the output file (one ``{"custom_id", "response": {"status_code", "body"}}`` line per answered
request) and the error file.  The official SDK works unchanged against it (``client.files.create``,
``client.batches.create/retrieve/cancel/list``, ``client.files.content``).

A batch walks ``validating -> in_progress -> finalizing -> completed`` (or ``failed`` when a line
of the input is malformed, ``expired``, ``cancelling -> cancelled``).  Its lines run on ``slots``
virtual workers, each taking ``batch_slowdown`` times the latency the live API would give it, so a
batch of a few thousand lines takes minutes of simulated time; ``time_scale`` compresses that, and
since every wait is a loop timer, so does a virtual clock.  Answers are the live API's, seed for
seed (:meth:`Simulator.reply`).  Faults (``Faults.batch_*``) are drawn from the seed, the batch id
and the line, so a line resubmitted in another batch draws again.

:class:`BatchService` is plain Python (upload, create, retrieve, content, cancel ...); the aiohttp
routes call it, and so does the in-process client (:mod:`hybrid.backends.in_process`) through
:meth:`BatchService.call`, which answers a refusal with the body the route would send.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import random
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from hybrid.sim.engine import Rejected
from hybrid.sim.model import Reply, digest, pace
from hybrid.sim.openai_protocol import ChatRequest, Simulator, completion_body, error_body, parse_json_object

ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
#: Progress is published in at most this many steps per batch (a batch object's counts move in jumps).
PROGRESS_STEPS = 100
_JSON = "application/json"


@dataclass(slots=True)
class _File:
    id: str
    data: bytes
    filename: str
    purpose: str
    created_at: int

    def card(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
        }


@dataclass(slots=True)
class _Line:
    """One request of a batch: its answer (or rejection) and when, after the batch started, it lands."""

    custom_id: str
    chat: ChatRequest | None
    rejected: Rejected | None
    reply: Reply | None
    ends_at: float = 0.0


@dataclass(slots=True)
class _Job:
    id: str
    input_file_id: str
    metadata: dict[str, str] | None
    created_at: int
    status: str = "validating"
    times: dict[str, int] = field(default_factory=dict)
    total: int = 0
    completed: int = 0
    failed: int = 0
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    output: list[bytes] = field(default_factory=list)
    error_lines: list[bytes] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def card(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": ENDPOINT,
            "errors": None if self.errors is None else {"object": "list", "data": self.errors},
            "input_file_id": self.input_file_id,
            "completion_window": COMPLETION_WINDOW,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.times.get("in_progress"),
            "expires_at": self.created_at + 24 * 3600,
            "finalizing_at": self.times.get("finalizing"),
            "completed_at": self.times.get("completed"),
            "failed_at": self.times.get("failed"),
            "expired_at": self.times.get("expired"),
            "cancelling_at": self.times.get("cancelling"),
            "cancelled_at": self.times.get("cancelled"),
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
        }

    def enter(self, status: str) -> None:
        self.status = status
        self.times[status] = int(time.time())


class BatchService:
    """Files and batches of one simulator (see the module docstring)."""

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator
        self.config = simulator.config
        self.files: dict[str, _File] = {}
        self.jobs: dict[str, _Job] = {}
        self._ids = 0
        #: Lines answered (ok or error) by every batch, for tests and stats.
        self.lines_answered = 0

    def _new_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}-sim{digest(self.config.seed, prefix, self._ids) % 16**12:012x}{self._ids:06d}"

    # -- files --------------------------------------------------------------------------------
    def upload(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        if purpose != "batch":
            raise Rejected(400, "The simulator stores files for purpose='batch' only.", param="purpose")
        stored = _File(self._new_id("file"), data, filename, purpose, int(time.time()))
        self.files[stored.id] = stored
        return stored.card()

    def _file(self, file_id: str) -> _File:
        try:
            return self.files[file_id]
        except KeyError:
            raise Rejected(404, f"No such File object: {file_id}", param="file_id", code="not_found") from None

    def file(self, file_id: str) -> dict[str, Any]:
        return self._file(file_id).card()

    def content(self, file_id: str) -> bytes:
        return self._file(file_id).data

    def delete(self, file_id: str) -> dict[str, Any]:
        self._file(file_id)
        del self.files[file_id]
        return {"id": file_id, "object": "file", "deleted": True}

    # -- batches ------------------------------------------------------------------------------
    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("endpoint") != ENDPOINT:
            raise Rejected(400, f"The simulator batches only {ENDPOINT}.", param="endpoint")
        if body.get("completion_window") != COMPLETION_WINDOW:
            raise Rejected(400, "completion_window must be '24h'.", param="completion_window")
        source = self._file(str(body.get("input_file_id")))
        metadata = body.get("metadata")
        job = _Job(self._new_id("batch"), source.id, metadata if isinstance(metadata, dict) else None, int(time.time()))
        self.jobs[job.id] = job
        job.task = asyncio.get_running_loop().create_task(self._process(job, source.data), name=f"sim-{job.id}")
        return job.card()

    def _job(self, batch_id: str) -> _Job:
        try:
            return self.jobs[batch_id]
        except KeyError:
            raise Rejected(404, f"No such Batch object: {batch_id}", param="batch_id", code="not_found") from None

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        return self._job(batch_id).card()

    def list_batches(self, *, limit: int = 20, after: str | None = None) -> dict[str, Any]:
        ids = list(reversed(self.jobs))  # newest first, as OpenAI lists them
        if after is not None and after in self.jobs:
            ids = ids[ids.index(after) + 1 :]
        page = [self.jobs[i].card() for i in ids[:limit]]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(ids) > limit,
        }

    def cancel(self, batch_id: str) -> dict[str, Any]:
        job = self._job(batch_id)
        if job.status in ("validating", "in_progress", "finalizing"):
            job.enter("cancelling")
            job.stop.set()
        return job.card()

    async def aclose(self) -> None:
        """Stop every batch still running (the server is shutting down)."""
        tasks = [job.task for job in self.jobs.values() if job.task is not None and not job.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- processing ---------------------------------------------------------------------------
    async def _wait(self, job: _Job, seconds: float) -> bool:
        """Sleep ``seconds`` unless the batch is cancelled first; True if it was."""
        if seconds <= 0:
            return job.stop.is_set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(job.stop.wait(), seconds)
        return job.stop.is_set()

    async def _process(self, job: _Job, data: bytes) -> None:
        cfg = self.config
        if await self._wait(job, cfg.batch_validate_s * cfg.time_scale):
            return self._finish(job, [], "cancelled")
        lines = self._parse(job, data)
        if lines is None:
            job.enter("failed")
            return None
        job.total = len(lines)
        job.enter("in_progress")
        plan = self._schedule(lines)
        expires = random.Random(digest(cfg.seed, "batch-expire", job.id)).random() < cfg.faults.batch_expire
        cutoff = plan[-1].ends_at / 2 if expires and plan else None
        loop = asyncio.get_running_loop()
        start = loop.time()
        step = max(1, len(plan) // PROGRESS_STEPS)
        landed: list[_Line] = []
        for first in range(0, len(plan), step):
            chunk = plan[first : first + step]
            if cutoff is not None and chunk[-1].ends_at > cutoff:
                chunk = [line for line in chunk if line.ends_at <= cutoff]
                self._land(job, chunk)
                landed.extend(chunk)
                return self._finish(job, plan[len(landed) :], "expired")
            if await self._wait(job, start + chunk[-1].ends_at - loop.time()):
                return self._finish(job, [], "cancelled")
            self._land(job, chunk)
            landed.extend(chunk)
        job.enter("finalizing")
        if await self._wait(job, cfg.batch_finalize_s * cfg.time_scale):
            return self._finish(job, [], "cancelled")
        return self._finish(job, [], "completed")

    def _parse(self, job: _Job, data: bytes) -> list[_Line] | None:
        """The batch's lines, validated like OpenAI's (a malformed line fails the whole batch);
        None, with ``job.errors`` set, when the file is rejected."""
        errors: list[dict[str, Any]] = []
        lines: list[_Line] = []
        seen: set[str] = set()
        raw_lines = [line for line in data.splitlines() if line.strip()]
        if len(raw_lines) > self.config.batch_max_requests:
            errors.append(
                {
                    "code": "too_many_requests",
                    "message": f"A batch holds at most {self.config.batch_max_requests} requests.",
                    "param": None,
                    "line": None,
                }
            )
        for number, raw in enumerate(raw_lines, start=1):
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError:
                item = None
            custom_id = item.get("custom_id") if isinstance(item, dict) else None
            problem = None
            if not isinstance(item, dict) or not isinstance(item.get("body"), dict):
                problem = ("invalid_json_line", "This line is not a JSON object with a body object.")
            elif not isinstance(custom_id, str) or not custom_id or custom_id in seen:
                problem = ("invalid_custom_id", "custom_id must be a non-empty string, unique within the batch.")
            elif item.get("method") != "POST" or item.get("url") != ENDPOINT:
                problem = ("invalid_url", f"Every line must be a POST to {ENDPOINT}.")
            if problem is not None:
                errors.append({"code": problem[0], "message": problem[1], "param": None, "line": number})
                continue
            assert isinstance(item, dict) and isinstance(custom_id, str)
            seen.add(custom_id)
            lines.append(self._line(custom_id, item["body"]))
        if errors:
            job.errors = errors[:100]
            return None
        return lines

    def _line(self, custom_id: str, body: dict[str, Any]) -> _Line:
        try:
            chat = self.simulator.validate({**body, "stream": False, "stream_options": None})
        except Rejected as rejected:
            return _Line(custom_id, None, rejected, None)
        return _Line(custom_id, chat, None, self.simulator.reply(chat))

    def _schedule(self, lines: list[_Line]) -> list[_Line]:
        """When each line lands: list scheduling on ``slots`` workers at the slowed-down live
        latency; the lines in the order they land."""
        cfg = self.config
        scale = cfg.time_scale * cfg.batch_slowdown
        if scale == 0:
            return lines
        free = [0.0] * min(cfg.slots, len(lines))
        for line in lines:
            if line.reply is None or line.chat is None:
                continue
            p = pace(cfg.profiles[line.chat.model], line.reply, seed=cfg.seed, time_scale=scale)
            start = heapq.heappop(free)
            line.ends_at = start + p.ttft_s + p.decode_s(line.reply.completion_tokens, 1)
            heapq.heappush(free, line.ends_at)
        return sorted(lines, key=lambda line: line.ends_at)

    def _land(self, job: _Job, lines: list[_Line]) -> None:
        """Answer ``lines``: each into the output file, the error file, or (a fault) neither."""
        faults = self.config.faults
        engine = self.simulator.engine
        for line in lines:
            request_id = f"req-sim{digest(job.id, line.custom_id) % 16**16:016x}"
            record: dict[str, Any] = {"id": f"batch_req_{request_id[7:]}", "custom_id": line.custom_id, "error": None}
            draw = random.Random(digest(self.config.seed, "batch-line", job.id, line.custom_id)).random()
            self.lines_answered += 1
            rejected = line.rejected
            if rejected is None and draw < faults.batch_line_error:
                rejected = Rejected(500, "The server had an error (injected).", type_="server_error")
            if rejected is not None:
                record["response"] = {
                    "status_code": rejected.status,
                    "request_id": request_id,
                    "body": orjson.loads(error_body(rejected.message, rejected.type, rejected.param, rejected.code)),
                }
                job.failed += 1
                job.error_lines.append(orjson.dumps(record))
            elif draw < faults.batch_line_error + faults.batch_line_missing:
                job.completed += 1  # the server says so; the line is in neither file
            else:
                assert line.reply is not None and line.chat is not None
                engine.prompt_tokens += line.reply.prompt_tokens
                engine.completion_tokens += line.reply.completion_tokens
                body = completion_body(line.reply, line.chat.model, f"chatcmpl-{request_id}", with_usage=True)
                record["response"] = {"status_code": 200, "request_id": request_id, "body": body}
                job.completed += 1
                job.output.append(orjson.dumps(record))

    def _finish(self, job: _Job, unfinished: list[_Line], status: str) -> None:
        """Write the output and error files and enter the final ``status``; ``unfinished`` lines
        (an expired batch's) go to the error file as ``batch_expired``."""
        for line in unfinished:
            record = {
                "id": f"batch_req_expired{digest(job.id, line.custom_id) % 16**12:012x}",
                "custom_id": line.custom_id,
                "response": None,
                "error": {
                    "code": "batch_expired",
                    "message": "This request could not be executed before the completion window expired.",
                },
            }
            job.error_lines.append(orjson.dumps(record))
        if job.output:
            job.output_file_id = self.upload(b"\n".join(job.output) + b"\n", f"{job.id}_output.jsonl", "batch")["id"]
        if job.error_lines:
            job.error_file_id = self.upload(b"\n".join(job.error_lines) + b"\n", f"{job.id}_error.jsonl", "batch")["id"]
        job.output, job.error_lines = [], []
        job.enter(status)

    # -- no transport -------------------------------------------------------------------------
    #: What :meth:`call` answers: the operations ``mode="batch"`` uses.
    OPERATIONS = frozenset({"upload", "create", "retrieve", "content", "cancel"})

    def call(self, operation: str, *args: Any) -> tuple[int, Any, dict[str, str]]:
        """One of :attr:`OPERATIONS` for a client in this process: ``(200, its result, {})``, or a
        refusal as its HTTP route sends it, ``(status, OpenAI's error body, headers)``."""
        if operation not in self.OPERATIONS:
            raise ValueError(f"BatchService.call: no operation {operation!r}; known: {sorted(self.OPERATIONS)}")
        try:
            return 200, getattr(self, operation)(*args), {}
        except Rejected as rejected:
            body = error_body(rejected.message, rejected.type, rejected.param, rejected.code)
            return rejected.status, body, rejected.headers

    # -- HTTP ---------------------------------------------------------------------------------
    def add_routes(self, app: web.Application) -> None:
        routes = [
            ("POST", "/v1/files", self._upload_route),
            ("GET", "/v1/files/{id}", self._file_route),
            ("DELETE", "/v1/files/{id}", self._delete_route),
            ("GET", "/v1/files/{id}/content", self._content_route),
            ("POST", "/v1/batches", self._create_route),
            ("GET", "/v1/batches", self._list_route),
            ("GET", "/v1/batches/{id}", self._retrieve_route),
            ("POST", "/v1/batches/{id}/cancel", self._cancel_route),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, _guarded(self.simulator, handler))
        app.on_cleanup.append(lambda _app: self.aclose())

    async def _upload_route(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, web.FileField) or not isinstance(purpose, str):
            raise Rejected(400, "Send multipart form data with a file and a purpose.", param="file")
        return _json(self.upload(upload.file.read(), upload.filename, purpose))

    async def _file_route(self, request: web.Request) -> web.StreamResponse:
        return _json(self.file(request.match_info["id"]))

    async def _delete_route(self, request: web.Request) -> web.StreamResponse:
        return _json(self.delete(request.match_info["id"]))

    async def _content_route(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self.content(request.match_info["id"]), content_type="application/octet-stream")

    async def _create_route(self, request: web.Request) -> web.StreamResponse:
        return _json(self.create(parse_json_object(await request.read())))

    async def _list_route(self, request: web.Request) -> web.StreamResponse:
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            raise Rejected(400, "limit must be an integer.", param="limit") from None
        return _json(self.list_batches(limit=max(1, min(limit, 100)), after=request.query.get("after")))

    async def _retrieve_route(self, request: web.Request) -> web.StreamResponse:
        return _json(self.retrieve(request.match_info["id"]))

    async def _cancel_route(self, request: web.Request) -> web.StreamResponse:
        return _json(self.cancel(request.match_info["id"]))


def _json(body: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type=_JSON)


def _guarded(simulator: Simulator, handler: Any) -> Any:
    """``handler`` behind the simulator's key check, request counting and error shaping."""

    async def checked(request: web.Request) -> web.StreamResponse:
        simulator.check_key(request.headers.get("Authorization"))
        response: web.StreamResponse = await handler(request)
        return response

    async def route(request: web.Request) -> web.StreamResponse:
        return await simulator.guarded(request, checked)

    return route
