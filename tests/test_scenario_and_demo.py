"""The construction-audit scenario, the demo's outputs, the plots and the benchmark harness."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from hybrid import HTTPBackend, OpenAIBackend, Orchestrator, Retry, bench, plots, sim
from hybrid.bench.peers import peers
from hybrid.scenarios import construction_audit as audit
from hybrid.testing import Answer, FakeBackend

from .conftest import orchestrated


async def _hybrid_run(failing: set[str]) -> object:
    """Run the two hybrid queries on the scenario's simulator; names in ``failing`` ask an unknown model."""
    queries = [
        q if q.name not in failing else q.__class__(q.name, q.prompt, model="no-such-model")
        for q in audit.hybrid_queries()
    ]
    async with sim.serve(audit.sim_config(time_scale=0)) as server:
        backend = HTTPBackend(base_url=server.url, api_key=server.api_key, model=audit.MODEL)
        async with Orchestrator(backend, retry=Retry.never()) as orch:
            return await orch.run(queries, raise_if_all_failed=False)


async def test_merge_both_ok_gives_one_combined_report() -> None:
    report = audit.merge_report(await _hybrid_run(set()))  # type: ignore[arg-type]
    assert report.complete and report.warnings == ()
    assert {"completeness", "structure", "concrete", "costs", "schedule", "compliance", "risks", "verdict"} <= set(
        report.report
    )
    assert report.report["verdict"].startswith("Not compliant")


async def test_merge_one_failed_uses_defaults_and_names_it() -> None:
    report = audit.merge_report(await _hybrid_run({"compliance"}))  # type: ignore[arg-type]
    assert not report.complete
    assert len(report.warnings) == 1 and "compliance" in report.warnings[0]
    assert report.report["costs"] and report.report["risks"] == [] and report.report["verdict"].startswith("unknown")


async def test_merge_both_failed_is_a_clear_error() -> None:
    with pytest.raises(audit.AuditFailed, match="Both hybrid queries failed"):
        audit.merge_report(await _hybrid_run({"analysis", "compliance"}))  # type: ignore[arg-type]


async def test_legacy_pipeline_quotes_earlier_answers_and_costs_more_tokens() -> None:
    async with sim.serve(audit.sim_config(time_scale=0)) as server:
        backend = OpenAIBackend(base_url=server.url, api_key=server.api_key, model=audit.MODEL)
        async with Orchestrator(backend, prices=audit.PRICES) as orch:
            legacy = await orch.pipeline(audit.legacy_stages(), mode="threads")
            hybrid = await orch.run(audit.hybrid_queries())
    assert [r.stage for r in legacy.results] == [0, 1, 1, 1, 1, 2]
    assert legacy["validator"].text in legacy["standards"].query.prompt
    assert json.loads(legacy["standards"].text or "")["compliant"] is False
    reduction = 1 - hybrid.metrics.total_tokens / legacy.metrics.total_tokens
    assert reduction >= 0.8
    assert (legacy.metrics.cost_usd or 0) > (hybrid.metrics.cost_usd or 0) > 0


@pytest.mark.heavy
def test_demo_writes_the_summary_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "hybrid", "demo", "--out", str(out), "--time-scale", "0.02"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "speedup" in done.stdout and "token reduction" in done.stdout and str(out) in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "speedup",
        "token_reduction",
        "parallel_efficiency",
        "legacy_wall_s",
        "hybrid_wall_s",
        "legacy_tokens",
        "hybrid_tokens",
    ):
        assert isinstance(summary[key], int | float), key
    assert 0 < summary["token_reduction"] < 1
    assert summary["speedup"] == pytest.approx(summary["legacy_wall_s"] / summary["hybrid_wall_s"])
    assert summary["speedup"] >= 2.5 and summary["token_reduction"] >= 0.8
    assert summary["machine"]["cpu_count"] >= 1
    for name in ("timeline.png", "tokens.png", "efficiency.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_demo_timeline_names_its_clock() -> None:
    from hybrid.demo import clock_note

    assert (
        clock_note({"time_scale": 0.1, "virtual": False})
        == "real time, compressed 10x: divide by 0.1 for the model's pace"
    )
    assert clock_note({"time_scale": 1.0, "virtual": True}) == "virtual clock, the model's full pace"
    assert clock_note({"time_scale": 1.0, "virtual": False}) == "real time, the model's full pace"


def _labels(fig: matplotlib.figure.Figure) -> list[str]:
    return [ax.get_xlabel() for ax in fig.axes] + [ax.get_ylabel() for ax in fig.axes]


async def test_every_plot_renders_with_title_and_axis_labels(tmp_path: Path) -> None:
    async with orchestrated("http", config=sim.SimConfig(seed=1, time_scale=0.01)) as (orch, _):
        queries = bench.make_queries(6)
        run = await orch.run(queries)
        staged = await orch.pipeline([queries[:1], queries[1:4], queries[4:]])
        with pytest.warns(bench.SharedProcessWarning):  # a served simulator in this loop: fine for a picture
            compared = await bench.compare(orch, queries, repeats=1)
        decomposed = {"gather": run, "pipeline": staged}
    sweep = pd.DataFrame(
        {
            "concurrency": [1, 2, 4, 8],
            "parallel_efficiency": [1.0, 1.9, 3.5, 6.0],
            "ideal_efficiency": [1.0, 2.0, 4.0, 8.0],
            "throughput_qps": [1.0, 1.9, 3.5, 3.6],
            "efficiency_misleading": [False, False, False, True],
            **{f"mean_{part}": [0.1, 0.1, 0.2, 0.3] for part, _, _ in plots.PARTS},
        }
    )
    per_query = run.to_frame().assign(mode="gather")
    figures = [
        plots.timeline(run),
        plots.timeline({"a": run, "b": staged}),
        plots.efficiency(sweep),
        plots.speedup(compared),
        plots.tokens({"one": run, "two": staged}),
        plots.latency(per_query),
        plots.decomposition(run),
        plots.decomposition(decomposed),
        plots.decomposition(sweep),
        plots.concurrency(run),
        plots.wall(decomposed),
    ]
    for i, fig in enumerate(figures):
        labels = _labels(fig)
        assert all(ax.get_title() or fig.get_suptitle() for ax in fig.axes[:1]), i
        assert any("(s)" in label or "tokens" in label or "(x" in label or "(%)" in label for label in labels), (
            i,
            labels,
        )
        fig.savefig(tmp_path / f"{i}.png")
        assert (tmp_path / f"{i}.png").stat().st_size > 5000
        assert_legends_cover_no_data(fig, i)


def assert_legends_cover_no_data(fig: matplotlib.figure.Figure, i: int) -> None:
    """Every legend lies outside every plotting area of its figure, so it hides no bar or point."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
    assert legends, f"figure {i} has no legend"
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), f"figure {i}: the legend covers a plot"


@pytest.mark.looptime
async def test_compare_and_sweep_keep_raw_samples_and_derive_speedup() -> None:
    backend = FakeBackend(default=Answer(delay=0.1))
    queries = bench.make_queries(4)
    async with Orchestrator(backend, max_concurrency=4) as orch:
        frame = await bench.compare(orch, queries, repeats=2)
    swept = await bench.sweep(backend, queries, levels=(1, 2, 4))
    assert list(frame["mode"]) == ["sequential", "gather"] * 2  # no threads without a sync client
    assert all(len(sample) == 4 for sample in frame["latencies"])
    medians = bench.summarize(frame)
    assert medians.loc["gather", "speedup"] == pytest.approx(4.0) and medians.loc["sequential", "speedup"] == 1.0
    assert list(swept["concurrency"]) == [1, 2, 4] and (swept["succeeded"] == 4).all()
    assert list(swept["wall_s"]) == pytest.approx([0.4, 0.2, 0.1]) and list(swept["speedup"]) == pytest.approx(
        [1, 2, 4]
    )


@pytest.mark.looptime
async def test_open_loop_arrivals_do_not_wait_for_earlier_answers() -> None:
    # One slot, one second per answer, 20 arrivals per second: arrivals keep their schedule and the queue grows.
    async with Orchestrator(FakeBackend(default=Answer(delay=1.0)), max_concurrency=1) as orch:
        frame = await bench.open_loop(orch, bench.make_queries(5), rate_qps=20, seed=3)
    assert frame["ok"].all() and list(frame["arrival_s"]) == pytest.approx(list(frame["scheduled_s"]), abs=1e-5)
    first = frame["arrival_s"].iloc[0]
    expected_queue = [first + i * 1.0 - at for i, at in enumerate(frame["arrival_s"])]
    assert list(frame["queue_s"]) == pytest.approx(expected_queue, abs=1e-5)
    assert frame.attrs["wall_s"] == pytest.approx(first + 5.0, abs=1e-5)


@pytest.mark.heavy
async def test_peers_run_the_same_workload_and_report_ratios() -> None:
    async with sim.serve_process(sim.SimConfig(time_scale=0)) as server:
        # Two repeats: a peer whose first repeat spoils the next (a shared client closed) must show.
        frame = await peers(server.url, server.api_key, "sim-small", bench.make_queries(20), concurrency=8, repeats=2)
    assert set(frame["peer"]) >= {"kit OpenAIBackend", "kit HTTPBackend", "raw aiohttp loop", "threads + sync OpenAI"}
    assert (frame["succeeded"] == 20).all(), frame[["peer", "repeat", "succeeded"]]
    assert frame.loc[frame["peer"] == "kit OpenAIBackend", "ratio_to_kit"].iloc[0] == pytest.approx(1.0)


@pytest.mark.heavy
def test_the_peers_table_says_what_its_calls_per_second_mean(tmp_path: Path) -> None:
    """A thread pool can out-run the kit's event loop in calls/s on a busy machine (the OS shares CPU
    per thread) while spending more CPU per call: the table says so where the numbers are shown."""
    from hybrid.bench.suites import PEERS_NOTE

    done = subprocess.run(
        [sys.executable, "-m", "hybrid", "bench", "peers", "--quick"], capture_output=True, text=True, timeout=300,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = done.stdout[done.stdout.index("calls_per_s") :]
    assert "threads + sync OpenAI" in table and PEERS_NOTE in table


@pytest.mark.heavy
def test_hybrid_bench_writes_results_with_machine_info_to_out_bench(tmp_path: Path) -> None:
    """By default results go to ./out/bench (never over the committed benchmarks/results)."""
    done = subprocess.run(
        [sys.executable, "-m", "hybrid", "bench", "sweep", "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out" / "bench"
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["machine"]["python"] and "commit" in saved["machine"]
    assert len(saved["samples"]) == 6 and (out / "sweep.csv").exists() and (out / "sweep_efficiency.png").exists()
    assert (out / "sweep_decomposition.png").exists()


@pytest.mark.heavy
def test_hybrid_bench_help_lists_every_suite() -> None:
    from hybrid.bench.suites import SUITES
    from hybrid.cli import BENCH_SUITES

    assert tuple(BENCH_SUITES) == SUITES
    done = subprocess.run([sys.executable, "-m", "hybrid", "bench", "--help"], capture_output=True, text=True)
    assert all(f"  {name} " in done.stdout for name in SUITES) and "out/bench" in done.stdout


async def test_the_virtual_demo_gives_the_seeds_study_at_full_pace_the_same_every_time() -> None:
    from hybrid.demo import measure, scenario_summary

    first = scenario_summary(*(await measure(virtual=True))[:2], time_scale=1.0)
    second = scenario_summary(*(await measure(virtual=True))[:2], time_scale=1.0)
    assert first == second  # every number, to the last bit
    assert 50 <= first["legacy_wall_s"] <= 75 and 15 <= first["hybrid_wall_s"] <= 20
    stages = [q["stage"] for q in first["legacy_queries"]]
    assert stages == [1, 2, 2, 2, 2, 3] and first["percent_of_ideal"] == pytest.approx(1.0)
