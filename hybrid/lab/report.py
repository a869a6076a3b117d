"""From scores to decisions: a score table, pass rates with confidence intervals, the best variant,
and a matrix view of answers with their marks.

Pass rates carry a **Wilson score interval** (95% by default) over every scored answer in the
group (repeats and test cases alike): unlike the normal approximation it stays inside [0, 1] and
behaves at 0/n and n/n, which small prompt grids hit all the time.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from hybrid.errors import ConfigError
from hybrid.lab.scorers import Scorer
from hybrid.results import RunResult

if TYPE_CHECKING:
    import pandas as pd

    from hybrid.store import Store

COORDINATES = ("variant", "case", "model", "temperature", "repeat")


def z_for(confidence: float) -> float:
    """The normal quantile a two-sided interval at ``confidence`` reaches (1.96 at 0.95)."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(passed: int, n: int, *, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of ``passed`` successes in ``n`` trials (NaN, NaN for n = 0)."""
    if n == 0:
        return math.nan, math.nan
    p = passed / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # Exactly 0 and 1 at the edges (the formula gives them up to rounding).
    return (0.0 if passed == 0 else centre - half), (1.0 if passed == n else centre + half)


async def score(
    run: RunResult, scorers: Sequence[Scorer], *, store: Store | None = None, name: str | None = None
) -> pd.DataFrame:
    """One row per (query, scorer): the query's name, its row ``index`` in the run (which answer),
    its grid coordinates, the scorer, passed, value, reason.

    With ``store`` and ``name`` (the run's name in that store) the verdicts are kept beside the run,
    so ``hybrid report`` and later readers see the same pass rates without the scorers."""
    import pandas as pd

    if (store is None) != (name is None):
        raise ConfigError("score(..., store=, name=) keeps the scores with run `name` of `store`: pass both.")
    results = list(run.results)
    rows = []
    kept = []
    for scorer in scorers:
        for result, verdict in zip(results, await scorer.score_all(results), strict=True):
            kept.append((result.index, verdict.scorer, verdict.passed, verdict.value, verdict.reason))
            metadata = result.query.metadata or {}
            rows.append(
                {
                    "name": result.name,
                    "index": result.index,
                    **{c: metadata.get(c) for c in COORDINATES},
                    "scorer": verdict.scorer,
                    "passed": verdict.passed,
                    "value": verdict.value,
                    "reason": verdict.reason,
                    "text": result.text,
                    "total_tokens": result.usage.total_tokens,
                    "cost_usd": result.cost_usd,
                }
            )
    if store is not None and name is not None:
        store.save_scores(name, kept)
    return pd.DataFrame(rows)


def summary(scores: pd.DataFrame, by: str | Sequence[str] = "variant") -> pd.DataFrame:
    """Pass rate per group with its Wilson 95% interval, and the group's tokens and cost (each
    answer counted once, however many scorers judged it)."""
    import pandas as pd

    keys = [by] if isinstance(by, str) else list(by)
    judged = scores[scores["passed"].notna()]
    rows = []
    for group, frame in judged.groupby(keys, sort=False, dropna=False):
        passed, n = int(frame["passed"].astype(bool).sum()), len(frame)
        low, high = wilson(passed, n)
        answers = scores.merge(frame[["name"]].drop_duplicates(), on="name").drop_duplicates("name")
        costs = answers["cost_usd"].dropna()
        values = group if isinstance(group, tuple) else (group,)
        rows.append(
            {
                **dict(zip(keys, values, strict=True)),
                "scored": n,
                "passed": passed,
                "pass_rate": passed / n,
                "ci_low": low,
                "ci_high": high,
                "total_tokens": int(answers["total_tokens"].sum()),
                "cost_usd": float(costs.sum()) if len(costs) else None,
            }
        )
    return pd.DataFrame(rows)


def best(scores: pd.DataFrame, *, per: str = "model") -> pd.DataFrame:
    """The variant with the highest pass rate for each ``per`` (ties: the cheaper, then the first)."""
    table = summary(scores, by=[per, "variant"])
    table = table.sort_values(["pass_rate", "cost_usd"], ascending=[False, True], kind="stable")
    return table.groupby(per, sort=False, dropna=False).head(1).reset_index(drop=True)


class Matrix:
    """Variants x test cases; each cell the first repeat's answer (shortened) with a mark per scorer.
    Renders as an HTML table in JupyterLab, with a key to the marks; ``frame`` holds the same as
    plain text."""

    def __init__(self, scores: pd.DataFrame, *, chars: int = 60) -> None:
        first = scores[scores["repeat"].fillna(0) == 0]
        self.cells: dict[tuple[str, str], tuple[str, list[tuple[str, bool | None, str]]]] = {}
        for (variant, case), frame in first.groupby(["variant", "case"], sort=False):
            text = frame["text"].iloc[0] or "(no answer)"
            marks = list(zip(frame["scorer"], frame["passed"], frame["reason"], strict=True))
            self.cells[(str(variant), str(case))] = (text[:chars] + ("..." if len(text) > chars else ""), marks)
        self.variants = list(dict.fromkeys(v for v, _ in self.cells))
        self.cases = list(dict.fromkeys(c for _, c in self.cells))

    @property
    def frame(self) -> pd.DataFrame:
        import pandas as pd

        def cell(key: tuple[str, str]) -> str:
            text, marks = self.cells.get(key, ("", []))
            return " ".join(_mark(p) for _, p, _ in marks) + " " + text

        return pd.DataFrame({c: [cell((v, c)) for v in self.variants] for c in self.cases}, index=self.variants)

    def key(self) -> str:
        """What the marks mean: one per scorer, in this order."""
        scorers = list(dict.fromkeys(name for _, marks in self.cells.values() for name, _, _ in marks))
        return f"Marks, one per scorer in order ({', '.join(scorers)}): ✓ passed, ✗ failed, · measured only."

    def __repr__(self) -> str:
        return f"{self.frame.to_string()}\n{self.key()}"

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in self.cases)
        rows = []
        for variant in self.variants:
            cells = []
            for case in self.cases:
                text, marks = self.cells.get((variant, case), ("", []))
                badges = " ".join(
                    f'<span title="{html.escape(f"{name}: {reason}")}">{_mark(p)}</span>' for name, p, reason in marks
                )
                cells.append(f"<td>{badges}<br><small>{html.escape(text)}</small></td>")
            rows.append(f"<tr><th>{html.escape(str(variant))}</th>{''.join(cells)}</tr>")
        caption = f"<caption>{html.escape(self.key())} Hover a mark for its reason.</caption>"
        return f"<table>{caption}<tr><th></th>{head}</tr>{''.join(rows)}</table>"


def _mark(passed: bool | None) -> str:
    return "✓" if passed else ("✗" if passed is False else "·")


def matrix(scores: pd.DataFrame, *, chars: int = 60) -> Matrix:
    """The matrix view of ``scores`` (see :class:`Matrix`)."""
    return Matrix(scores, chars=chars)
