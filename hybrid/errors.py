"""Every error the kit raises, in one tree rooted at :class:`HybridError`.

Errors from the HTTP layer (the ``openai`` SDK, ``httpx2``, ``aiohttp``) are translated once, at
the backend boundary, with ``raise ... from exc``; nothing above a backend sees a foreign
exception type.  Two families hang from the root:

::

    HybridError
    ├── ConfigError            bad input, raised before any request is sent
    │   └── TemplateError      a pipeline placeholder that cannot be filled safely
    ├── QueryError             one query failed; stored on QueryResult.error, never lost
    │   ├── RateLimited        429           retryable, carries retry_after_s
    │   ├── ServerError        5xx           retryable
    │   ├── ConnectionFailed   refused/reset retryable
    │   ├── InvalidResponse    garbage body, truncated stream   retryable
    │   ├── BadRequest         400/404/422   not retryable
    │   ├── AuthenticationFailed 401/403     not retryable
    │   ├── QueryTimeout       the per-query timeout (one scope over all attempts)
    │   ├── DependencyFailed   a pipeline query whose input query failed (never sent)
    │   ├── BatchIncomplete    the Batch API did not answer it (expired, failed, missing) after resubmits
    │   └── Cancelled          the run was cancelled before this query finished
    └── AllQueriesFailed       every query of a run failed; carries the RunResult

``QueryError.retryable`` is what the retry loop reads; it is a class attribute so the decision
lives with the error kind, not in the retry code.  A plain ``QueryError`` (kind ``error``) is what
a backend bug becomes: something a backend raised without translating it.  The orchestrator logs
it with its traceback and keeps the original as ``__cause__``.

A failed row keeps its error for as long as the run lives, so errors hold only what a user reads
(kind, message, status, Retry-After): :meth:`QueryError.detached` drops the transport exception
chain and its traceback frames, which would otherwise pin kilobytes per row (and, in aiohttp's
``request_info``, the request headers with the API key).

The ``check_*`` helpers at the end are the one way the kit rejects a bad setting: each raises a
:class:`ConfigError` naming the setting, the value it got and what it wants.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from hybrid.results import RunResult


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception behind it (``__cause__``, else ``__context__``): backends look
    through a transport's wrapping for the fault that really happened."""
    current: BaseException | None = exc
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


class HybridError(Exception):
    """Root of every exception the kit raises."""


class ConfigError(HybridError, ValueError):
    """Invalid input or settings, detected before anything is sent; the message says what to do."""


class TemplateError(ConfigError):
    """A pipeline prompt placeholder that is not a plain name of an earlier query."""


class QueryError(HybridError):
    """One query failed.  Stored on :attr:`QueryResult.error`; a run never loses the row."""

    retryable: ClassVar[bool] = False
    kind: ClassVar[str] = "error"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def detached(self) -> QueryError:
        """This error without its exception chain and traceback: what a result row should keep."""
        self.__cause__ = None
        self.__context__ = None
        self.__suppress_context__ = True
        self.__traceback__ = None
        return self


class RateLimited(QueryError):
    """The server said 429; ``retry_after_s`` is its Retry-After, when it sent one."""

    retryable = True
    kind = "rate_limited"

    def __init__(self, message: str, *, status: int | None = 429, retry_after_s: float | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_after_s = retry_after_s


class ServerError(QueryError):
    """The server answered 5xx."""

    retryable = True
    kind = "server_error"


class ConnectionFailed(QueryError):
    """The connection could not be made, or was dropped before a full answer arrived."""

    retryable = True
    kind = "connection_failed"


class InvalidResponse(QueryError):
    """The server answered, but not with a usable completion (malformed JSON, truncated stream)."""

    retryable = True
    kind = "invalid_response"


class BadRequest(QueryError):
    """The server rejected the request itself (400, 404 unknown model, 422): retrying cannot help."""

    kind = "bad_request"


class AuthenticationFailed(QueryError):
    """401/403: the API key is missing, wrong, or not allowed to do this."""

    kind = "authentication"


class QueryTimeout(QueryError):
    """The per-query timeout expired; it covers every attempt and every backoff of the query."""

    kind = "timeout"


class DependencyFailed(QueryError):
    """A pipeline query was not sent because a query it names in its prompt failed."""

    kind = "dependency_failed"


class BatchIncomplete(QueryError):
    """``mode="batch"``: the provider's Batch API gave no answer for this query (its batch failed
    or expired, or the line was missing from both result files), also after the resubmissions."""

    kind = "batch_incomplete"


class BudgetExceeded(QueryError):
    """Not sent: the attempt's worst-case cost would have taken the run past ``budget_usd``."""

    kind = "budget"


class NotRecorded(QueryError):
    """``cache="replay"``: the store holds no answer to this query, so nothing was sent.  The message
    says which part of the request differs from the closest recording (or that there is none) and
    how to record it.  Never retried: asking again cannot make a recording appear."""

    kind = "not_recorded"


class Cancelled(QueryError):
    """The run was cancelled (task cancel, notebook interrupt) before this query finished."""

    kind = "cancelled"


def error_of_kind(kind: str, message: str, *, status: int | None = None) -> QueryError:
    """The :class:`QueryError` subclass whose ``kind`` is ``kind`` (a plain ``QueryError`` for an
    unknown kind): how a stored row gets its error back."""
    classes: list[type[QueryError]] = [QueryError, *_subclasses(QueryError)]
    cls = next((c for c in classes if c.kind == kind), QueryError)
    return cls(message, status=status)


def _subclasses(cls: type[QueryError]) -> list[type[QueryError]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


class AllQueriesFailed(HybridError):
    """Every query of a run failed.  ``.run`` holds the RunResult with each query's error."""

    def __init__(self, run: RunResult) -> None:
        kinds = sorted({r.error.kind for r in run.results if r.error is not None})
        first = next((r for r in run.results if r.error is not None), None)
        detail = f" First error ({first.name}): {first.error}" if first is not None else ""
        super().__init__(
            f"All {len(run.results)} queries failed ({', '.join(kinds)}).{detail} "
            "Inspect `exc.run.to_frame()` for every error."
        )
        self.run = run


# -- validating settings ---------------------------------------------------------------------------
def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` if it is an integer (not a bool) within bounds, else :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r} ({type(value).__name__}).")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value!r}.")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be <= {maximum}, got {value!r}.")
    return value


def check_number(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
    unit: str = "",
) -> float:
    """``value`` as a float if it is a finite real number (not a bool, not a string) within
    bounds; ``positive`` excludes zero."""
    what = f"a finite number{f' of {unit}' if unit else ''}"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be {what}, got {value!r} ({type(value).__name__}).")
    if positive and value <= 0:
        raise ConfigError(f"{name} must be {what} > 0, got {value!r}.")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be {what} >= {minimum}, got {value!r}.")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be {what} <= {maximum}, got {value!r}.")
    return float(value)


def check_text(name: str, value: Any, *, optional: bool = False) -> str | None:
    """``value`` if it is a non-blank string that can be encoded as UTF-8 (no lone surrogates)."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r} ({type(value).__name__}).")
    if not value.strip():
        raise ConfigError(f"{name} must not be empty or blank.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(
            f"{name} holds a character that is not valid Unicode text (a lone surrogate at position {exc.start}); "
            "decode your input with errors='replace' first."
        ) from None
    return value


def check_choice(name: str, value: Any, choices: Collection[Any]) -> Any:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")
    return value
