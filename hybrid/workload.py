"""Workloads: the load a product really sends, read from a trace, to replay with :func:`hybrid.bench.replay`.

A :class:`Workload` is a list of :class:`Request` in trace order: when each arrives (``t``, seconds
from the trace's start), which conversation it belongs to (``session``, ``turn``), what it asks
(its ``prompt``, or only its size in ``prompt_tokens``, of which the first ``prefix_tokens`` are a
``prefix`` shared by every request naming it), how long an answer it wants (``max_tokens``) and how
long the user thought before sending it (``think_s``).  ``docs/workloads.md`` documents the format.

Three sources:

* :func:`load` — the kit's JSONL trace format, one request per line;
* :func:`from_otlp` — OpenTelemetry GenAI spans as the collector's file exporter writes them
  (OTLP/JSON, one export per line): arrival, tokens, conversation and think time from the spans;
* :func:`from_run` — a run in a :class:`~hybrid.Store`: replay what a notebook once sent.

A request given by size gets seeded filler text of that many tokens (the kit's token rule), the
same on every machine, with its prefix's text shared word for word, so a server's prefix cache
sees exactly the sharing the trace describes.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from hybrid.errors import ConfigError
from hybrid.query import Query
from hybrid.validity import PREFIX_KEY

if TYPE_CHECKING:
    from hybrid.store import Store

__all__ = ["Request", "Workload", "from_otlp", "from_run", "load"]

#: Filler words for prompts given by size: one token each under the kit's rule.
_VOCABULARY = tuple(
    "the of and to in is that for it as with was on be by this are from at or an have not which but "
    "data model query answer system user time value result report table method study server client "
    "cache token prompt batch stream network latency budget price sample trace session turn".split()
)


#: How a later turn's ``metadata["prefix"]`` names its session: it shares the conversation so far.
_SESSION = "session:"


@dataclass(frozen=True, slots=True)
class Request:
    """One request of a trace (``docs/workloads.md`` has each field).  ``t`` of a turn after the
    first is only its place in the trace: it is sent when the turn before it has its answer, plus
    ``think_s``."""

    t: float
    name: str
    prompt: str | None = None
    prompt_tokens: int | None = None
    system: str | None = None
    session: str | None = None
    turn: int = 1
    prefix: str | None = None
    prefix_tokens: int = 0
    max_tokens: int | None = None
    think_s: float = 0.0

    def query(self, index: int) -> Query:
        """This request as a query: its text, or seeded filler of its size with its prefix's text first."""
        prefix = _filler(f"prefix:{self.prefix}", self.prefix_tokens) if self.prefix is not None else ""
        if self.prompt is not None:
            text = f"{prefix}\n{self.prompt}" if prefix else self.prompt
        else:
            # The request's own words start with its number, so no two requests share more than the
            # prefix they name: a server's prefix cache sees exactly the sharing the trace describes.
            body = _filler(f"request:{index}:{self.name}", max(0, (self.prompt_tokens or 0) - self.prefix_tokens - 1))
            text = f"{prefix} {index} {body}" if prefix else f"{index} {body}"
        shared = self.prefix if self.prefix is not None else (f"{_SESSION}{self.session}" if self.turn > 1 else None)
        metadata = {
            "t": self.t,
            "session": self.session,
            "turn": self.turn,
            "think_s": self.think_s,
            PREFIX_KEY: shared,
        }
        return Query(self.name, text, system=self.system, max_tokens=self.max_tokens, metadata=metadata)


@dataclass(frozen=True, slots=True)
class Workload:
    """Requests in trace order (see the module docstring); ``source`` says where they came from."""

    requests: tuple[Request, ...]
    source: str = ""

    def __post_init__(self) -> None:
        if not self.requests:
            raise ConfigError(f"The workload {self.source or ''} has no requests: a trace needs at least one line.")

    def __len__(self) -> int:
        return len(self.requests)

    def __iter__(self) -> Iterator[Request]:
        return iter(self.requests)

    def __repr__(self) -> str:
        conversations = sum(len(turns) > 1 for turns in self.sessions())
        sessions = f"{conversations} session{'' if conversations == 1 else 's'} of several turns"
        return (
            f"<Workload {len(self)} requests ({sessions}) over "
            f"{self.duration_s:.1f}s{' from ' + self.source if self.source else ''}>"
        )

    @property
    def duration_s(self) -> float:
        """From the first arrival to the last, on the trace's clock."""
        times = [r.t for r in self.requests]
        return max(times) - min(times)

    def queries(self) -> list[Query]:
        """Every request as a :class:`~hybrid.Query`, in trace order (a later turn without the
        earlier turns' answers: :func:`hybrid.bench.replay` adds them as it goes)."""
        return [request.query(i) for i, request in enumerate(self.requests)]

    def sessions(self) -> list[tuple[int, ...]]:
        """Indices of each session's requests in turn order, sessions by their first arrival; a
        request without a session is a session of one.  Tuples, not lists: a tuple of ints drops
        out of the garbage collector's sight, and a replay holds one per session for its whole run."""
        requests = self.requests
        grouped: dict[object, list[int]] = {}
        for i, request in enumerate(requests):
            grouped.setdefault(request.session if request.session is not None else ("alone", i), []).append(i)
        turns = [
            (indices[0],) if len(indices) == 1 else tuple(sorted(indices, key=lambda i: requests[i].turn))
            for indices in grouped.values()
        ]
        return sorted(turns, key=lambda indices: requests[indices[0]].t)

    def save(self, path: str | Path) -> Path:
        """Write the workload as a JSONL trace that :func:`load` reads back."""
        path = Path(path)
        with path.open("wb") as out:
            for r in self.requests:
                line = {k: getattr(r, k) for k in Request.__slots__ if getattr(r, k) not in (None, 0, 0.0)}
                line.update(t=r.t, name=r.name, turn=r.turn)
                out.write(orjson.dumps(line) + b"\n")
        return path


def load(path: str | Path) -> Workload:
    """Read a JSONL trace (``docs/workloads.md``); a bad line is a :class:`ConfigError` naming it."""
    path = _existing(path)
    requests: list[Request] = []
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            where = f"{path}:{number}"
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise ConfigError(f"{where} is not JSON ({exc}); a trace has one JSON object per line.") from None
            if not isinstance(line, dict):
                raise ConfigError(f"{where} is not a JSON object; a trace has one request object per line.")
            requests.append(_request(line, len(requests), where))
    return Workload(tuple(requests), source=str(path))


_FIELDS = {
    "t",
    "name",
    "prompt",
    "prompt_tokens",
    "system",
    "session",
    "turn",
    "prefix",
    "prefix_tokens",
    "max_tokens",
    "completion_tokens",
    "think_s",
}


def _request(line: Mapping[str, Any], index: int, where: str) -> Request:
    unknown = sorted(set(line) - _FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; a request has {', '.join(sorted(_FIELDS))}.")
    t = _number(line, "t", where, required=True) or 0.0
    prompt, size = line.get("prompt"), line.get("prompt_tokens")
    if prompt is None and size is None:
        raise ConfigError(f"{where}: give the request's text as prompt, or its size as prompt_tokens.")
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise ConfigError(f"{where}: prompt must be non-empty text.")
    session = line.get("session")
    prefix = line.get("prefix")
    max_tokens = line.get("max_tokens", line.get("completion_tokens"))
    return Request(
        t=t,
        name=str(line.get("name") or (f"{session}/{line.get('turn', 1)}" if session is not None else f"r{index}")),
        prompt=prompt,
        prompt_tokens=_count(size, "prompt_tokens", where, minimum=1),
        system=line.get("system"),
        session=None if session is None else str(session),
        turn=_count(line.get("turn", 1), "turn", where, minimum=1) or 1,
        prefix=None if prefix is None else str(prefix),
        prefix_tokens=_count(line.get("prefix_tokens", 0), "prefix_tokens", where, minimum=0) or 0,
        max_tokens=_count(max_tokens, "max_tokens", where, minimum=1),
        think_s=_number(line, "think_s", where) or 0.0,
    )


def _number(line: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> float | None:
    value = line.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{where}: {key} is missing: every request needs its arrival in seconds, t.")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{where}: {key} must be a number of seconds >= 0, got {value!r}.")
    return float(value)


def _count(value: Any, key: str, where: str, *, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: {key} must be a whole number >= {minimum}, got {value!r}.")
    return value


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"No trace at {str(path)!r}: pass the path of a JSONL file (docs/workloads.md).")
    return path


#: Seeded filler words that prompts given by size are cut from (one seeded draw, then slices: a
#: prompt costs a join, not a draw per word).
_POOL = tuple(random.Random(20261203).choices(_VOCABULARY, k=1 << 16))


def _filler(seed: str, tokens: int) -> str:
    """``tokens`` filler words: a slice of the pool chosen by the seed's CRC, so the same seed
    gives the same text on every machine and different seeds different texts."""
    text: list[str] = []
    start = zlib.crc32(seed.encode()) % len(_POOL)
    while len(text) < tokens:
        text += _POOL[start : start + tokens - len(text)]
        start = 0
    return " ".join(text)


# -- OpenTelemetry GenAI spans ---------------------------------------------------------------------

#: The GenAI semantic conventions' attribute names this converter reads.
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
MAX_TOKENS = "gen_ai.request.max_tokens"
CONVERSATION = "gen_ai.conversation.id"
OPERATION = "gen_ai.operation.name"


def from_otlp(path: str | Path) -> Workload:
    """A workload from OpenTelemetry GenAI spans in OTLP/JSON lines (what the collector's ``file``
    exporter writes): every span with ``gen_ai.usage.input_tokens`` is a request arriving at its
    start, of that many prompt tokens, wanting ``gen_ai.request.max_tokens`` (else the
    ``output_tokens`` it got).  Spans of one ``gen_ai.conversation.id`` are the turns of one
    session, in start order, each turn's ``think_s`` the gap since the turn before it ended."""
    path = _existing(path)
    spans: list[dict[str, Any]] = []
    for number, raw in enumerate(path.read_bytes().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            export = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}:{number} is not JSON ({exc}); expected OTLP/JSON, one export per line."
            ) from None
        spans.extend(span for span in _spans(export) if INPUT_TOKENS in span["attributes"])
    if not spans:
        raise ConfigError(f"{path} has no GenAI spans (none carries {INPUT_TOKENS}): is it an OTLP/JSON traces file?")
    spans.sort(key=lambda span: span["start"])
    t0 = spans[0]["start"]
    ended: dict[str, tuple[int, float]] = {}  # conversation -> (turns so far, when the last one ended)
    requests = []
    for i, span in enumerate(spans):
        attributes = span["attributes"]
        conversation = attributes.get(CONVERSATION)
        turn, think = 1, 0.0
        if conversation is not None:
            turns, last_end = ended.get(conversation, (0, span["start"]))
            turn, think = turns + 1, max(0.0, span["start"] - last_end)
            ended[conversation] = (turn, span["end"])
        max_tokens = attributes.get(MAX_TOKENS, attributes.get(OUTPUT_TOKENS))
        requests.append(
            Request(
                t=span["start"] - t0,
                name=f"{conversation}/{turn}" if conversation is not None else f"span{i}",
                prompt_tokens=max(1, int(attributes[INPUT_TOKENS])),
                session=None if conversation is None else str(conversation),
                turn=turn,
                max_tokens=None if max_tokens is None else max(1, int(max_tokens)),
                think_s=think,
            )
        )
    return Workload(tuple(requests), source=str(path))


def _spans(export: Any) -> Iterable[dict[str, Any]]:
    """Each span of one OTLP/JSON export: start and end in seconds, attributes as plain values."""
    for resource in export.get("resourceSpans", ()) if isinstance(export, dict) else ():
        for scope in resource.get("scopeSpans", ()):
            for span in scope.get("spans", ()):
                yield {
                    "start": int(span.get("startTimeUnixNano", 0)) / 1e9,
                    "end": int(span.get("endTimeUnixNano", 0)) / 1e9,
                    "attributes": {a["key"]: _value(a.get("value", {})) for a in span.get("attributes", ())},
                }


def _value(value: Mapping[str, Any]) -> Any:
    """An OTLP ``AnyValue`` as a Python value (``intValue`` is a string in OTLP/JSON)."""
    if "intValue" in value:
        return int(value["intValue"])
    for kind in ("stringValue", "doubleValue", "boolValue"):
        if kind in value:
            return value[kind]
    return None


# -- a stored run ----------------------------------------------------------------------------------


def from_run(store: Store, name: str) -> Workload:
    """What run ``name`` sent, as a workload: each query at the time it was due (a replayed run's
    schedule) or sent, with its prompt, system prompt, ``max_tokens`` and, for a run that was itself
    a replay, its session and turn."""
    run = store.load(name, texts=False)  # what was asked, not what came back
    requests = []
    for result in run.results:
        query, meta = result.query, dict(result.query.metadata or {})
        session, prefix = meta.get("session"), meta.get(PREFIX_KEY)
        requests.append(
            Request(
                t=result.scheduled_s if result.scheduled_s is not None else result.started_s,
                name=query.name,
                prompt=query.prompt,
                system=query.system,
                session=None if session is None else str(session),
                turn=int(meta.get("turn") or 1),
                # the prompt holds its prefix's text already: keep only the intent to share it
                prefix=None if prefix is None or str(prefix).startswith(_SESSION) else str(prefix),
                max_tokens=query.max_tokens,
                think_s=float(meta.get("think_s") or 0.0),
            )
        )
    return Workload(tuple(requests), source=f"run {name!r}")
