"""Figures for notebooks and reports; each function returns a matplotlib ``Figure``.

Every figure has a title, axis labels with units and a legend where there is more than one
series, so it can be pasted into a report as it is.  Legends sit outside the plotting area
(:func:`_legend`), so they never cover data.  Nothing here calls ``plt.show()``: a notebook
displays a returned figure by itself, a script saves it with ``fig.savefig(path)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import matplotlib

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

from hybrid.query import QueryResult
from hybrid.results import RunResult

_STAGE_COLOURS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860")
_RUN_COLOUR = "#8172B3"
#: Plain (unstaged) runs side by side: colours apart from the stages' first ones.
_RUN_COLOURS = (_RUN_COLOUR, "#64B5CD", "#DA8BC3", "#CCB974")


def _figure(width: float = 8.0, height: float = 4.0) -> tuple[Figure, matplotlib.axes.Axes]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def _text(value: object) -> str:
    """A name (a query's, a run's label, a mode, a column value) as matplotlib should draw it: as
    text.  Matplotlib reads a string with two ``$`` as math (``$$`` or ``grep 'foo$' | sed 's/^$//'``
    would raise, or draw as formulas); an escaped ``\\$`` is drawn as a plain dollar sign."""
    return str(value).replace("$", r"\$")


def _legend(ax: Any, handles: list[Any] | None = None, labels: list[str] | None = None, **options: Any) -> None:
    """The axes' legend as a figure legend right of every plotting area (``"outside right upper"``:
    constrained layout makes room, beside a second y axis too), where it cannot hide a bar or a
    point, whatever the data."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    ax.figure.legend(handles, labels, loc="outside right upper", **options)


#: A per-query plot draws at most this many bars (or timeline lanes); a bigger run is drawn in
#: groups of consecutive queries, so its axes stay readable and its height bounded at any size.
MAX_BARS = 30


def groups(count: int, most: int = MAX_BARS) -> list[range]:
    """``count`` rows, in order, as at most ``most`` groups of consecutive rows (equal but the last)."""
    size = max(1, math.ceil(count / max(1, most)))
    return [range(first, min(count, first + size)) for first in range(0, count, size)]


def _span_label(first: int, last: int) -> str:
    """A group of queries by the indices of its first and last: ``#0-333``, or ``#30`` for one."""
    return f"#{first}" + (f"-{last}" if last != first else "")


def _per_query(runs: Mapping[str, RunResult]) -> Iterator[tuple[str, str, Sequence[QueryResult]]]:
    """Each run's queries as the per-query figures draw them: (run label, name, queries), one per
    query up to :data:`MAX_BARS` in all, else groups of consecutive ones (each run its share of the
    bars) named by their span."""
    total = sum(len(run.results) for run in runs.values())
    for label, run in runs.items():
        share = MAX_BARS if total <= MAX_BARS else max(1, MAX_BARS * len(run.results) // total)
        for group in groups(len(run.results), share):
            rows = run.results[group.start : group.stop]
            yield label, rows[0].name if total <= MAX_BARS else _span_label(group.start, group.stop - 1), rows


def _spans(intervals: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Intervals ``(start, end)`` merged where they overlap, as ``(start, width)`` for ``broken_barh``."""
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, max(end - start, 1e-4)) for start, end in merged]


def timeline(run: RunResult | Mapping[str, RunResult], *, title: str | None = None) -> Figure:
    """One bar per query from its start to its finish, coloured by stage; failures hatched.

    Pass one run, or several by label (e.g. ``{"legacy": legacy, "hybrid": hybrid}``) to stack
    them on a shared time axis — the picture that shows parallelism at a glance.  Beyond
    :data:`MAX_BARS` queries, each lane is a group of consecutive queries (``#0-249``) drawn where
    any of them was in flight, so a run of 10,000 is as tall as one of 30.
    """
    runs = {"": run} if isinstance(run, RunResult) else dict(run)
    total = sum(len(each.results) for each in runs.values())
    lanes = [  # (tick label, run label, mode, queries)
        (_text(f"{label}: {name}" if label else name), label, runs[label].mode, rows)
        for label, name, rows in _per_query(runs)
    ]
    grouped = len(lanes) < total
    fig, ax = _figure(9.0, max(2.5, 0.22 * len(lanes) + 1.4))
    legend_seen: set[str] = set()
    waited = failed = False
    colours = {label: _RUN_COLOURS[i % len(_RUN_COLOURS)] for i, label in enumerate(runs)}
    # A wait too short to see at this scale is not drawn, so the legend never names what is not there.
    visible = 0.005 * max((r.finished_s for _, _, _, lane in lanes for r in lane), default=0.0)
    for y, (_, label, mode, lane) in enumerate(reversed(lanes)):
        first = lane[0]
        if first.stage is None:  # a plain run: one colour for the whole run
            key, colour = _text(f"{label or 'run'} ({mode})"), colours[label]
        else:
            key, colour = f"stage {first.stage + 1}", _STAGE_COLOURS[first.stage % len(_STAGE_COLOURS)]
        queued = [(r.started_s - r.queue_s, r.started_s) for r in lane if r.queue_s > max(visible, 0.0005)]
        if queued:
            ax.broken_barh(_spans(queued), (y - 0.3, 0.6), color="lightgrey")
            waited = True
        lane_failed = not all(r.ok for r in lane)
        failed = failed or lane_failed
        ax.broken_barh(
            _spans([(r.started_s, r.finished_s) for r in lane]),
            (y - 0.3, 0.6),
            color=colour,
            hatch="//" if lane_failed else None,
            edgecolor="black" if lane_failed else colour,
            label=None if key in legend_seen else key,
        )
        legend_seen.add(key)
    ax.set_yticks(range(len(lanes)))
    ax.set_yticklabels([tick for tick, _, _, _ in reversed(lanes)])
    ax.set_ylim(-0.6, len(lanes) - 0.4)
    ax.set_xlabel("time since the run started (s)")
    if grouped:
        ax.set_ylabel("groups of consecutive queries, drawn where any was in flight", fontsize="small")
    ax.set_title(
        title
        or ("Query timeline: one bar per query, start to finish" if not grouped else f"Query timeline: {total} queries")
    )
    # The legend's title explains only what is drawn.
    notes = [
        note
        for note, drawn in (
            ("grey: waiting for a slot", waited),
            ("hatched: failed" if not grouped else "hatched: a query failed", failed),
        )
        if drawn
    ]
    handles, labels = ax.get_legend_handles_labels()  # drawn bottom up: listed top down, as the lanes read
    _legend(ax, handles[::-1], labels[::-1], title="\n".join(notes) or None, fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    return fig


def efficiency(frame: pd.DataFrame, *, x: str = "concurrency", title: str | None = None) -> Figure:
    """Measured parallel efficiency against the ideal, by ``x`` (concurrency, or a label column).

    ``frame`` needs ``parallel_efficiency`` and ``ideal_efficiency`` columns (as :func:`hybrid.bench.sweep`
    and :meth:`RunMetrics` give); it is drawn in percent, as the kit's summaries write it: 100% means
    no overlap at all.  With ``throughput_qps``
    the throughput is drawn on a right axis, and levels a sweep flagged ``efficiency_misleading``
    (efficiency up, throughput flat: the server's queue counted as latency) are circled in red.
    """
    fig, ax = _figure()
    xs = frame[x]
    # In percent, as the kit's text says it ("193%"), on an axis fitted to the data.
    measured, ideal = frame["parallel_efficiency"] * 100, frame["ideal_efficiency"] * 100
    axes = [ax]
    if xs.dtype.kind in "iuf":
        ax.plot(xs, ideal, "--", color="grey", label="ideal (same latencies and limit)")
        ax.plot(xs, measured, "o-", color=_STAGE_COLOURS[0], label="measured")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("max concurrency (queries in flight)")
        if "efficiency_misleading" in frame and frame["efficiency_misleading"].any():
            flagged = frame["efficiency_misleading"].astype(bool)
            ax.plot(
                xs[flagged],
                measured[flagged],
                "o",
                markersize=12,
                markerfacecolor="none",
                markeredgecolor="red",
                label="efficiency up, throughput flat:\nqueueing, not speed",
            )
        if "throughput_qps" in frame:
            # Efficiency counts server-side queueing as latency; the knee shows in throughput.
            right = ax.twinx()
            right.plot(xs, frame["throughput_qps"], "s:", color=_STAGE_COLOURS[1], label="throughput (right axis)")
            right.set_ylabel("throughput (queries/s)")
            right.set_ylim(bottom=0)
            axes.append(right)
    else:
        positions = range(len(xs))
        ax.bar(positions, ideal, color="lightgrey", label="ideal", width=0.6)
        ax.bar(positions, measured, color=_STAGE_COLOURS[0], label="measured", width=0.35)
        ax.set_xticks(list(positions))
        ax.set_xticklabels([_text(v) for v in xs])
        ax.set_xlabel(_text(x))
    ax.set_ylabel("parallel efficiency = sum of latencies / wall (%)")
    top = max(measured.max(), ideal.max())
    if top == top:  # not NaN: leave a tenth of head room above the highest point, no more
        ax.set_ylim(0, top * 1.1)
    ax.set_title(title or "Parallel efficiency against the ideal")
    handles: list[Any] = []
    labels: list[str] = []
    for each in axes:
        more, more_labels = each.get_legend_handles_labels()
        handles, labels = handles + more, labels + more_labels
    _legend(ax, handles, labels)
    ax.grid(alpha=0.3)
    return fig


def speedup(frame: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Speedup over the sequential run, one bar per mode (``mode`` and ``speedup`` columns)."""
    fig, ax = _figure(6.0, 4.0)
    grouped = frame.groupby("mode", sort=False)["speedup"]
    medians = grouped.median()
    spread = grouped.agg(lambda s: s.max() - s.min()).to_numpy(dtype=float)
    bars = ax.bar(
        [_text(mode) for mode in medians.index],
        medians.to_numpy(dtype=float),
        yerr=spread / 2,
        capsize=4,
        color=_STAGE_COLOURS[: len(medians)],
    )
    ax.bar_label(bars, labels=[f"{v:.1f}x" for v in medians.to_numpy(dtype=float)])
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="sequential")
    ax.set_ylabel("speedup over sequential (x, median of repeats)")
    ax.set_xlabel("mode")
    ax.set_title(title or "Speedup by mode")
    _legend(ax)
    return fig


def tokens(runs: RunResult | Mapping[str, RunResult], *, title: str | None = None) -> Figure:
    """Prompt vs completion tokens per query, and (for several runs) the totals side by side."""
    runs = {"run": runs} if isinstance(runs, RunResult) else dict(runs)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    per_query, totals = fig.subplots(1, 2, width_ratios=[3, 1])
    names, prompt, completion = [], [], []
    total = sum(len(run.results) for run in runs.values())
    for label, name, rows in _per_query(runs):
        names.append(_text(f"{label}: {name}" if len(runs) > 1 else name))
        prompt.append(sum(r.usage.prompt_tokens for r in rows) / len(rows))
        completion.append(sum(r.usage.completion_tokens for r in rows) / len(rows))
    positions = range(len(names))
    per_query.bar(positions, prompt, label="prompt", color=_STAGE_COLOURS[0])
    per_query.bar(positions, completion, bottom=prompt, label="completion", color=_STAGE_COLOURS[1])
    per_query.set_xticks(list(positions))
    per_query.set_xticklabels(names, rotation=90, fontsize="small")  # upright labels cannot run into each other
    per_query.set_ylabel("tokens per query")
    per_query.set_title("per query" if len(names) == total else "per query, mean of each group of consecutive ones")
    labels = [_text(label) for label in runs]
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
    _legend(totals)
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
            label=_text(label),
            color=_STAGE_COLOURS[i % len(_STAGE_COLOURS)],
        )
    for q in (0.5, 0.95, 0.99):
        ax.axhline(q, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xlabel("latency per query (s)")
    ax.set_ylabel("fraction of queries at or below")
    ax.set_title(title or "Latency distribution (dotted: p50, p95, p99)")
    _legend(ax, title=_text(by))
    ax.grid(alpha=0.3)
    return fig


#: A row's latency parts (and the client's queue before them), in the order they happen.
PARTS = (
    ("queue_s", "client queue (waiting for a slot)", "lightgrey"),
    ("retry_s", "failed attempts and backoff", "#C44E52"),
    ("client_s", "client, before the request left", "#DD8452"),
    ("server_queue_s", "server queue", "#8172B3"),
    ("server_s", "server work", "#4C72B0"),
    ("network_s", "network and the rest", "#55A868"),
)


def decomposition(
    data: RunResult | Mapping[str, RunResult] | pd.DataFrame, *, by: str = "concurrency", title: str | None = None
) -> Figure:
    """Where the time of each query went, stacked: the client's queue, then the latency's parts
    (:class:`~hybrid.query.QueryResult`: retries, client, server queue, server work, the rest).

    One run: a bar per answered query.  Several runs by label (``{"threads": a, "gather": b}``): a
    bar per run, the mean query.  A sweep's frame (:func:`hybrid.bench.sweep`): a bar per ``by``
    level, the mean query at that level.
    """
    import pandas as pd

    columns = [part for part, _, _ in PARTS]
    if isinstance(data, RunResult):
        rows = _answered_over_the_wire(data)
        labels, xlabel = [_text(name) for name in rows["name"]], "query"
        if len(rows) > MAX_BARS:
            parts = [rows[columns].iloc[group.start : group.stop] for group in groups(len(rows))]
            labels = [_span_label(part.index[0], part.index[-1]) for part in parts]
            rows = pd.DataFrame([part.astype(float).mean() for part in parts])
            xlabel = "queries, in groups of consecutive ones (the mean query of each)"
    elif isinstance(data, Mapping):
        rows = pd.DataFrame([_answered_over_the_wire(run)[columns].astype(float).mean() for run in data.values()])
        labels, xlabel = [_text(label) for label in data], "run (mean query)"
    else:
        means = {part: f"mean_{part}" for part, _, _ in PARTS}
        rows = (
            data.groupby(by, sort=True)[list(means.values())].median().rename(columns={v: k for k, v in means.items()})
        )
        labels, xlabel = [_text(level) for level in rows.index], _text(f"{by} (mean query, median of repeats)")
    fig, ax = _figure(max(6.0, min(14.0, 0.35 * len(labels) + 4.0)), 4.0)
    positions = list(range(len(labels)))
    bottom = [0.0] * len(labels)
    for part, label, colour in PARTS:
        if part not in rows or not len(rows):
            continue
        values = rows[part].astype(float).fillna(0.0).tolist()  # a part the server did not report: none drawn
        if not any(values):
            continue
        ax.bar(positions, values, bottom=bottom, color=colour, label=label, width=0.7)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xticks(positions)
    ax.set_xticklabels(labels, rotation=90, fontsize="small")  # upright labels cannot run into each other
    ax.set_xlabel(xlabel)
    ax.set_ylabel("time per query (s)")
    ax.set_title(title or "Where each query's time went")
    if not len(rows):  # every answer came from the cache, a resume or a batch: none has a latency
        ax.text(0.5, 0.5, "No query was answered over the wire\n(cache, resume or batch): no latency to split",
                ha="center", va="center", transform=ax.transAxes)  # fmt: skip
        ax.set_yticks([])
        return fig
    _legend(ax, fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return fig


def _answered_over_the_wire(run: RunResult) -> pd.DataFrame:
    """The run's rows answered ok by a request of this run (not the cache, a resume or a batch)."""
    rows = run.to_frame()
    return rows[rows["ok"] & (rows["origin"] == "sent")]


def concurrency(run: RunResult, *, title: str | None = None) -> Figure:
    """Queries in flight over the run, and (``max_concurrency="auto"``) the adaptive limit."""
    fig, ax = _figure()
    sent = [r for r in run.results if r.origin == "sent" and r.attempts]
    changes = sorted([(r.started_s, 1) for r in sent] + [(r.finished_s, -1) for r in sent])
    times, counts, level = [0.0], [0], 0
    for at, step in changes:
        level += step
        times.append(at)
        counts.append(level)
    ax.step(times, counts, where="post", color=_STAGE_COLOURS[0], label="queries in flight")
    trace = run.metrics.concurrency_trace
    if trace:
        xs = [at for at, _ in trace] + [run.metrics.wall_s]
        ys = [limit for _, limit in trace] + [trace[-1][1]]
        ax.step(xs, ys, where="post", color=_STAGE_COLOURS[3], linestyle="--", label="adaptive limit")
    ax.set_xlabel("time since the run started (s)")
    ax.set_ylabel("queries")
    ax.set_ylim(bottom=0)
    ax.set_title(title or "Concurrency over the run")
    _legend(ax)
    ax.grid(alpha=0.3)
    return fig


def wall(runs: Mapping[str, RunResult], *, title: str | None = None) -> Figure:
    """What the wall time of each run is made of: one bar per run, split by pipeline stage (a stage
    waits for the one before), with the summed query time beside it.  Efficiency is work / wall:
    the figure shows *why* one run's wall is longer, which two efficiency bars at their ideal cannot."""
    fig, ax = _figure(9.0, 1.2 + 1.1 * len(runs))
    longest = 0.0
    for y, run in enumerate(reversed(list(runs.values()))):
        stages: dict[int | None, list[float]] = {}
        for r in run.results:
            stages.setdefault(r.stage, []).append(r.finished_s)
        left = 0.0
        for i, (stage, finishes) in enumerate(sorted(stages.items(), key=lambda kv: max(kv[1]))):
            end = max(finishes)
            name = "gathered" if stage is None else f"stage {stage + 1}"
            count = f"{len(finishes)} quer{'y' if len(finishes) == 1 else 'ies'}"
            ax.barh(y + 0.18, end - left, left=left, height=0.34, color=_STAGE_COLOURS[i % len(_STAGE_COLOURS)])
            ax.text(
                left + (end - left) / 2,
                y + 0.18,
                f"{name}\n{count}",
                ha="center",
                va="center",
                fontsize="x-small",
                color="white",
            )
            left = end
        m = run.metrics
        ax.barh(y - 0.2, m.sum_latency_s, height=0.3, color="lightgrey", label="summed query time" if y == 0 else None)
        ax.text(
            m.sum_latency_s,
            y - 0.2,
            f"  efficiency {m.parallel_efficiency:.0%} (ideal {m.ideal_efficiency:.0%})",
            va="center",
            fontsize="small",
        )
        longest = max(longest, m.sum_latency_s, left)
    ax.set_xlim(0, longest * 1.45)  # room for the efficiency labels
    ax.set_yticks(range(len(runs)))
    ax.set_yticklabels([_text(label) for label in reversed(list(runs))])
    ax.set_xlabel("time (s); top bar: the wall, by stage; grey: the queries' summed time")
    ax.set_title(title or "Where the wall time goes")
    ax.grid(axis="x", alpha=0.3)
    _legend(ax, fontsize="small")
    return fig


def frontier(throughput: Sequence[float], latency: Sequence[float]) -> list[int]:
    """Positions of the Pareto frontier: the points no other point beats on both counts (more
    throughput and less latency, or as much of one and strictly better on the other), in order of
    rising throughput.  NaN points are never on it."""
    points = [(t, lat, i) for i, (t, lat) in enumerate(zip(throughput, latency, strict=True)) if t == t and lat == lat]
    front = []
    best = math.inf
    # Highest throughput first (lowest latency among equals): a point is on the frontier when its
    # latency is below every point's seen so far, each of which has as much throughput or more.
    for _, lat, i in sorted(points, key=lambda p: (-p[0], p[1])):
        if lat < best:
            front.append(i)
            best = lat
    return front[::-1]


def pareto(
    frame: pd.DataFrame,
    *,
    latency: str = "p95_latency_s",
    throughput: str = "throughput_qps",
    by: str = "concurrency",
    title: str | None = None,
) -> Figure:
    """Throughput against a latency percentile for each configuration of a sweep (the median of its
    repeats, labelled with its ``by`` value), the Pareto frontier marked and joined: the
    configurations worth choosing between, each the fastest for its throughput.  ``frame`` is what
    :func:`hybrid.bench.sweep` returns, or any frame with those columns (``by="label"`` for runs
    side by side)."""
    medians = frame.groupby(by, sort=False)[[throughput, latency]].median()
    xs, ys = list(medians[latency]), list(medians[throughput])
    front = frontier(ys, xs)
    fig, ax = _figure()
    ax.plot(xs, ys, "o", color="lightgrey", markeredgecolor="grey", label="a configuration")
    ax.plot(
        [xs[i] for i in front],
        [ys[i] for i in front],
        "o-",
        color=_STAGE_COLOURS[0],
        label="Pareto frontier: none better on both",
    )
    for x, y, name in zip(xs, ys, medians.index, strict=True):
        ax.annotate(_text(name), (x, y), textcoords="offset points", xytext=(5, 5), fontsize=9)
    percentile = latency.split("_")[0]
    ax.set_xlabel(f"{percentile} latency (s)" if percentile.startswith("p") else _text(latency))
    ax.set_ylabel("throughput (queries/s)")
    # Room around the points for their labels: none may reach the title, the frame or the legend.
    ax.margins(x=0.2)
    top = max((y for y in ys if y == y), default=0.0)
    ax.set_ylim(0, top * 1.15 if top > 0 else 1.0)
    ax.set_title(title or f"Throughput against {percentile} latency, by {_text(by)}")
    _legend(ax)
    ax.grid(alpha=0.3)
    return fig
