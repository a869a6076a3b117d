"""What to ask (:class:`Query`) and what came back for one query (:class:`QueryResult`).

A :class:`Query` is validated when it is built, so a bad prompt or setting fails in the cell that
wrote it, before any request is sent.  A :class:`QueryResult` exists for every query of a run,
whatever happened: ``ok`` tells whether ``text`` or ``error`` is the answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from types import MappingProxyType
from typing import Any

from hybrid.errors import ConfigError, QueryError, check_int, check_number, check_text


@dataclass(frozen=True, slots=True)
class Query:
    """One prompt to send.  ``name`` labels the row and lets pipeline prompts refer to the answer."""

    name: str
    prompt: str
    _: KW_ONLY
    system: str | None = None
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    stream: bool = False
    json_mode: bool = False
    #: Which repeat of the same request this is (0, 1, ...): repeated samples at temperature > 0
    #: get distinct cache entries; not sent to the server.
    sample: int = 0
    #: Free-form labels carried to the result row; not part of the hash (values need not be hashable).
    metadata: Mapping[str, Any] | None = field(default=None, hash=False)
    #: Earlier turns of a conversation, sent before ``prompt``: ``(role, content)`` pairs, role
    #: ``"user"`` or ``"assistant"``.  A multi-turn session's next turn carries the real answers so far.
    history: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        name = self.name if isinstance(self.name, str) and self.name.strip() else None
        if name is None:
            raise ConfigError(f"Query name must be a non-empty string, got {self.name!r}: give each query a label.")
        if not isinstance(self.prompt, str):
            raise ConfigError(
                f"Query {name!r}: prompt must be a string, got {type(self.prompt).__name__}; format it into text first."
            )
        if not self.prompt.strip():
            raise ConfigError(f"Query {name!r}: prompt is empty; write what the model should answer.")
        check_text(f"Query {name!r}: prompt", self.prompt)
        check_text(f"Query {name!r}: system", self.system, optional=True)
        check_text(f"Query {name!r}: model", self.model, optional=True)
        if self.max_tokens is not None:
            check_int(f"Query {name!r}: max_tokens", self.max_tokens, minimum=1)
        if self.temperature is not None:
            check_number(f"Query {name!r}: temperature", self.temperature, minimum=0.0, maximum=2.0)
        check_int(f"Query {name!r}: sample", self.sample, minimum=0)
        for flag in ("stream", "json_mode"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"Query {name!r}: {flag} must be True or False, got {getattr(self, flag)!r}.")
        if self.history or not isinstance(self.history, tuple):
            object.__setattr__(self, "history", _checked_history(name, self.history))
        if self.metadata is not None:
            if not isinstance(self.metadata, Mapping):
                raise ConfigError(f"Query {name!r}: metadata must be a mapping (a dict) or None.")
            # A read-only copy: the query stays frozen even if the caller's dict changes later.
            object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    def messages(self) -> list[dict[str, str]]:
        """The chat messages this query sends."""
        messages = [] if self.system is None else [{"role": "system", "content": self.system}]
        messages.extend({"role": role, "content": content} for role, content in self.history)
        messages.append({"role": "user", "content": self.prompt})
        return messages


ROLES = ("user", "assistant")


def _checked_history(name: str, history: Any) -> tuple[tuple[str, str], ...]:
    """``history`` as a tuple of ``(role, content)`` pairs (a list of lists, as JSON gives it back,
    is accepted), or a :class:`ConfigError` that says which turn is wrong."""
    if isinstance(history, str | bytes) or not hasattr(history, "__iter__"):
        raise ConfigError(f"Query {name!r}: history must be a sequence of (role, content) pairs.")
    turns = []
    for i, turn in enumerate(history):
        if not (isinstance(turn, tuple | list) and len(turn) == 2 and turn[0] in ROLES and isinstance(turn[1], str)):
            raise ConfigError(
                f"Query {name!r}: history[{i}] must be a (role, content) pair with role 'user' or 'assistant' "
                f"and text content, got {turn!r}."
            )
        turns.append((turn[0], turn[1]))
    return tuple(turns)


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Token counts of one completion.  ``estimated`` is true when the server sent none;
    ``cached_prompt_tokens`` is the part of the prompt the provider served from its prompt cache
    (``prompt_tokens_details.cached_tokens``), billed at a lower rate."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False
    cached_prompt_tokens: int = 0

    def __post_init__(self) -> None:
        # Validated here so that one bad count from a server can never break a run's totals later.
        # The common case is checked in one line (a Usage is made per answer); check_int words the error.
        p, c, cached = self.prompt_tokens, self.completion_tokens, self.cached_prompt_tokens
        if type(p) is int and type(c) is int and type(cached) is int and p >= 0 and c >= 0 and 0 <= cached <= p:
            return
        check_int("Usage.prompt_tokens", self.prompt_tokens, minimum=0)
        check_int("Usage.completion_tokens", self.completion_tokens, minimum=0)
        check_int("Usage.cached_prompt_tokens", self.cached_prompt_tokens, minimum=0, maximum=self.prompt_tokens)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            estimated=self.estimated or other.estimated,
            cached_prompt_tokens=self.cached_prompt_tokens + other.cached_prompt_tokens,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerReport:
    """What a server said about itself in one answer, when it says anything: how long the request
    waited for the server's capacity (``queue_s``) and how long the server worked on it
    (``service_s``), and how much of its rate limits is left (``remaining_requests``,
    ``remaining_tokens``) with the seconds until they refill (``reset_requests_s``,
    ``reset_tokens_s``).  Every field is None when the server did not send it.

    Sources (:func:`hybrid.backends.openai_wire.server_report`): the simulator's
    ``x-hybrid-queue-ms`` header and llama.cpp-style ``timings``; llama.cpp's ``timings``
    (``prompt_ms + predicted_ms``); OpenAI's ``openai-processing-ms``; the
    ``x-ratelimit-remaining-*`` / ``x-ratelimit-reset-*`` headers.
    """

    queue_s: float | None = None
    service_s: float | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Completion:
    """What a backend returns for one successful attempt.

    ``left_at`` is when the request was handed to the transport (a reading of the run's clock),
    when the backend can tell: the time before it is the client's own (building the request, the
    SDK's work, a thread pool's queue, a busy event loop).  ``server`` is what the server reported
    about the request.  Both feed a row's decomposition of its latency.
    """

    text: str
    usage: Usage
    model: str
    finish_reason: str | None = None
    ttft_s: float | None = None
    #: True when the response cache answered instead of the server (no request was sent).
    cached: bool = False
    left_at: float | None = None
    server: ServerReport | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Price:
    """US dollars per million tokens, prompt and completion, for one model.  ``cached_prompt_per_mtok``
    prices prompt tokens the provider served from its prompt cache (default: the full prompt price),
    so a cost is not overstated when the API reports them.  ``batch_discount`` is what the
    provider's Batch API charges relative to the live API (OpenAI and Anthropic: half).  ``source``
    says where the price came from, for estimates and reports: yours, or the table of
    :mod:`hybrid.pricing`."""

    prompt_per_mtok: float
    completion_per_mtok: float
    cached_prompt_per_mtok: float | None = None
    batch_discount: float = 0.5
    source: str = "your prices="

    def __post_init__(self) -> None:
        for name in ("prompt_per_mtok", "completion_per_mtok", "cached_prompt_per_mtok"):
            if name == "cached_prompt_per_mtok" and self.cached_prompt_per_mtok is None:
                continue
            check_number(f"Price({name}=...)", getattr(self, name), minimum=0.0, unit="dollars per million tokens")
        check_number("Price(batch_discount=...) (0.5 = half price)", self.batch_discount, minimum=0.0, maximum=1.0)

    def cost(self, usage: Usage) -> float:
        cached = usage.cached_prompt_tokens
        cached_rate = self.prompt_per_mtok if self.cached_prompt_per_mtok is None else self.cached_prompt_per_mtok
        return (
            (usage.prompt_tokens - cached) * self.prompt_per_mtok
            + cached * cached_rate
            + usage.completion_tokens * self.completion_per_mtok
        ) / 1e6


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryResult:
    """The outcome of one query: an answer or an error, with its timings and usage.

    Times are seconds.  ``started_s``/``finished_s`` are offsets from the start of the run;
    ``queue_s`` is the wait for a concurrency slot (and rate limiter) before the first byte was
    sent, including the client's own time to start earlier queries (workers start one loop turn
    apart, so with slots to spare a query still waits for the requests built before it);
    ``latency_s`` runs from the first byte sent to the last byte received, retries and backoff
    included; ``ttft_s`` is the first token of the successful attempt, when streamed.

    A row that was answered over the wire splits its ``latency_s`` into parts that add up to it
    (ARCHITECTURE.md, "Metrics"): ``retry_s`` (failed attempts and backoff before the last attempt),
    ``client_s`` (the client's time before the last request left), ``server_queue_s`` and
    ``server_s`` (the server's queue and work, when it reports them; None otherwise) and
    ``network_s`` (the rest: the network, reading the answer, and server time it did not report).
    The wait before the first attempt is ``queue_s``, the client's queue.

    ``scheduled_s`` is when an open-loop run (a trace replay) meant to send the query, as an offset
    from the run's start; None in a closed run, where every query is due at the start.  Its
    ``queue_s`` then counts from that moment, so ``started_s - scheduled_s`` is how late the client
    sent it: the lag that coordinated omission hides.
    """

    query: Query
    index: int
    text: str | None = None
    error: QueryError | None = None
    usage: Usage = field(default_factory=Usage)
    model: str | None = None
    finish_reason: str | None = None
    latency_s: float = 0.0
    queue_s: float = 0.0
    ttft_s: float | None = None
    attempts: int = 0
    started_s: float = 0.0
    finished_s: float = 0.0
    stage: int | None = None
    cost_usd: float | None = None
    #: ``"sent"`` (answered over the wire in this run), ``"batch"`` (answered by the provider's Batch
    #: API in this run, at the batch price), ``"cache"`` (the response cache answered, or in a replay
    #: had no answer: error kind ``not_recorded``, nothing sent) or
    #: ``"resumed"`` (answered ok in an earlier run of the same name).  Only sent rows enter the
    #: timing metrics.
    origin: str = "sent"
    retry_s: float | None = None
    client_s: float | None = None
    server_queue_s: float | None = None
    server_s: float | None = None
    network_s: float | None = None
    scheduled_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def name(self) -> str:
        return self.query.name

    @property
    def retries(self) -> int:
        return max(0, self.attempts - 1)

    def as_row(self) -> dict[str, Any]:
        """One flat row for a DataFrame or JSON export (no secrets, no Python objects)."""
        return {
            "name": self.name,
            "index": self.index,
            "stage": self.stage,
            "ok": self.ok,
            "text": self.text,
            "error_kind": None if self.error is None else self.error.kind,
            "error": None if self.error is None else str(self.error),
            "model": self.model,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
            "total_tokens": self.usage.total_tokens,
            "tokens_estimated": self.usage.estimated,
            "cost_usd": self.cost_usd,
            "latency_s": self.latency_s,
            "queue_s": self.queue_s,
            "ttft_s": self.ttft_s,
            "attempts": self.attempts,
            "retries": self.retries,
            "started_s": self.started_s,
            "finished_s": self.finished_s,
            "origin": self.origin,
            "retry_s": self.retry_s,
            "client_s": self.client_s,
            "server_queue_s": self.server_queue_s,
            "server_s": self.server_s,
            "network_s": self.network_s,
            "scheduled_s": self.scheduled_s,
            "cached_prompt_tokens": self.usage.cached_prompt_tokens,
        }
