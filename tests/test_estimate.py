"""The forecast: sends nothing, and lands near what a seeded simulator run then costs and takes."""

from __future__ import annotations

from pathlib import Path

import pytest

import hybrid
from hybrid import Orchestrator, Price, Query, RunResult, Store, sim
from hybrid.estimate import Estimate
from hybrid.testing import Answer, FakeBackend

pytestmark = pytest.mark.looptime

PRICES = {"sim-small": Price(prompt_per_mtok=0.15, completion_per_mtok=0.60)}


def grid() -> list[Query]:
    topics = ["formwork", "curing", "drainage", "rebar", "scaffolds", "cranes", "permits", "noise"]
    return [
        Query(f"{topic}-{style}", f"Explain {topic} risks, {style}.", max_tokens=cap)
        for topic in topics
        for style, cap in (("briefly", 40), ("in detail", None), ("as bullets", 64))
    ]


async def forecast_then_run(concurrency: int) -> tuple[Estimate, RunResult, int]:
    backend = sim.backend(sim.SimConfig(seed=21))
    async with Orchestrator(backend, max_concurrency=concurrency, prices=PRICES) as orch:
        forecast = orch.estimate(grid())
        sent_before_run = backend.engine.stats()["requests"]
        run = await orch.run(grid())
    return forecast, run, sent_before_run


@pytest.mark.parametrize("concurrency", [1, 6, 32])
async def test_the_forecast_is_within_ten_percent_of_the_cost_and_twenty_of_the_wall(concurrency: int) -> None:
    forecast, run, sent = await hybrid.simulate(forecast_then_run, concurrency)
    assert sent == 0  # estimating sends nothing
    assert run.metrics.cost_usd is not None and forecast.cost_usd is not None
    assert forecast.cost_usd == pytest.approx(run.metrics.cost_usd, rel=0.10)
    assert forecast.wall_s == pytest.approx(run.metrics.wall_s, rel=0.20)
    assert forecast.prompt_tokens == run.metrics.prompt_tokens  # the same token rule as the simulator
    assert set(forecast.queries["source"]) == {"backend"} and len(forecast.queries) == 24


async def test_without_a_model_of_its_own_the_forecast_uses_the_stores_history(tmp_path: Path) -> None:
    backend = FakeBackend(default=Answer("x", delay=2.0, completion_tokens=30))
    with Store(tmp_path / "history.sqlite") as store:
        async with Orchestrator(backend, store=store, max_concurrency=2, prices={"fake": PRICES["sim-small"]}) as orch:
            await orch.run([Query(f"past{i}", f"earlier question {i}") for i in range(4)])
            forecast = orch.estimate([Query(f"q{i}", f"new question {i}") for i in range(4)])
            capped = orch.estimate([Query("short", "new question", max_tokens=10)])
    assert forecast.queries["source"].tolist() == ["history"] * 4
    assert forecast.completion_tokens == 4 * 30 and forecast.wall_s == 4.0  # 4 answers of 2 s on 2 slots
    assert capped.completion_tokens == 10


def test_with_nothing_known_the_forecast_says_it_guessed() -> None:
    orch = Orchestrator(FakeBackend())
    forecast = orch.estimate([Query("q", "hello"), Query("r", "hi", max_tokens=5)])
    assert forecast.queries["source"].tolist() == ["guess", "max_tokens"]
    assert forecast.cost_usd is None and forecast.wall_s is None
    for shown in (repr(forecast), forecast._repr_html_()):
        assert "nan" not in shown.lower()
        assert "wall unknown (no latency is known for 2 of 2 queries" in shown and "answers of 'fake'" in shown
