"""How close ``orch.estimate`` lands: forecast vs the actual seeded simulator run, for several seeds
and concurrencies, in virtual time (so the actual wall is the latency model's, not this machine's).
Goal: cost within +-10%, wall within +-20%.

    .venv/bin/python benchmarks/forecast_accuracy.py
"""

from __future__ import annotations

import hybrid
from hybrid import Orchestrator, Price, Query, sim
from hybrid.provenance import machine_info

PRICES = {"sim-small": Price(prompt_per_mtok=0.15, completion_per_mtok=0.60)}


def grid(n: int) -> list[Query]:
    caps = (40, None, 64)
    return [Query(f"q{i}", f"Question {i}: explain a site risk.", max_tokens=caps[i % 3]) for i in range(n)]


async def one(seed: int, concurrency: int) -> tuple[float, float]:
    async with Orchestrator(sim.backend(sim.SimConfig(seed=seed)), max_concurrency=concurrency, prices=PRICES) as orch:
        forecast = orch.estimate(grid(60))
        run = await orch.run(grid(60))
    assert forecast.cost_usd is not None and run.metrics.cost_usd is not None
    return forecast.cost_usd / run.metrics.cost_usd, forecast.wall_s / run.metrics.wall_s


def main() -> None:
    print(machine_info())
    worst_cost = worst_wall = 0.0
    for seed in (1, 2, 3):
        for concurrency in (1, 8, 32):
            cost, wall = hybrid.run_sync(hybrid.simulate(one, seed, concurrency))
            worst_cost, worst_wall = max(worst_cost, abs(cost - 1)), max(worst_wall, abs(wall - 1))
            print(f"seed {seed} concurrency {concurrency:2}: forecast/actual cost {cost:.3f}, wall {wall:.3f}")
    print(f"worst: cost off by {worst_cost:.1%} (goal 10%), wall off by {worst_wall:.1%} (goal 20%)")


if __name__ == "__main__":
    main()
