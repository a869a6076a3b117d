"""The hard budget: never more sent than it covers, at any concurrency; cached prompt tokens priced
at their own rate.  Runs on the in-process simulator in virtual time, counting requests with the
simulator's own counter."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybrid import BudgetExceeded, ConfigError, Orchestrator, Price, Query, Retry, Store, Usage, sim
from hybrid.backends.openai_wire import usage_from
from hybrid.errors import InvalidResponse
from hybrid.testing import Answer, FakeBackend
from hybrid.tokens import count_message_tokens

pytestmark = pytest.mark.looptime

#: Eight completion tokens always: below the profile's shortest answer, so every answer uses all
#: of max_tokens and an attempt's real cost is exactly its worst case.
MAX_TOKENS = 8
PRICE = Price(prompt_per_mtok=1.0, completion_per_mtok=2.0)


def queries(n: int) -> list[Query]:
    # Same-length prompts, so every query's worst case is the same.
    return [Query(f"q{i:02d}", f"Question {i:02d} about budgets.", max_tokens=MAX_TOKENS) for i in range(n)]


def one_query_cost() -> float:
    usage = Usage(prompt_tokens=count_message_tokens(queries(1)[0].messages()), completion_tokens=MAX_TOKENS)
    return PRICE.cost(usage)


@pytest.mark.parametrize("concurrency", [1, 2, 7, 16, 64])
async def test_a_budget_for_ten_queries_sends_at_most_ten_of_forty(concurrency: int) -> None:
    backend = sim.backend(sim.SimConfig(seed=5))
    budget = 10 * one_query_cost()
    async with Orchestrator(
        backend, max_concurrency=concurrency, prices={"sim-small": PRICE}, budget_usd=budget
    ) as orch:
        run = await orch.run(queries(40))
    sent = backend.engine.stats()["requests"]
    assert sent == 10 == run.metrics.succeeded
    assert [r.error.kind for r in run.results if r.error] == ["budget"] * 30
    assert all(isinstance(r.error, BudgetExceeded) and r.attempts == 1 for r in run.results if r.error)
    assert run.metrics.cost_usd == pytest.approx(budget) and orch.budget is not None
    assert orch.budget.spent_usd == pytest.approx(budget)
    assert any("budget stopped 30 of 40" in w for w in run.warnings)


@pytest.mark.parametrize("fault", ["truncate", "malformed", "drop"])
async def test_the_budget_holds_against_what_the_server_bills(fault: str) -> None:
    """A server that cuts, garbles or drops 30% of its answers, with retries at concurrency 64: the
    provider's bill (every prompt and completion its model ran) stays within the budget, and the
    kit never counts less than that bill."""
    faults = sim.Faults(**{fault: 0.3})
    backend = sim.backend(sim.SimConfig(seed=9, faults=faults))
    budget = 60 * one_query_cost()
    async with Orchestrator(
        backend, max_concurrency=64, prices={"sim-small": PRICE}, budget_usd=budget, retry=Retry(attempts=3, base=0.1)
    ) as orch:
        mixed = [
            Query(f"q{i:03d}", f"Question {i % 100:02d} about budgets.", max_tokens=MAX_TOKENS, stream=i % 2 == 0)
            for i in range(200)
        ]
        run = await orch.run(mixed, raise_if_all_failed=False)
    stats = backend.engine.stats()
    billed = PRICE.cost(Usage(prompt_tokens=stats["prompt_tokens"], completion_tokens=stats["completion_tokens"]))
    assert orch.budget is not None
    assert billed <= budget + 1e-12 and orch.budget.spent_usd >= billed - 1e-12
    assert stats["faults"].get(fault, 0) > 0 and run.metrics.succeeded > 0  # the faults struck, and work was done


async def test_queries_wait_for_reservations_to_come_back_instead_of_being_refused() -> None:
    """A server that reports zero usage: every reservation comes back whole, so all 200 queries are
    sent (at concurrency 64 they used to be refused while others held reservations)."""
    backend = FakeBackend(default=Answer("free", delay=1.0, prompt_tokens=0, completion_tokens=0))
    budget = 10 * one_query_cost()
    async with Orchestrator(backend, max_concurrency=64, prices={"fake": PRICE}, budget_usd=budget) as orch:
        run = await orch.run(queries(200))
    assert run.metrics.succeeded == 200 == len(backend.calls)
    assert orch.budget is not None and orch.budget.spent_usd == 0.0
    assert orch.budget.released_usd == pytest.approx(200 * one_query_cost())
    assert run.metrics.wall_s == 20.0  # ten at a time, as the budget allows: 1 s each


async def test_the_run_states_its_budget_and_the_store_keeps_it(tmp_path: Path) -> None:
    """Spent, still reserved and released: in the metrics and the summary line, live and loaded."""
    backend = sim.backend(sim.SimConfig(seed=5))
    budget = 10 * one_query_cost()
    path = tmp_path / "runs.sqlite"
    async with Orchestrator(
        backend, max_concurrency=4, prices={"sim-small": PRICE}, budget_usd=budget, store=path
    ) as orch:
        run = await orch.run(queries(12), name="capped", raise_if_all_failed=False)
    state = run.metrics.budget
    assert state is not None and state.limit_usd == budget and state.reserved_usd == 0.0
    assert state.spent_usd == pytest.approx(budget) and state.released_usd == pytest.approx(0.0, abs=1e-12)
    assert f"budget ${state.spent_usd:.6f} of ${budget:.6f} spent" in run.summary()
    with Store(path) as store:
        loaded = store.load("capped")
    assert loaded.metrics.budget == state and loaded.summary() == run.summary()


async def test_a_budget_needs_prices_and_bounded_queries_before_anything_is_sent() -> None:
    backend = sim.backend()
    async with Orchestrator(backend, budget_usd=1.0) as orch:  # a local server: no list price to fall back on
        with pytest.raises(ConfigError, match="model 'sim-small' has no price: pass prices="):
            await orch.run([Query("q", "x", max_tokens=5)])
    async with Orchestrator(backend, prices={"sim-small": PRICE}, budget_usd=1.0) as orch:
        with pytest.raises(ConfigError, match="no max_tokens"):
            await orch.run([Query("q", "unbounded")])
        with pytest.raises(ConfigError, match="no price"):
            await orch.run([Query("q", "x", max_tokens=5, model="sim-large")])
    assert backend.engine.stats()["requests"] == 0


def test_cached_prompt_tokens_are_priced_at_their_own_rate() -> None:
    usage = usage_from(
        {"prompt_tokens": 1000, "completion_tokens": 100, "prompt_tokens_details": {"cached_tokens": 800}}
    )
    assert usage is not None and usage.cached_prompt_tokens == 800
    price = Price(prompt_per_mtok=2.0, completion_per_mtok=8.0, cached_prompt_per_mtok=0.5)
    assert price.cost(usage) == pytest.approx((200 * 2.0 + 800 * 0.5 + 100 * 8.0) / 1e6)
    assert Price(prompt_per_mtok=2.0, completion_per_mtok=8.0).cost(usage) == pytest.approx((1000 * 2 + 800) / 1e6)
    with pytest.raises(InvalidResponse, match="cached_tokens"):
        usage_from({"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 11}})
