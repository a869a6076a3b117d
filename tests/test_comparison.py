"""Run comparison with confidence: ``bench.compare_runs``, ``hybrid bench diff`` and the pytest helper.

The statistical proof runs seeded studies on the in-process simulator on a virtual clock: two
runs of one configuration come out "no difference" in at least 95 of 100 seeded pairs, and a
configuration with 20% more latency comes out "slower" in every pair.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

import hybrid
from hybrid import ConfigError, Orchestrator, RunResult, Store, bench, sim
from hybrid.cli import main
from hybrid.sim import ModelProfile, SimConfig
from hybrid.testing import Answer, FakeBackend, assert_no_regression

QUERIES = bench.make_queries(150)


def profile(latency_s: float) -> dict[str, ModelProfile]:
    """Answers whose time is ``latency_s`` times a log-normal jitter (the run-to-run noise)."""
    return {"sim-small": ModelProfile(ttft_s=latency_s, prompt_tps=1e12, completion_tps=1e12, jitter=0.2)}


async def run_at(seed: int, latency_s: float) -> RunResult:
    backend = sim.backend(SimConfig(seed=seed, slots=64, profiles=profile(latency_s)))
    async with Orchestrator(backend, max_concurrency=16) as orch:
        return await orch.run(QUERIES)


async def seeded_triples() -> list[tuple[RunResult, RunResult, RunResult]]:
    """100 x (A, A again with another seed, B with 20% more latency)."""
    return [(await run_at(i, 1.0), await run_at(1000 + i, 1.0), await run_at(2000 + i, 1.2)) for i in range(100)]


@pytest.mark.heavy
@pytest.mark.timeout(300)
async def test_same_configuration_is_no_difference_and_20_percent_slower_is_slower() -> None:
    triples = await hybrid.simulate(seeded_triples)
    same = Counter(bench.compare_runs(a, again, resamples=1000).verdict for a, again, _ in triples)
    slower = Counter(bench.compare_runs(a, b, resamples=1000).verdict for a, _, b in triples)
    assert same["no difference"] >= 95, same
    assert slower["slower"] == 100, slower


@pytest.mark.looptime
async def test_the_table_reports_each_metric_with_an_interval_from_repeats() -> None:
    async def repeats(delay: float) -> list[RunResult]:
        runs = []
        for _ in range(3):
            async with Orchestrator(FakeBackend(default=Answer(delay=delay)), max_concurrency=4) as orch:
                runs.append(await orch.run(bench.make_queries(8)))
        return runs

    comparison = bench.compare_runs(await repeats(1.0), await repeats(2.0))
    table = comparison.table.set_index("metric")
    assert comparison.verdict == "slower" and comparison.regression
    assert table.loc["p50_latency_s", "ratio"] == pytest.approx(2.0)
    assert table.loc["wall_s", "ratio"] == pytest.approx(2.0)
    assert table.loc["throughput_qps", "verdict"] == "slower"  # half the answers per second
    assert table.loc["wall_s", "ci_low"] == pytest.approx(2.0)  # three repeats a side: an interval
    assert comparison.speedup == pytest.approx(0.5)
    assert "slower" in str(comparison) and "<table" in comparison._repr_html_()
    reverse = bench.compare_runs(await repeats(2.0), await repeats(1.0))
    assert reverse.verdict == "faster" and not reverse.regression


@pytest.mark.looptime
async def test_saved_results_and_store_names_compare_like_runs(tmp_path: Path) -> None:
    store = Store(tmp_path / "runs.sqlite")
    runs = {}
    for name, delay in (("base", 1.0), ("same", 1.0), ("slow", 1.5)):
        backend = FakeBackend(default=Answer(delay=delay))
        async with Orchestrator(backend, max_concurrency=4, store=store) as orch:
            runs[name] = await orch.run(bench.make_queries(40), name=name)
        (tmp_path / f"{name}.json").write_text(runs[name].to_json())
    from_files = bench.compare_runs(tmp_path / "base.json", str(tmp_path / "slow.json"))
    from_store = bench.compare_runs("base", "slow", store=store)
    from_runs = bench.compare_runs(runs["base"], runs["slow"])
    assert from_files.rows == from_store.rows == from_runs.rows
    assert from_runs.verdict == "slower"
    assert bench.compare_runs("base", "same", store=store).verdict == "no difference"
    with pytest.raises(ConfigError, match="neither a saved run file"):
        bench.compare_runs("base", "missing", store=store)
    with pytest.raises(ConfigError, match="not a saved run"):
        bench.compare_runs(tmp_path / "base.json", _write(tmp_path / "other.json", {"machine": {}}))
    assert_no_regression(runs["base"], runs["same"])
    with pytest.raises(AssertionError, match="Performance regression"):
        assert_no_regression(runs["base"], runs["slow"])
    store.close()


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


async def test_bench_diff_exits_non_zero_on_a_regression(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def save() -> None:
        for name, delay in (("base", 1.0), ("same", 1.0), ("slow", 1.5)):
            async with Orchestrator(FakeBackend(default=Answer(delay=delay)), max_concurrency=4) as orch:
                (tmp_path / f"{name}.json").write_text((await orch.run(bench.make_queries(40))).to_json())

    await hybrid.simulate(save)
    base, same, slow = (str(tmp_path / f"{n}.json") for n in ("base", "same", "slow"))
    assert main(["bench", "diff", base, same]) == 0
    assert "no difference" in capsys.readouterr().out
    assert main(["bench", "diff", base, slow]) == 1
    assert "REGRESSION" in capsys.readouterr().out
    assert main(["bench", "diff", base, slow, "--tolerance", "0.6"]) == 0  # 50% slower is within 60%
    assert main(["bench", "diff", base]) == 2
    assert main(["bench", "diff", base, str(tmp_path / "nope.json")]) == 2
    assert "neither a saved run file" in capsys.readouterr().err


def test_bad_comparison_settings_are_refused() -> None:
    run = RunResult.__new__(RunResult)
    with pytest.raises(ConfigError, match="metric"):
        bench.compare_runs(run, run, metric="speed")
    with pytest.raises(ConfigError, match="no runs"):
        bench.compare_runs([], [])
