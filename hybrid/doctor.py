"""``hybrid doctor``: is this endpoint usable, and if not, what to do about it.

One real call, and one streamed, to the endpoint the kit would use (``--base-url`` or
``OPENAI_BASE_URL``, the key from ``--api-key`` or ``OPENAI_API_KEY``, the model from ``--model``
or ``OPENAI_MODEL``), through the same :class:`~hybrid.backends.HTTPBackend` a run uses: whether
the host answers, which key is used (masked), which model answered, how long the call took,
whether streaming works, and what rate limits the server reports.  Each problem comes with the fix.
The key is never printed whole.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from hybrid.backends import HTTPBackend
from hybrid.errors import AuthenticationFailed, BadRequest, ConfigError, QueryError
from hybrid.query import Completion, Query

#: What the doctor asks: short, so a paid endpoint charges a few tokens.
PROBE = Query("doctor", "Say OK.", max_tokens=4)


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the report: what was checked, what was found, and the fix when it is a problem."""

    check: str
    found: str
    fix: str | None = None

    def __str__(self) -> str:
        mark = "ok " if self.fix is None else "!! "
        return f"{mark}{self.check:12} {self.found}" + ("" if self.fix is None else f"\n   {'':12} fix: {self.fix}")


async def examine(base_url: str | None, api_key: str | None, model: str | None) -> list[Finding]:
    """The findings for one endpoint (see the module docstring); stops at the first problem that
    makes the later checks meaningless."""
    try:
        backend = HTTPBackend(base_url=base_url, api_key=api_key, model=model)
    except ConfigError as exc:
        return [Finding("settings", "incomplete", str(exc))]
    findings = [Finding("endpoint", backend.base_url)]
    if backend.key_hint == "none":
        return [
            *findings,
            Finding("key", "none", "set OPENAI_API_KEY (or pass --api-key); any word for a local server"),
        ]
    findings.append(Finding("key", backend.key_hint))
    try:
        await backend.open(max_connections=2, query_timeout=60.0)
    except ConfigError as exc:
        what, _, fix = str(exc).partition(". ")
        return [*findings, Finding("reachable", f"no: {what}", fix or None)]
    try:
        findings.append(Finding("reachable", "yes"))
        started = time.perf_counter()
        try:
            answer = await backend.complete(PROBE)
        except QueryError as exc:
            return [*findings, _refusal(exc, backend.model)]
        latency = time.perf_counter() - started
        findings += [
            Finding("model", f"{answer.model} answered ({backend.model!r} was asked for)"),
            Finding("latency", f"{latency * 1000:.0f} ms for one short answer"),
            await _stream_finding(backend),
            _limits(answer),
        ]
    finally:
        await backend.aclose()
    return findings


async def _stream_finding(backend: HTTPBackend) -> Finding:
    try:
        streamed = await backend.complete(Query("doctor", PROBE.prompt, max_tokens=4, stream=True))
    except QueryError as exc:
        return Finding("streaming", f"failed ({exc.kind}: {exc})", "run with Query(stream=False), the default")
    if streamed.ttft_s is None:
        return Finding("streaming", "answered, but not as a stream", "use Query(stream=False); nothing is lost")
    return Finding("streaming", f"yes, first token after {streamed.ttft_s * 1000:.0f} ms")


def _limits(answer: Completion) -> Finding:
    report = answer.server
    if report is None or (report.remaining_requests is None and report.remaining_tokens is None):
        return Finding("rate limits", "the server sends no x-ratelimit-* headers (set rpm=/tpm= yourself)")
    parts = [
        f"{report.remaining_requests} requests left" if report.remaining_requests is not None else "",
        f"{report.remaining_tokens} tokens left" if report.remaining_tokens is not None else "",
        f"requests reset in {report.reset_requests_s:g} s" if report.reset_requests_s is not None else "",
    ]
    return Finding("rate limits", ", ".join(p for p in parts if p) + " (max_concurrency='auto' follows them)")


def _refusal(error: QueryError, model: str) -> Finding:
    """The finding for a call the server refused, with what to change."""
    if isinstance(error, AuthenticationFailed):
        return Finding(
            "key", f"refused by the server ({error.status})", "set OPENAI_API_KEY (or --api-key) to a key it accepts"
        )
    if isinstance(error, BadRequest) and error.status == 404:
        return Finding("model", f"{model!r} is unknown to the server", "set OPENAI_MODEL (or --model) to one it serves")
    return Finding("call", f"failed ({error.kind}: {error})", "check the server's logs; then run hybrid doctor again")
