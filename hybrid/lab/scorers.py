"""Scorers: does an answer pass?  Each returns a :class:`Score` that says which scorer, pass or
fail (or a value), and why, quoting the failing part of the answer.

A string argument may use the test case's variables (``contains("{{city}}")``): it is filled in
per query from the grid's metadata (in a regex, escaped: a city called "Kyiv (Kiev" is matched
literally).  :func:`rubric` is model-graded and async; the others are plain functions of the
answer.  A failed query (no answer) fails every scorer with its error as the reason, and so does
a scorer that cannot judge an answer (a pattern past its time limit, JSON nested too deep, a
schema that refers to itself forever or to a remote document): scoring never raises and never
hangs.  Regexes, and a schema's ``pattern``, run with the ``regex`` package's time limit
(``timeout_s``, default :data:`TIMEOUT_S`); a schema is checked by the draft its ``$schema``
names (2020-12 when it names none), and its ``$ref`` never fetches anything.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema
import referencing
import regex as timed_re

from hybrid.errors import AllQueriesFailed
from hybrid.query import Query, QueryResult
from hybrid.templating import render

#: How much of an answer a reason quotes.
QUOTE_CHARS = 80
#: How long one regex search may take, in seconds, before the score fails as "timed out".
TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Score:
    """One scorer's verdict on one answer: ``passed`` (None for a value-only scorer), ``value``, ``reason``."""

    scorer: str
    passed: bool | None
    value: float | None = None
    reason: str = ""


def _quote(text: str) -> str:
    return repr(text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 3] + "...")


def _fill(template: str, query: Query, escape: Callable[[str], str] = str) -> str:
    values = (query.metadata or {}).get("vars") or {}
    return render(template, {k: escape(str(v)) for k, v in values.items()}) if "{{" in template else template


def _unjudged(scorer: str, exc: BaseException) -> Score:
    """The failed score of an answer the scorer could not judge, saying why."""
    if isinstance(exc, TimeoutError):
        why = str(exc) if str(exc).startswith("timed out") else "timed out"
    elif isinstance(exc, RecursionError):
        why = "recursion too deep (JSON nested too deeply, or a schema that refers to itself)"
    else:
        kind = type(exc).__name__
        why = str(exc) if kind.startswith("_") else f"{kind}: {exc}"  # a library's private wrapper: its words
    return Score(scorer=scorer, passed=False, reason=f"could not be scored: {why}")


def _search(pattern: str, text: str, flags: int, timeout_s: float) -> Any:
    """``re.search`` with a time limit: :class:`TimeoutError` ("timed out after N s") past it."""
    try:
        return timed_re.search(pattern, text, flags, timeout=timeout_s)
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout_s:g} s") from None


class Scorer:
    """A named check of one answer; subclasses implement :meth:`check`."""

    name = "scorer"

    def check(self, text: str, query: Query) -> Score:
        raise NotImplementedError

    def unanswered(self, result: QueryResult) -> Score:
        reason = f"no answer: {result.error.kind if result.error else 'unknown'}"
        return Score(scorer=self.name, passed=False, reason=reason)

    def judged(self, text: str, query: Query) -> Score:
        """:meth:`check`, or a failed score saying why the answer could not be judged."""
        try:
            return self.check(text, query)
        except Exception as exc:  # RecursionError, a schema's unresolvable $ref, a bug in a check
            return _unjudged(self.name, exc)

    async def score_all(self, results: list[QueryResult]) -> list[Score]:
        """One score per result, in order."""
        return [self.unanswered(r) if r.text is None else self.judged(r.text, r.query) for r in results]


# Scorer classes are named like functions: they read as checks in a list, [contains("x"), regex(...)].
class contains(Scorer):
    """The answer contains ``needle`` (case-insensitive unless ``case_sensitive``)."""

    def __init__(self, needle: str, *, case_sensitive: bool = False, negate: bool = False) -> None:
        self.needle, self.case_sensitive, self.negate = needle, case_sensitive, negate
        self.name = f"{'not_' if negate else ''}contains({needle!r})"

    def check(self, text: str, query: Query) -> Score:
        needle = _fill(self.needle, query)
        haystack, wanted = (text, needle) if self.case_sensitive else (text.casefold(), needle.casefold())
        at = haystack.find(wanted)
        found = at >= 0
        if found != self.negate:
            return Score(scorer=self.name, passed=True, reason="found" if found else "absent, as required")
        if found:
            return Score(scorer=self.name, passed=False, reason=f"found {_quote(text[max(0, at - 20) : at + 60])}")
        return Score(scorer=self.name, passed=False, reason=f"{needle!r} not in {_quote(text)}")


def not_contains(needle: str, *, case_sensitive: bool = False) -> contains:
    """The answer does not contain ``needle``."""
    return contains(needle, case_sensitive=case_sensitive, negate=True)


class regex(Scorer):
    """The answer matches ``pattern`` (``re.search`` semantics), within ``timeout_s`` seconds;
    template variables in the pattern are matched literally."""

    def __init__(self, pattern: str, flags: int = 0, *, timeout_s: float = TIMEOUT_S) -> None:
        self.pattern, self.flags, self.timeout_s = pattern, flags, timeout_s
        timed_re.compile(pattern, flags)  # a bad pattern fails here, not per answer
        self.name = f"regex({pattern!r})"

    def check(self, text: str, query: Query) -> Score:
        match = _search(_fill(self.pattern, query, timed_re.escape), text, self.flags, self.timeout_s)
        if match:
            return Score(scorer=self.name, passed=True, reason=f"matched {_quote(match.group(0))}")
        return Score(scorer=self.name, passed=False, reason=f"no match in {_quote(text)}")


class equals(Scorer):
    """The answer equals ``expected`` (after stripping whitespace; case-insensitive unless told)."""

    def __init__(self, expected: str, *, case_sensitive: bool = False) -> None:
        self.expected, self.case_sensitive = expected, case_sensitive
        self.name = f"equals({expected!r})"

    def check(self, text: str, query: Query) -> Score:
        expected = _fill(self.expected, query).strip()
        got = text.strip()
        same = got == expected if self.case_sensitive else got.casefold() == expected.casefold()
        return Score(scorer=self.name, passed=same, reason="equal" if same else f"got {_quote(got)}")


class is_json(Scorer):
    """The answer is JSON; with ``schema``, valid against it (the ``jsonschema`` package, by the
    draft its ``$schema`` names; each ``pattern`` searched within ``timeout_s`` seconds)."""

    def __init__(self, schema: Mapping[str, Any] | None = None, *, timeout_s: float = TIMEOUT_S) -> None:
        self.schema = schema
        self.validator: Any = None
        if schema is not None:
            draft = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
            draft.check_schema(schema)
            timed = jsonschema.validators.extend(draft, validators={"pattern": _timed_pattern(timeout_s)})
            # An empty registry: a $ref to another document is unresolvable, never fetched (jsonschema's
            # default registry still downloads one, with a DeprecationWarning).
            self.validator = timed(schema, registry=referencing.Registry())
        self.name = "json_schema" if schema is not None else "is_json"

    def check(self, text: str, query: Query) -> Score:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            near = text[max(0, exc.pos - 20) : exc.pos + 20]
            return Score(scorer=self.name, passed=False, reason=f"not JSON ({exc.msg}) near {_quote(near)}")
        if self.schema is None:
            return Score(scorer=self.name, passed=True, reason="valid JSON")
        error = jsonschema.exceptions.best_match(self.validator.iter_errors(data))
        if error is None:
            return Score(scorer=self.name, passed=True, reason="matches the schema")
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return Score(scorer=self.name, passed=False, reason=f"at {where}: {error.message}")


def json_schema(schema: Mapping[str, Any], *, timeout_s: float = TIMEOUT_S) -> is_json:
    """The answer is JSON valid against ``schema``."""
    return is_json(schema, timeout_s=timeout_s)


def _timed_pattern(timeout_s: float) -> Callable[..., Iterator[jsonschema.ValidationError]]:
    """The ``pattern`` keyword, searched with a time limit (jsonschema's own uses ``re``)."""

    def pattern(validator: Any, wanted: str, instance: Any, schema: Any) -> Iterator[jsonschema.ValidationError]:
        if validator.is_type(instance, "string") and not _search(wanted, instance, 0, timeout_s):
            yield jsonschema.ValidationError(f"{instance!r} does not match {wanted!r}")

    return pattern


_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)?(?:[eE][-+]?\d+)?")


class numeric(Scorer):
    """The first number in the answer is within ``tolerance`` (absolute) of ``expected``; its value is the number."""

    def __init__(self, expected: float | str, *, tolerance: float = 0.0) -> None:
        self.expected, self.tolerance = expected, tolerance
        self.name = f"numeric({expected!r}+-{tolerance:g})"

    def check(self, text: str, query: Query) -> Score:
        expected = float(_fill(str(self.expected), query))
        match = _NUMBER.search(text)
        if match is None:
            return Score(scorer=self.name, passed=False, reason=f"no number in {_quote(text)}")
        value = float(match.group(0).replace(",", "."))
        ok = abs(value - expected) <= self.tolerance
        reason = f"{value:g} vs {expected:g}" + ("" if ok else f", off by {abs(value - expected):g}")
        return Score(scorer=self.name, passed=ok, value=value, reason=reason)


class python(Scorer):
    """Your own check: ``fn(text, query)`` returns a bool, a number (a value), or ``(bool, reason)``."""

    def __init__(self, fn: Callable[[str, Query], Any], *, name: str | None = None) -> None:
        self.fn = fn
        self.name = name or str(getattr(fn, "__name__", "python"))

    def check(self, text: str, query: Query) -> Score:
        try:
            outcome = self.fn(text, query)
        except Exception as exc:  # a bug in the check is a failed score that says so
            return Score(scorer=self.name, passed=False, reason=f"the check raised {type(exc).__name__}: {exc}")
        if isinstance(outcome, tuple):
            passed, reason = outcome
            return Score(scorer=self.name, passed=bool(passed), reason=str(reason))
        if isinstance(outcome, bool):
            return Score(scorer=self.name, passed=outcome, reason="passed" if outcome else "failed")
        return Score(scorer=self.name, passed=None, value=float(outcome), reason=f"value {float(outcome):g}")


GRADER_PROMPT = """You grade an answer against a rubric. Reply with JSON only:
{{"pass": true or false, "reason": "one sentence"}}

Rubric: {rubric}

Question: {question}

Answer: {answer}"""


class rubric(Scorer):
    """Model-graded: a grading query per answer, sent through ``grade`` (usually
    ``orch.run``-like: an async function from a list of queries to a run), which asks for
    ``{"pass": bool, "reason": str}``.  A grade that is missing or not that JSON is a failed score
    saying so, never an exception.  The grading queries are a run of their own, so their tokens
    and cost are counted apart (:attr:`runs`)."""

    def __init__(self, criteria: str, grade: Callable[[list[Query]], Awaitable[Any]], *, max_tokens: int = 120):
        self.criteria, self.grade, self.max_tokens = criteria, grade, max_tokens
        self.name = f"rubric({criteria[:30]!r})"
        self.runs: list[Any] = []

    def grading_query(self, result: QueryResult) -> Query:
        prompt = GRADER_PROMPT.format(
            rubric=_fill(self.criteria, result.query), question=result.query.prompt, answer=result.text
        )
        return Query(f"grade|{result.name}", prompt, max_tokens=self.max_tokens, temperature=0.0, json_mode=True)

    async def score_all(self, results: list[QueryResult]) -> list[Score]:
        answered = [r for r in results if r.text is not None]
        grades = {}
        if answered:
            try:
                run = await self.grade([self.grading_query(r) for r in answered])
            except AllQueriesFailed as failed:  # every grade failed: each answer's score says why
                run = failed.run
            self.runs.append(run)
            grades = {r.name: g for r, g in zip(answered, run.results, strict=True)}
        return [self.unanswered(r) if r.text is None else self._verdict(grades[r.name]) for r in results]

    def _verdict(self, graded: QueryResult) -> Score:
        if graded.text is None:
            return Score(scorer=self.name, passed=False, reason=f"the grader failed: {graded.error}")
        try:
            data = json.loads(graded.text)
            passed, reason = data["pass"], data.get("reason", "")
            if not isinstance(passed, bool):
                raise TypeError("pass is not true or false")
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            return Score(scorer=self.name, passed=False, reason=f"unreadable grade ({why}): {_quote(graded.text)}")
        return Score(scorer=self.name, passed=passed, reason=str(reason))
