"""A run's report for a pull request: pass rates with intervals per group, what changed against a
baseline run with a verdict each, cost and tokens, the regressions first.

Everything is read from the store, so the report says what the notebook or the CI job measured:
a row passes when it was answered and every score kept for it passed (:func:`~hybrid.lab.score`
with ``store=`` keeps them); a run without kept scores counts its answered rows as passing.  Rows
are grouped by their grid ``variant``, else their ``case``, else their query name (the repeats of
one query are one group).  A change is judged by Newcombe's interval for the difference of two
rates (from the two Wilson intervals): ``worse`` when it lies below zero, ``better`` above, else
"no clear change", so a noisy suite does not flag a regression on luck.

``markdown()`` is short enough for a PR comment (at most :data:`MAX_GROUPS` groups beyond the
regressions); ``html()`` is one self-contained file, the report above the viewer's run page with
its charts inlined, that opens from disk with no server and sends no request.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hybrid.errors import ConfigError
from hybrid.lab.gates import Gate, gate
from hybrid.lab.report import wilson, z_for

if TYPE_CHECKING:
    from hybrid.results import RunResult
    from hybrid.store import Store

#: Groups shown beyond the regressions in the markdown (a PR comment stays readable).
MAX_GROUPS = 15
#: The order of verdicts in the tables: what needs a look first.
ORDER = ("worse", "gone", "new", "no clear change", "better", "")


@dataclass(frozen=True, slots=True)
class Rate:
    passed: int
    n: int
    low: float
    high: float

    @property
    def rate(self) -> float:
        return self.passed / self.n if self.n else math.nan

    def __str__(self) -> str:
        return f"{self.rate:.0%} ({self.low:.0%}-{self.high:.0%})" if self.n else "-"


@dataclass(frozen=True, slots=True)
class Change:
    """One group: its rate in the run and the baseline, the difference's interval and a verdict."""

    group: str
    now: Rate | None
    before: Rate | None
    low: float
    high: float
    verdict: str
    gate: Gate | None


def _rate(passed: list[bool], z: float) -> Rate:
    low, high = wilson(sum(passed), len(passed), z=z)
    return Rate(sum(passed), len(passed), low, high)


def _outcomes(store: Store, name: str) -> tuple[RunResult, dict[str, list[bool]]]:
    """Run ``name`` and, per group, whether each of its rows passed (see the module docstring)."""
    run = store.load(name, texts=False)
    kept = store.scores(name)
    keys = ("variant", "case")
    key = next((k for k in keys if any((r.query.metadata or {}).get(k) is not None for r in run.results)), None)
    groups: dict[str, list[bool]] = {}
    for row in run.results:
        votes = [passed for _, passed, _, _ in kept.get(row.index, []) if passed is not None]
        group = str((row.query.metadata or {}).get(key)) if key else row.name
        groups.setdefault(group, []).append(row.ok and all(votes))
    return run, groups


class PullRequestReport:
    """Run ``name`` of ``store`` against ``baseline`` (another run of it, or None); ``min_pass``
    adds a gate per group and overall (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        name: str,
        baseline: str | None = None,
        *,
        confidence: float = 0.95,
        min_pass: float | None = None,
    ) -> None:
        known = set(store.runs()["name"])
        for run_name in (name, baseline):
            if run_name is not None and run_name not in known:
                raise ConfigError(
                    f"No run named {run_name!r} in {store}; its runs: {', '.join(sorted(known)) or 'none'}."
                )
        self.store = store
        self.name, self.baseline, self.min_pass, self.confidence = name, baseline, min_pass, confidence
        z = z_for(confidence)
        self.run, now = _outcomes(store, name)
        self.before_run: RunResult | None = None
        before: dict[str, list[bool]] = {}
        if baseline is not None:
            self.before_run, before = _outcomes(store, baseline)
        everything = [p for rows in now.values() for p in rows]
        self.overall = _rate(everything, z)
        self.overall_before = _rate([p for rows in before.values() for p in rows], z) if baseline else None
        self.gate = None if min_pass is None else gate(everything, min_pass=min_pass, confidence=confidence)
        changes = [self._change(g, now.get(g), before.get(g), z) for g in dict.fromkeys([*now, *before])]
        self.changes = sorted(changes, key=lambda c: (ORDER.index(c.verdict), c.low))

    def _change(self, group: str, now: list[bool] | None, before: list[bool] | None, z: float) -> Change:
        rate_now = None if now is None else _rate(now, z)
        rate_before = None if before is None else _rate(before, z)
        judged = None
        if now is not None and self.min_pass is not None:
            judged = gate(now, min_pass=self.min_pass, confidence=self.confidence)
        if self.baseline is None:
            return Change(group, rate_now, None, math.nan, math.nan, "", judged)
        if rate_now is None or rate_before is None:
            return Change(
                group, rate_now, rate_before, math.nan, math.nan, "gone" if rate_now is None else "new", judged
            )
        # Newcombe (1998), method 10: the difference's interval from the two Wilson intervals.
        p1, p2 = rate_now.rate, rate_before.rate
        low = p1 - p2 - math.sqrt((p1 - rate_now.low) ** 2 + (rate_before.high - p2) ** 2)
        high = p1 - p2 + math.sqrt((rate_now.high - p1) ** 2 + (p2 - rate_before.low) ** 2)
        verdict = "worse" if high < 0 else "better" if low > 0 else "no clear change"
        return Change(group, rate_now, rate_before, low, high, verdict, judged)

    # -- the numbers both formats show ----------------------------------------------------------
    def headline(self) -> str:
        counts = {v: sum(c.verdict == v for c in self.changes) for v in ORDER}
        parts = [f"pass rate {self.overall} of {self.overall.n}"]
        if self.overall_before is not None:
            parts.insert(
                0,
                f"{counts['worse']} regression(s), {counts['better']} improvement(s), "
                f"{counts['no clear change']} without a clear change",
            )
            parts.append(f"baseline {self.overall_before}")
        if self.gate is not None:
            parts.append(f"gate at {self.min_pass:.0%}: {self.gate.verdict}")
        return " · ".join(parts)

    def table(self, limit: int | None = None) -> tuple[list[str], list[list[str]], int]:
        """The groups' table (header, rows) and how many groups it leaves out (past ``limit``,
        never a regression)."""
        header = ["group", f"pass rate ({self.confidence:.0%} interval)", "n"]
        if self.baseline is not None:
            header += ["baseline", "change (interval)", "verdict"]
        if self.min_pass is not None:
            header.append("gate")
        shown = [c for c in self.changes if c.verdict in ("worse", "gone")]
        rest = [c for c in self.changes if c.verdict not in ("worse", "gone")]
        shown += rest if limit is None else rest[:limit]
        rows = []
        for change in shown:
            row = [change.group, str(change.now or "-"), str(change.now.n if change.now else 0)]
            if self.baseline is not None:
                difference = (
                    "-"
                    if math.isnan(change.low)
                    else f"{_points(change.now, change.before)} ({change.low * 100:+.0f} to {change.high * 100:+.0f})"
                )
                row += [str(change.before or "-"), difference, change.verdict]
            if self.min_pass is not None:
                row.append(change.gate.verdict if change.gate else "-")
            rows.append(row)
        return header, rows, len(self.changes) - len(shown)

    def costs(self) -> tuple[list[str], list[list[str]]]:
        runs = [self.run] if self.before_run is None else [self.run, self.before_run]
        header = ["", self.name] + ([str(self.baseline), "change"] if self.before_run is not None else [])
        lines = [
            ("queries", "queries", "{:,}"),
            ("failed", "failed", "{:,}"),
            ("tokens", "total_tokens", "{:,}"),
            ("cost ($)", "cost_usd", "{:.4f}"),
            ("answered from the cache", "from_cache", "{:,}"),
        ]
        rows = []
        for label, field, shape in lines:
            values = [getattr(r.metrics, field) for r in runs]
            row = [label, *("-" if v is None else shape.format(v) for v in values)]
            if len(values) == 2:
                row.append(_relative(values[0], values[1]))
            rows.append(row)
        return header, rows

    # -- the formats ------------------------------------------------------------------------------
    def markdown(self) -> str:
        title = f"### hybrid report: `{self.name}`" + (f" vs `{self.baseline}`" if self.baseline else "")
        header, rows, left_out = self.table(MAX_GROUPS)
        lines = [title, "", f"**{self.headline()}**", "", *_md_table(header, rows)]
        if left_out:
            lines += ["", f"... and {left_out} more group(s) without a regression."]
        cost_header, cost_rows = self.costs()
        lines += [
            "",
            "<details><summary>cost and tokens</summary>",
            "",
            *_md_table(cost_header, cost_rows),
            "",
            "</details>",
        ]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        from hybrid.view import pages

        header, rows, _ = self.table()
        cost_header, cost_rows = self.costs()
        body = (
            f"<p class='metrics'><b>{html.escape(self.headline())}</b></p>"
            f"{_html_table(header, rows, 'groups')}"
            f"<h2>Cost and tokens</h2>{_html_table(cost_header, cost_rows, 'costs')}"
            f"<h2>Run {html.escape(self.name)}</h2>{self._run_section()}"
        )
        title = f"{self.name}" + (f" vs {self.baseline}" if self.baseline else "")
        return pages.page(f"Report: {title}", body, standalone=True)

    def _run_section(self) -> str:
        """The viewer's run page for the run, from the same reads the viewer makes (its first page
        of rows, each answer's start), without links: the file opens from disk."""
        from hybrid.view import pages
        from hybrid.view.server import run_info

        info = run_info(self.store, self.name)
        if info is None:  # pruned or replaced since the report read it
            raise ConfigError(f"Run {self.name!r} is no longer in {self.store}: make the report again.")
        rows = self.store.brief_rows(self.name, range(min(int(info["queries"]), pages.PAGE_ROWS)))
        return pages.run_body(self.name, info, rows, self.run, links=False)


def _points(now: Rate | None, before: Rate | None) -> str:
    assert now is not None and before is not None
    return f"{(now.rate - before.rate) * 100:+.0f} pts"


def _relative(now: Any, before: Any) -> str:
    if now is None or before is None:
        return "-"
    if before == 0:
        return "-" if now == 0 else "new"
    return f"{(now - before) / before:+.1%}"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(row) for row in rows)]


def _html_table(header: list[str], rows: list[list[str]], css_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        f"<tr class='{html.escape(row[header.index('verdict')] if 'verdict' in header else '')}'>"
        + "".join(f"<td>{html.escape(cell)}</td>" for cell in row)
        + "</tr>"
        for row in rows
    )
    return f"<table id='{css_id}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
