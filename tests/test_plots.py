"""Figures draw names as text: a query name, run label, mode or column value that matplotlib
would read as math (two ``$``) is drawn as typed, and never makes a figure (or a viewer page) fail."""

from __future__ import annotations

import io
import itertools

import pandas as pd
import pytest
from matplotlib.figure import Figure

from hybrid import Orchestrator, Query, Retry, plots, sim

NAMES = ["$$", r"$\alert$", "grep 'foo$' | sed 's/^$//'", "costs $5 or $6"]


def drawn(labels: list[object]) -> list[str]:
    """What matplotlib will show for these tick labels (text, not math)."""
    shown = []
    for label in labels:
        text, is_math = label._preprocess_math(label.get_text())  # type: ignore[attr-defined]
        assert not is_math
        shown.append(text)
    return shown


def renders(figure: Figure) -> None:
    figure.savefig(io.BytesIO(), format="svg")


async def test_every_figure_draws_names_as_text() -> None:
    async with Orchestrator(sim.backend(sim.SimConfig(seed=1, time_scale=0.0))) as orch:
        run = await orch.run([Query(name, f"question {i}") for i, name in enumerate(NAMES)])
    timeline = plots.timeline(run)
    assert drawn(timeline.axes[0].get_yticklabels()) == list(reversed(NAMES))
    tokens = plots.tokens({"$a$": run, "$b$": run})
    assert drawn(tokens.axes[0].get_xticklabels())[:2] == [f"$a$: {NAMES[0]}", f"$a$: {NAMES[1]}"]
    decomposition = plots.decomposition(run)
    assert drawn(decomposition.axes[0].get_xticklabels()) == NAMES
    frame = pd.DataFrame({"mode": ["$x$", "$y$"], "speedup": [1.0, 2.0], "latency_s": [0.1, 0.2]})
    sweep = pd.DataFrame({"label": ["$p$", "$q$"], "ideal_efficiency": [2.0, 3.0], "parallel_efficiency": [1.5, 2.5]})
    figures = [
        timeline,
        plots.timeline({"$run$": run}),
        tokens,
        decomposition,
        plots.decomposition({"$m$": run}),
        plots.wall({"$w$": run}),
        plots.latency(frame),
        plots.speedup(frame),
        plots.efficiency(sweep, x="label"),
        plots.concurrency(run),
    ]
    for figure in figures:
        renders(figure)
    assert drawn(figures[6].legends[0].get_texts()) == ["$x$", "$y$"]  # the latency figure's groups


@pytest.mark.looptime
async def test_the_timeline_legend_explains_only_what_is_drawn() -> None:
    from hybrid import ServerError
    from hybrid.testing import Answer, Fail, FakeBackend

    def legend_title(run: object) -> str:
        figure = plots.timeline(run)  # type: ignore[arg-type]
        return str(figure.legends[0].get_title().get_text())

    quick = [Query(f"q{i}", "x") for i in range(2)]
    async with Orchestrator(FakeBackend(default=Answer("ok", delay=1.0)), max_concurrency=2) as orch:
        side_by_side = await orch.run(quick)
    async with Orchestrator(FakeBackend(default=Answer("ok", delay=1.0)), max_concurrency=1) as orch:
        waiting = await orch.run(quick)
    broken = FakeBackend({"q1": Fail(ServerError("down"))}, default=Answer("ok", delay=1.0))
    async with Orchestrator(broken, max_concurrency=2, retry=Retry.never()) as orch:
        failing = await orch.run(quick, raise_if_all_failed=False)
    assert legend_title(side_by_side) == ""
    assert legend_title(waiting) == "grey: waiting for a slot"
    assert legend_title(failing) == "hatched: failed"


def test_efficiency_is_drawn_in_percent_on_an_axis_fitted_to_the_data() -> None:
    sweep = pd.DataFrame(
        {"concurrency": [1, 2, 4], "parallel_efficiency": [0.98, 1.9, 3.6], "ideal_efficiency": [1.0, 1.95, 3.7]}
    )
    ax = plots.efficiency(sweep).axes[0]
    measured = ax.get_lines()[1].get_ydata()
    assert list(measured) == pytest.approx([98.0, 190.0, 360.0]) and "(%)" in ax.get_ylabel()
    assert ax.get_ylim() == pytest.approx((0.0, 370.0 * 1.1))


@pytest.mark.looptime
@pytest.mark.parametrize("size", [10, 120, 2_000])
async def test_per_query_figures_stay_readable_at_any_size(size: int) -> None:
    """At most plots.MAX_BARS bars or lanes, named by query up to that many and by index span after."""
    from hybrid.testing import Answer, FakeBackend

    async with Orchestrator(FakeBackend(default=Answer("ok", delay=1.0)), max_concurrency=50) as orch:
        run = await orch.run([Query(f"q{i}", "x") for i in range(size)])
    timeline, decomposition, tokens = plots.timeline(run), plots.decomposition(run), plots.tokens(run)
    lanes = [label.get_text() for label in timeline.axes[0].get_yticklabels()][::-1]
    bars = [label.get_text() for label in decomposition.axes[0].get_xticklabels()]
    columns = [label.get_text() for label in tokens.axes[0].get_xticklabels()]
    for labels in (lanes, bars, columns):
        assert len(labels) == min(size, plots.MAX_BARS)
        if size <= plots.MAX_BARS:
            assert labels == [f"q{i}" for i in range(size)]
        else:  # consecutive spans that cover every query once
            spans = [label[1:].split("-") for label in labels]
            assert spans[0][0] == "0" and spans[-1][-1] == str(size - 1)
            assert all(int(a[-1]) + 1 == int(b[0]) for a, b in itertools.pairwise(spans))
    assert timeline.get_size_inches()[1] <= 0.22 * plots.MAX_BARS + 1.4  # bounded height


@pytest.mark.looptime
async def test_a_run_answered_from_the_cache_says_it_has_no_latency_to_split(tmp_path: object) -> None:
    from hybrid import Store
    from hybrid.testing import Answer, FakeBackend

    queries = [Query(f"q{i}", "x") for i in range(3)]
    store = Store(tmp_path / "runs.sqlite")  # type: ignore[operator]
    async with Orchestrator(FakeBackend(default=Answer("ok", delay=1.0)), store=store, cache=True) as orch:
        await orch.run(queries)
        cached = await orch.run(queries)
    figure = plots.decomposition(cached)
    assert "No query was answered over the wire" in figure.axes[0].texts[0].get_text() and not figure.legends
