"""Is run B faster than run A, beyond noise?  Bootstrap confidence intervals and a verdict.

:func:`compare_runs` takes two runs, or two sets of repeats, as :class:`~hybrid.RunResult`
objects, saved results (``Path("a.json").write_text(run.to_json())``; a JSON list of runs for
repeats) or run names in a :class:`~hybrid.Store`.  For each metric it reports A, B, the ratio B/A
and a confidence interval of that ratio from a two-level bootstrap: repeats are resampled, and
within each the queries (a single run still gets an interval for its latency percentiles; wall,
throughput and cost need two or more repeats a side, one number per run).

The verdict for a metric is "slower" (or "faster") only when the whole interval lies beyond the
``tolerance`` (5% by default): the data say, at the chosen ``level``, that B is more than 5% worse
(or better), not merely different.  Two runs of one configuration then come out "no difference"
nearly always (``tests/test_comparison.py``: at least 95 of 100 seeded pairs), while 20% more
latency comes out "slower"; a difference inside the tolerance is never called, however sure.
``hybrid bench diff A B`` prints the table and exits 1 on a regression, for CI;
:func:`hybrid.testing.assert_no_regression` does the same inside pytest or nbval.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pandas as pd

from hybrid.errors import ConfigError, check_choice, check_int, check_number
from hybrid.results import RunResult

if TYPE_CHECKING:
    from hybrid.store import Store

#: Metrics, whether lower is better, and whether each query (True) or each run (False) is a sample.
METRICS: dict[str, tuple[bool, bool]] = {
    "p50_latency_s": (True, True),
    "p95_latency_s": (True, True),
    "p99_latency_s": (True, True),
    "mean_latency_s": (True, True),
    "wall_s": (True, False),
    "throughput_qps": (False, False),
    "cost_usd": (True, False),
}
_WORDS = {"cost_usd": ("cheaper", "dearer")}
PERCENTILES = {"p50_latency_s": 50, "p95_latency_s": 95, "p99_latency_s": 99}


@dataclass(frozen=True, slots=True)
class RunSample:
    """What a comparison needs of one run: answered queries' latencies, wall, answers, cost."""

    latencies: np.ndarray
    wall_s: float
    answered: int
    cost_usd: float

    @classmethod
    def of(cls, run: RunResult) -> RunSample:
        sent = [r for r in run.results if r.ok and r.origin == "sent"]
        return cls(
            latencies=np.array([r.latency_s for r in sent], dtype=float),
            wall_s=run.metrics.wall_s,
            answered=len(sent),
            cost_usd=sum(r.cost_usd or 0.0 for r in sent),
        )

    @classmethod
    def of_dict(cls, data: dict[str, Any]) -> RunSample:
        """From :meth:`RunResult.to_dict` / ``to_json`` output."""
        try:
            sent = [r for r in data["results"] if r["ok"] and r.get("origin", "sent") == "sent"]
            return cls(
                latencies=np.array([r["latency_s"] for r in sent], dtype=float),
                wall_s=float(data["metrics"]["wall_s"]),
                answered=len(sent),
                cost_usd=sum(r.get("cost_usd") or 0.0 for r in sent),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"This is not a saved run (RunResult.to_json()): missing or bad {exc}. Save a run with "
                "Path('a.json').write_text(run.to_json())."
            ) from None

    def value(self, metric: str, latencies: np.ndarray | None = None) -> float:
        values = self.latencies if latencies is None else latencies
        if metric == "wall_s":
            return self.wall_s
        if metric == "throughput_qps":
            return self.answered / self.wall_s if self.wall_s > 0 else math.nan
        if metric == "cost_usd":
            return self.cost_usd
        if not len(values):
            return math.nan
        if metric == "mean_latency_s":
            return float(values.mean())
        return float(np.percentile(values, PERCENTILES[metric]))


RunSource = RunResult | str | Path


def load_runs(source: RunSource | Sequence[RunSource], store: Store | None = None) -> list[RunSample]:
    """One side of a comparison: a run, a saved run, a store run name, or a list of them (repeats)."""
    items = list(source) if isinstance(source, list | tuple) else [source]
    if not items:
        raise ConfigError("A side of the comparison has no runs: pass a run, a file, a store name, or a list of them.")
    samples: list[RunSample] = []
    for item in items:
        if isinstance(item, RunResult):
            samples.append(RunSample.of(item))
        elif isinstance(item, str | Path):
            samples.extend(_load(item, store))
        else:
            raise ConfigError(f"Cannot compare a {type(item).__name__}: pass RunResult objects, files or store names.")
    return samples


def _load(item: str | Path, store: Store | None) -> list[RunSample]:
    if store is not None and isinstance(item, str) and item in set(store.runs()["name"]):
        return [RunSample.of(store.load(item))]
    path = Path(item)
    if not path.is_file():
        where = f" nor a run in {store}" if store is not None else " (for a run in a store, pass store=)"
        raise ConfigError(f"{str(item)!r} is neither a saved run file{where}.")
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not JSON ({exc}); save runs with run.to_json().") from None
    return [RunSample.of_dict(each) for each in (data if isinstance(data, list) else [data])]


@dataclass(frozen=True, slots=True)
class Comparison:
    """The outcome of :func:`compare_runs`: one row per metric (:attr:`table`) and the verdict on ``metric``."""

    rows: tuple[dict[str, Any], ...]
    metric: str
    verdict: str
    level: float
    tolerance: float
    repeats: tuple[int, int]

    @property
    def regression(self) -> bool:
        """B is worse than A on the chosen metric, significantly and beyond the tolerance."""
        return self.verdict in ("slower", "dearer")

    @property
    def table(self) -> pd.DataFrame:
        """Per metric: A, B, the ratio B/A, its confidence interval, the verdict."""
        return pd.DataFrame(list(self.rows))

    def row(self, metric: str) -> dict[str, Any]:
        """The row for ``metric``: a, b, ratio, ci_low, ci_high, verdict."""
        return next(r for r in self.rows if r["metric"] == metric)

    @property
    def speedup(self) -> float:
        """A's wall over B's (median of repeats): above 1, B finished sooner."""
        row = self.row("wall_s")
        return float(row["a"] / row["b"]) if row["b"] else math.nan

    def summary(self) -> str:
        row = self.row(self.metric)
        interval = (
            "no interval"
            if math.isnan(row["ci_low"])
            else f"{self.level:.0%} interval {row['ci_low']:.3f}-{row['ci_high']:.3f}"
        )
        return (
            f"B vs A on {self.metric}: {self.verdict} (ratio {row['ratio']:.3f}, {interval}, tolerance "
            f"{self.tolerance:.0%}; {self.repeats[0]} vs {self.repeats[1]} run(s)); speedup {self.speedup:.2f}x"
        )

    def __str__(self) -> str:
        return self.summary() + "\n" + self.table.to_string(index=False, float_format=lambda v: f"{v:.4g}")

    def _repr_html_(self) -> str:
        return f"<p><b>{html.escape(self.summary())}</b></p>" + self.table.to_html(
            index=False, float_format=lambda v: f"{v:.4g}"
        )


def compare_runs(
    a: RunSource | Sequence[RunSource],
    b: RunSource | Sequence[RunSource],
    *,
    metric: str = "p50_latency_s",
    level: float = 0.95,
    tolerance: float = 0.05,
    resamples: int = 2000,
    seed: int = 0,
    store: Store | None = None,
) -> Comparison:
    """Compare run(s) ``b`` against the baseline ``a`` (see the module docstring)."""
    check_choice("metric", metric, tuple(METRICS))
    check_number("level (e.g. 0.95)", level, minimum=0.5, maximum=0.999)
    check_number("tolerance (e.g. 0.05 for 5%)", tolerance, minimum=0.0, maximum=1.0)
    check_int("resamples", resamples, minimum=100)
    runs_a, runs_b = load_runs(a, store), load_runs(b, store)
    rng = np.random.default_rng(seed)
    rows = []
    for name, (lower_is_better, per_query) in METRICS.items():
        value_a = _pooled(runs_a, name) if per_query else float(np.median([r.value(name) for r in runs_a]))
        value_b = _pooled(runs_b, name) if per_query else float(np.median([r.value(name) for r in runs_b]))
        ratio = value_b / value_a if value_a else math.nan
        low = high = math.nan
        if per_query or (len(runs_a) > 1 and len(runs_b) > 1):
            with np.errstate(divide="ignore", invalid="ignore"):  # a metric that is 0 (no cost) has no ratio
                ratios = _bootstrap(runs_b, name, per_query, resamples, rng) / _bootstrap(
                    runs_a, name, per_query, resamples, rng
                )
            ratios = ratios[np.isfinite(ratios)]
            if len(ratios):
                low, high = (float(q) for q in np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2]))
        rows.append(
            {
                "metric": name,
                "a": value_a,
                "b": value_b,
                "ratio": ratio,
                "ci_low": low,
                "ci_high": high,
                "verdict": _verdict(name, ratio, low, high, tolerance, lower_is_better),
            }
        )
    verdict = next(str(r["verdict"]) for r in rows if r["metric"] == metric)
    return Comparison(tuple(rows), metric, verdict, level, tolerance, (len(runs_a), len(runs_b)))


def _pooled(runs: list[RunSample], metric: str) -> float:
    return runs[0].value(metric, np.concatenate([r.latencies for r in runs]))


def _bootstrap(
    runs: list[RunSample], metric: str, per_query: bool, resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """The metric over ``resamples`` bootstrap resamples: repeats drawn with replacement, and (for a
    per-query metric) each drawn repeat's queries drawn with replacement too."""
    if not per_query:
        values = np.array([r.value(metric) for r in runs])
        medians: np.ndarray = np.median(values[rng.integers(0, len(runs), size=(resamples, len(runs)))], axis=1)
        return medians
    if len(runs) == 1:
        latencies = runs[0].latencies
        if not len(latencies):
            return np.full(resamples, math.nan)
        drawn = latencies[rng.integers(0, len(latencies), size=(resamples, len(latencies)))]
        statistic: np.ndarray = (
            drawn.mean(axis=1) if metric == "mean_latency_s" else np.percentile(drawn, PERCENTILES[metric], axis=1)
        )
        return statistic
    out = np.empty(resamples)
    for i in range(resamples):
        chosen = [runs[j].latencies for j in rng.integers(0, len(runs), size=len(runs))]
        pooled = np.concatenate([lat[rng.integers(0, len(lat), size=len(lat))] for lat in chosen if len(lat)])
        out[i] = runs[0].value(metric, pooled)
    return out


def _verdict(metric: str, ratio: float, low: float, high: float, tolerance: float, lower_is_better: bool) -> str:
    better, worse = _WORDS.get(metric, ("faster", "slower"))
    if math.isnan(low) or math.isnan(ratio):
        return "no interval (one run a side)" if not math.isnan(ratio) else "n/a"
    if low > 1.0 + tolerance:
        return worse if lower_is_better else better
    if high < 1.0 - tolerance:
        return better if lower_is_better else worse
    return "no difference"
