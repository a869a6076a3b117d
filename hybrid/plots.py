"""Figures for notebooks and reports; each function returns a matplotlib ``Figure``.

Every figure has a title, axis labels with units and a legend where there is more than one
series, so it can be pasted into a report as it is.  Nothing here calls ``plt.show()``: a notebook
displays a returned figure by itself, a script saves it with ``fig.savefig(path)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

from hybrid.results import RunResult

_STAGE_COLOURS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860")
_RUN_COLOUR = "#8172B3"


def _figure(width: float = 8.0, height: float = 4.0) -> tuple[Figure, matplotlib.axes.Axes]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def timeline(run: RunResult | Mapping[str, RunResult], *, title: str | None = None) -> Figure:
    """One bar per query from its start to its finish, coloured by stage; failures hatched.

    Pass one run, or several by label (e.g. ``{"legacy": legacy, "hybrid": hybrid}``) to stack
    them on a shared time axis — the picture that shows parallelism at a glance.
    """
    runs = {"": run} if isinstance(run, RunResult) else dict(run)
    rows = [(label, each.mode, r) for label, each in runs.items() for r in each.results]
    fig, ax = _figure(9.0, max(2.5, 0.38 * len(rows) + 1.2))
    legend_seen: set[str] = set()
    for y, (label, mode, r) in enumerate(reversed(rows)):
        if r.stage is None:  # a plain run: one colour for the whole run
            key, colour = f"{label or 'run'} ({mode})", _RUN_COLOUR
        else:
            key, colour = f"stage {r.stage + 1}", _STAGE_COLOURS[r.stage % len(_STAGE_COLOURS)]
        if r.queue_s > 0.0005:
            ax.barh(y, r.queue_s, left=r.started_s - r.queue_s, color="lightgrey", height=0.6)
        ax.barh(
            y,
            max(r.finished_s - r.started_s, 1e-4),
            left=r.started_s,
            color=colour,
            height=0.6,
            hatch=None if r.ok else "//",
            edgecolor="black" if not r.ok else colour,
            label=None if key in legend_seen else key,
        )
        legend_seen.add(key)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{label}: {r.name}" if label else r.name for label, _, r in reversed(rows)])
    ax.set_xlabel("time since the run started (s)")
    ax.set_title(title or "Query timeline: one bar per query, start to finish")
    ax.legend(loc="lower right", title="grey: waiting for a slot; hatched: failed", fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    return fig


def efficiency(frame: pd.DataFrame, *, x: str = "concurrency", title: str | None = None) -> Figure:
    """Measured parallel efficiency against the ideal, by ``x`` (concurrency, or a label column).

    ``frame`` needs ``parallel_efficiency`` and ``ideal_efficiency`` columns (as :func:`hybrid.bench.sweep`
    and :meth:`RunMetrics` give); efficiency 1.0 means no overlap at all.
    """
    fig, ax = _figure()
    xs = frame[x]
    if xs.dtype.kind in "iuf":
        ax.plot(xs, frame["ideal_efficiency"], "--", color="grey", label="ideal (same latencies and limit)")
        ax.plot(xs, frame["parallel_efficiency"], "o-", color=_STAGE_COLOURS[0], label="measured")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("max concurrency (queries in flight)")
        if "throughput_qps" in frame:
            # Efficiency counts server-side queueing as latency; the knee shows in throughput.
            right = ax.twinx()
            right.plot(xs, frame["throughput_qps"], "s:", color=_STAGE_COLOURS[1], label="throughput (right axis)")
            right.set_ylabel("throughput (queries/s)")
            right.set_ylim(bottom=0)
            handles, labels = ax.get_legend_handles_labels()
            more, more_labels = right.get_legend_handles_labels()
            ax.legend(handles + more, labels + more_labels, loc="upper left")
    else:
        positions = range(len(xs))
        ax.bar(positions, frame["ideal_efficiency"], color="lightgrey", label="ideal", width=0.6)
        ax.bar(positions, frame["parallel_efficiency"], color=_STAGE_COLOURS[0], label="measured", width=0.35)
        ax.set_xticks(list(positions))
        ax.set_xticklabels([str(v) for v in xs])
        ax.set_xlabel(x)
    ax.set_ylabel("parallel efficiency = sum of latencies / wall (x)")
    ax.set_title(title or "Parallel efficiency against the ideal")
    if ax.get_legend() is None:
        ax.legend()
    ax.grid(alpha=0.3)
    return fig


def speedup(frame: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Speedup over the sequential run, one bar per mode (``mode`` and ``speedup`` columns)."""
    fig, ax = _figure(6.0, 4.0)
    grouped = frame.groupby("mode", sort=False)["speedup"]
    medians = grouped.median()
    spread = grouped.agg(lambda s: s.max() - s.min()).to_numpy(dtype=float)
    bars = ax.bar(
        medians.index, medians.to_numpy(dtype=float), yerr=spread / 2, capsize=4, color=_STAGE_COLOURS[: len(medians)]
    )
    ax.bar_label(bars, labels=[f"{v:.1f}x" for v in medians.to_numpy(dtype=float)])
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="sequential")
    ax.set_ylabel("speedup over sequential (x, median of repeats)")
    ax.set_xlabel("mode")
    ax.set_title(title or "Speedup by mode")
    ax.legend()
    return fig


def tokens(runs: RunResult | Mapping[str, RunResult], *, title: str | None = None) -> Figure:
    """Prompt vs completion tokens per query, and (for several runs) the totals side by side."""
    runs = {"run": runs} if isinstance(runs, RunResult) else dict(runs)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    per_query, totals = fig.subplots(1, 2, width_ratios=[3, 1])
    names, prompt, completion = [], [], []
    for label, run in runs.items():
        for r in run.results:
            names.append(f"{label}: {r.name}" if len(runs) > 1 else r.name)
            prompt.append(r.usage.prompt_tokens)
            completion.append(r.usage.completion_tokens)
    positions = range(len(names))
    per_query.bar(positions, prompt, label="prompt", color=_STAGE_COLOURS[0])
    per_query.bar(positions, completion, bottom=prompt, label="completion", color=_STAGE_COLOURS[1])
    per_query.set_xticks(list(positions))
    per_query.set_xticklabels(names, rotation=45, ha="right")
    per_query.set_ylabel("tokens")
    per_query.set_title("per query")
    per_query.legend()
    labels = list(runs)
    totals.bar(labels, [r.metrics.prompt_tokens for r in runs.values()], color=_STAGE_COLOURS[0], label="prompt")
    totals.bar(
        labels,
        [r.metrics.completion_tokens for r in runs.values()],
        bottom=[r.metrics.prompt_tokens for r in runs.values()],
        color=_STAGE_COLOURS[1],
        label="completion",
    )
    totals.set_ylabel("tokens")
    totals.set_title("total per run")
    fig.suptitle(title or "Token usage")
    return fig


def latency(frame: pd.DataFrame, *, by: str = "mode", title: str | None = None) -> Figure:
    """Latency CDF per group: ``frame`` has a ``latency_s`` column (one row per query) and ``by``."""
    import numpy as np

    fig, ax = _figure()
    groups: Sequence[tuple[object, pd.DataFrame]] = (
        list(frame.groupby(by, sort=False)) if by in frame else [("all", frame)]
    )
    for i, (label, group) in enumerate(groups):
        values = np.sort(group["latency_s"].to_numpy())
        if len(values) == 0:
            continue
        ax.step(
            values,
            np.arange(1, len(values) + 1) / len(values),
            where="post",
            label=str(label),
            color=_STAGE_COLOURS[i % len(_STAGE_COLOURS)],
        )
    for q in (0.5, 0.95, 0.99):
        ax.axhline(q, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xlabel("latency per query (s)")
    ax.set_ylabel("fraction of queries at or below")
    ax.set_title(title or "Latency distribution (dotted: p50, p95, p99)")
    ax.legend(title=by)
    ax.grid(alpha=0.3)
    return fig
