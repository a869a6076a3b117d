"""The outcome of a whole run: one :class:`QueryResult` per query in input order, plus metrics.

``RunResult`` is what ``await orch.run(...)`` returns and what ``AllQueriesFailed.run`` carries.
It renders itself in a notebook (``_repr_html_``), turns into a DataFrame (:meth:`to_frame`) and
into JSON (:meth:`to_json`); none of them include anything but results and metrics, so no secret
can travel with them.
"""

from __future__ import annotations

import dataclasses
import html
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from hybrid.metrics import RunMetrics
from hybrid.query import QueryResult

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """Results in input order (exactly one per query), metrics, and warnings about partial failure.

    ``cancelled`` is true for the partial result a cancelled run leaves on ``Orchestrator.last_run``:
    finished queries keep their answers, the others carry a :class:`~hybrid.errors.Cancelled` error.
    ``segments`` is how many runs of one name this result merges (``Store.load(name)`` of a run that
    was resumed: the first run and each resume); a live run, or one segment loaded, is 1.
    ``diagnostics`` are notes measured in real time (the event loop was blocked for so long, there;
    :mod:`hybrid.loop_watch`): kept and shown by the viewer, but never in ``warnings``, the summary or
    a repr, so that a loaded machine cannot change a checked notebook cell.
    ``flags`` name what may make the run's numbers mislead as a benchmark (a warm prefix cache, a
    client-bound run, coordinated omission, a saturated server, a server in the client's process:
    :mod:`hybrid.validity` says each rule, ``validity.FLAGS`` what each means).
    ``prices`` says where the price of each model the run priced came from (:attr:`Price.source`:
    your ``prices=``, or genai-prices' table, :mod:`hybrid.pricing`).
    """

    results: tuple[QueryResult, ...]
    metrics: RunMetrics
    mode: str
    warnings: tuple[str, ...] = ()
    cancelled: bool = False
    segments: int = 1
    diagnostics: tuple[str, ...] = field(default=(), repr=False)
    flags: tuple[str, ...] = ()
    prices: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, name: str) -> QueryResult:
        """The result of the query called ``name`` (the first, if names repeat)."""
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(f"No query named {name!r}; names: {[r.name for r in self.results]}")

    @property
    def ok(self) -> bool:
        return self.metrics.failed == 0

    def texts(self) -> dict[str, str | None]:
        """Answer text by query name (None for failed queries)."""
        return {r.name: r.text for r in self.results}

    def to_frame(self) -> pd.DataFrame:
        """A pandas DataFrame, one row per query, in input order."""
        import pandas as pd

        return pd.DataFrame([r.as_row() for r in self.results])

    def to_dict(self) -> dict[str, Any]:
        metrics = {k: _finite(v) for k, v in dataclasses.asdict(self.metrics).items()}
        return {
            "mode": self.mode,
            "cancelled": self.cancelled,
            "segments": self.segments,
            "warnings": list(self.warnings),
            "diagnostics": list(self.diagnostics),
            "flags": list(self.flags),
            "prices": dict(self.prices),
            "metrics": metrics,
            "results": [{k: _finite(v) for k, v in r.as_row().items()} for r in self.results],
        }

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2).decode()

    def summary(self) -> str:
        """One line: how many succeeded, wall, efficiency against the ideal, tokens, retries.

        The notebook, ``hybrid runs show`` and the viewer all print this line, for a live run and
        for the same run loaded from the store alike."""
        m = self.metrics
        how = self.mode if self.segments == 1 else f"{self.mode}, {self.segments} segments"
        if m.batched:
            cost = "" if m.batch_cost_usd is None else f", ${m.batch_cost_usd:.6f} at the batch price"
            return (
                f"{m.succeeded}/{m.queries} ok in {m.wall_s:.2f}s ({how}); {m.batched} through the "
                f"Batch API{cost}; {m.total_tokens} tokens; {m.attempts} lines submitted{_budget(m)}"
            )
        unknown = "open-loop arrivals" if self.mode == "replay" else "no single concurrency limit"
        ideal = (
            f"ideal unknown: {unknown}"
            if math.isnan(m.ideal_efficiency)
            else f"{m.percent_of_ideal:.0%} of ideal {m.ideal_efficiency:.0%}"
        )
        return (
            f"{m.succeeded}/{m.queries} ok in {m.wall_s:.2f}s ({how}); parallel efficiency "
            f"{m.parallel_efficiency:.0%} ({ideal}); {m.total_tokens} tokens; {m.retries} retries{_budget(m)}"
        )

    def __repr__(self) -> str:
        return f"<RunResult {self.summary()}>"

    def _repr_html_(self) -> str:
        """The summary line, the warnings and a table of the rows: the first and last
        :data:`HTML_ROWS` halves of a big run with a row of dots between, as pandas shows a long
        frame, built from those rows alone, so a run of any size displays at once."""
        import pandas as pd

        columns = ["name", "ok", "text", "error", "total_tokens", "latency_s", "queue_s", "attempts"]
        half = HTML_ROWS // 2
        shown = self.results if len(self.results) <= HTML_ROWS else (*self.results[:half], *self.results[-half:])
        frame = pd.DataFrame([r.as_row() for r in shown], columns=columns)  # each row made once
        frame["text"] = frame["text"].map(lambda t: t[:117] + "..." if isinstance(t, str) and len(t) > 120 else t)
        if len(shown) < len(self.results):
            dots = pd.DataFrame([dict.fromkeys(columns, "...")])
            frame = pd.concat([frame.iloc[:half].astype(object), dots, frame.iloc[half:].astype(object)])
        warnings = "".join(f"<li>{html.escape(w)}</li>" for w in self.warnings)
        more = (
            f"<p>{len(self.results) - len(shown)} more rows: run.to_frame() has them all.</p>"
            if len(shown) < len(self.results)
            else ""
        )
        return (
            f"<div><p><b>{html.escape(self.summary())}</b></p>"
            + (f"<ul>{warnings}</ul>" if warnings else "")
            + frame.to_html(index=False, float_format=lambda x: f"{x:.3f}")
            + more
            + "</div>"
        )


#: Rows a run's HTML shows (the first and last half, as pandas does): the whole run is ``to_frame()``.
HTML_ROWS = 60


def _finite(value: Any) -> Any:
    """NaN and infinities become null in JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _budget(m: RunMetrics) -> str:
    """The summary's words on a budget: spent of the limit, what is still reserved, what came back."""
    if m.budget is None:
        return ""
    b = m.budget
    held = f", ${b.reserved_usd:.6f} still reserved" if b.reserved_usd > 1e-12 else ""
    return f"; budget ${b.spent_usd:.6f} of ${b.limit_usd:.6f} spent{held}, ${b.released_usd:.6f} reserved and released"
