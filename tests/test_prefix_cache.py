"""The simulator's prefix cache: shared leading tokens skip prefill, are reported and are priced."""

from __future__ import annotations

import pytest

from hybrid import Orchestrator, Price, Query, bench, sim
from hybrid.sim.prefix_cache import BLOCK_TOKENS, PrefixCache, prompt_blocks

SHARED = " ".join(f"word{i}" for i in range(400))  # 400 tokens every query starts with


def _profile(cache_tokens: int) -> sim.ModelProfile:
    return sim.ModelProfile(
        ttft_s=0.1, prompt_tps=1000.0, completion_tps=100.0, jitter=0.0, prefix_cache_tokens=cache_tokens
    )


def _queries(n: int) -> list[Query]:
    return [
        Query(f"q{i}", f"{SHARED} Question {i}: what is {i} squared?", metadata={"prefix": "doc"}) for i in range(n)
    ]


def test_a_shared_prefix_is_found_block_by_block_and_the_least_recently_used_block_goes_first() -> None:
    cache = PrefixCache(capacity_tokens=4 * BLOCK_TOKENS)
    first = prompt_blocks("m", [f"a{i}" for i in range(3 * BLOCK_TOKENS)])
    same_start = prompt_blocks("m", [f"a{i}" for i in range(2 * BLOCK_TOKENS)] + ["b"] * BLOCK_TOKENS)
    assert cache.take(first) == 0
    assert cache.take(same_start) == 2 * BLOCK_TOKENS  # the first two blocks, not the third
    assert cache.take(prompt_blocks("other", [f"a{i}" for i in range(3 * BLOCK_TOKENS)])) == 0  # per model
    assert cache.take(first) == 0  # four blocks fit: the other model's three pushed the first's out


@pytest.mark.looptime
async def test_a_shared_prefix_lowers_ttft_reports_cached_tokens_and_is_priced_at_the_cached_rate() -> None:
    price = Price(prompt_per_mtok=1.0, completion_per_mtok=2.0, cached_prompt_per_mtok=0.1)
    runs = {}
    for cache_tokens in (0, 10_000):
        config = sim.SimConfig(seed=1, profiles={"m": _profile(cache_tokens)})
        async with Orchestrator(sim.backend(config, model="m"), max_concurrency=1, prices={"m": price}) as orch:
            runs[cache_tokens] = await orch.run(_queries(5))
    cold, warm = runs[0], runs[10_000]
    assert all(r.usage.cached_prompt_tokens == 0 for r in cold.results)
    assert warm.results[0].usage.cached_prompt_tokens == 0  # the first one fills the cache
    cached = [r.usage.cached_prompt_tokens for r in warm.results[1:]]
    assert all(c >= 400 - BLOCK_TOKENS for c in cached)
    # The cached tokens skip their prefill: exactly their share of the time to the first token.
    for c, w in zip(cold.results[1:], warm.results[1:], strict=True):
        assert w.latency_s == pytest.approx(c.latency_s - w.usage.cached_prompt_tokens / 1000.0)
        expected = price.cost(w.usage)
        assert w.cost_usd == pytest.approx(expected) and w.cost_usd < c.cost_usd
    assert warm.flags == () and cold.flags == ()  # the workload meant to share its prefix


@pytest.mark.looptime
async def test_cached_tokens_the_workload_did_not_mean_to_share_flag_the_run_warm_cache() -> None:
    config = sim.SimConfig(seed=1, profiles={"m": _profile(10_000)})
    unmarked = [Query(q.name, q.prompt) for q in _queries(3)]
    async with Orchestrator(sim.backend(config, model="m")) as orch:
        run = await orch.run(unmarked)
    assert "warm_cache" in run.flags


@pytest.mark.looptime
async def test_a_sweep_without_fresh_prefixes_measures_its_own_cache_and_says_so() -> None:
    config = sim.SimConfig(seed=1, slots=64, profiles={"m": _profile(100_000)})
    frames = {}
    for fresh in (False, True):
        backend = sim.backend(config, model="m")  # a new server each time: a cold cache
        frames[fresh] = await bench.sweep(backend, _queries(8), levels=(1, 2, 4), fresh_prefix=fresh)
    warm, fresh = frames[False], frames[True]
    assert list(warm["flags"]) == [(), ("warm_cache",), ("warm_cache",)]
    assert list(fresh["flags"]) == [(), (), ()]
    # The warm sweep's later points skip the prefill of prompts an earlier point sent: faster than new traffic.
    assert (warm["p50_latency_s"].iloc[1:] < fresh["p50_latency_s"].iloc[1:]).all()
