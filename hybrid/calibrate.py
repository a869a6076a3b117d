"""Fit a simulator profile to a real server, and check that the simulator then reproduces it.

Three figures define a :class:`~hybrid.sim.ModelProfile`: time to first token, prompt tokens/s
(prefill) and completion tokens/s (decode) for one request alone; a fourth, ``contention``, says how
much each request slows down while others share the server.  :func:`measure_single` takes the first
three from streamed requests (a short and a long prompt, so prefill separates from the fixed
overhead); :func:`fit_contention` takes the fourth from a concurrency sweep's wall times, using the
same wave model the simulator runs: ``k = min(concurrency, slots)`` requests decode together, each
at ``completion_tps / (1 + contention * (k - 1))``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from hybrid.errors import AllQueriesFailed
from hybrid.orchestrator import Orchestrator
from hybrid.query import Query, QueryResult
from hybrid.sim.config import ModelProfile

SHORT_PROMPT = "Once upon a time, in a small village by the sea, there lived"
LONG_PROMPT = " ".join(
    f"Paragraph {i}: the harbour master counted the boats, noted the tide, and wrote the weather in his book."
    for i in range(24)
)


@dataclass(frozen=True, slots=True, kw_only=True)
class SingleRequest:
    """Medians of repeated lone requests."""

    ttft_short_s: float
    ttft_long_s: float
    prompt_short: int
    prompt_long: int
    completion_tps: float

    @property
    def prompt_tps(self) -> float:
        extra = self.ttft_long_s - self.ttft_short_s
        return (self.prompt_long - self.prompt_short) / extra if extra > 0 else 1e6

    @property
    def ttft_s(self) -> float:
        return max(0.0, self.ttft_short_s - self.prompt_short / self.prompt_tps)


async def measure_single(orch: Orchestrator, *, repeats: int = 3, max_tokens: int = 48) -> SingleRequest:
    """Time lone streamed requests: a short prompt (decode rate), a long one (prefill rate)."""
    short: list[QueryResult] = []
    long: list[QueryResult] = []
    for i in range(repeats):
        for bucket, prompt, tokens in ((short, SHORT_PROMPT, max_tokens), (long, LONG_PROMPT, 4)):
            run = await orch.run([Query(f"single{i}", f"{prompt} ({i})", max_tokens=tokens, temperature=0.0,
                                        stream=True)], mode="sequential")  # fmt: skip
            bucket.append(run.results[0])
    decode = [
        r.usage.completion_tokens / (r.latency_s - r.ttft_s)
        for r in short
        if r.ttft_s is not None and r.latency_s > r.ttft_s and r.usage.completion_tokens > 1
    ]
    return SingleRequest(
        ttft_short_s=statistics.median(r.ttft_s or r.latency_s for r in short),
        ttft_long_s=statistics.median(r.ttft_s or r.latency_s for r in long),
        prompt_short=round(statistics.median(r.usage.prompt_tokens for r in short)),
        prompt_long=round(statistics.median(r.usage.prompt_tokens for r in long)),
        completion_tps=statistics.median(decode),
    )


def predicted_wall(
    profile: ModelProfile, *, queries: int, concurrency: int, slots: int, prompt_tokens: float, completion_tokens: float
) -> float:
    """Wall time of ``queries`` equal requests at ``concurrency`` on a server with ``slots``, by waves."""
    width = max(1, min(concurrency, slots))
    wall, left = 0.0, queries
    while left > 0:
        k = min(width, left)
        rate = profile.completion_tps / (1.0 + profile.contention * (k - 1))
        wall += profile.ttft_s + prompt_tokens / profile.prompt_tps + completion_tokens / rate
        left -= k
    return wall


def fit_contention(base: ModelProfile, sweep: pd.DataFrame, *, slots: int, prompt_tokens: float,
                   completion_tokens: float) -> float:  # fmt: skip
    """The contention (0..2, step 0.005) whose predicted sweep walls best match the measured ones."""

    def error(contention: float) -> float:
        profile = ModelProfile(ttft_s=base.ttft_s, prompt_tps=base.prompt_tps, completion_tps=base.completion_tps,
                               contention=contention)  # fmt: skip
        total = 0.0
        rows = zip(sweep["queries"].tolist(), sweep["concurrency"].tolist(), sweep["wall_s"].tolist(), strict=True)
        for queries, concurrency, wall in rows:
            predicted = predicted_wall(profile, queries=int(queries), concurrency=int(concurrency), slots=slots,
                                       prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)  # fmt: skip
            total += math.log(predicted / float(wall)) ** 2
        return total

    return min((c / 200 for c in range(401)), key=error)


def fit_profile(
    single: SingleRequest, sweep: pd.DataFrame, *, slots: int, prompt_tokens: float, completion_tokens: float
) -> ModelProfile:
    """A profile from lone-request figures plus the contention that fits the sweep."""
    base = ModelProfile(ttft_s=single.ttft_s, prompt_tps=single.prompt_tps, completion_tps=single.completion_tps)
    contention = fit_contention(base, sweep, slots=slots, prompt_tokens=prompt_tokens,
                                completion_tokens=completion_tokens)  # fmt: skip
    n = max(1, round(completion_tokens))
    return ModelProfile(ttft_s=round(base.ttft_s, 4), prompt_tps=round(base.prompt_tps, 1),
                        completion_tps=round(base.completion_tps, 2), jitter=0.03, contention=contention,
                        min_completion_tokens=n, max_completion_tokens=n)  # fmt: skip


def sweep_queries(n: int, *, max_tokens: int, prefix: str = "s") -> list[Query]:
    """Story prompts a base model continues at length, at temperature 0."""
    return [Query(f"{prefix}{i}", f"{SHORT_PROMPT} a fisherman number {i} who", max_tokens=max_tokens,
                  temperature=0.0) for i in range(n)]  # fmt: skip


def compare_sweeps(real: pd.DataFrame, simulated: pd.DataFrame) -> pd.DataFrame:
    """Wall per concurrency level, real vs simulated, and their ratio."""
    table = pd.DataFrame(
        {
            "real_wall_s": real.set_index("concurrency")["wall_s"],
            "sim_wall_s": simulated.set_index("concurrency")["wall_s"],
        }
    )
    table["sim_over_real"] = table["sim_wall_s"] / table["real_wall_s"]
    return table


async def warm_up(orch: Orchestrator, queries: Sequence[Query]) -> None:
    """Warm a server up (load weights, fill caches) with a few requests whose results do not count."""
    try:
        await orch.run(queries)
    except AllQueriesFailed:
        pass
