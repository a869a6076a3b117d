"""Fit a simulator profile to a real server, and check that the simulator then reproduces it.

Three figures define a :class:`~hybrid.sim.ModelProfile`: time to first token, prompt tokens/s
(prefill) and completion tokens/s (decode) for one request alone; a fourth, ``contention``, says how
much each request slows down while others share the server.  :func:`measure_single` takes the first
three from lone requests of three shapes (so prefill, decode and the fixed
overhead separate); :func:`fit_contention` takes the fourth from a concurrency sweep's wall times, using the
same wave model the simulator runs: ``k = min(concurrency, slots)`` requests decode together, each
at ``completion_tps / (1 + contention * (k - 1))``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd

from hybrid.metrics import ratio
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
    """Lone-request figures, from medians of repeated non-streamed requests.

    Three request shapes separate the costs: short prompt and few tokens (``a``), short prompt and
    many tokens (``b``: the decode rate from ``b - a``), long prompt and few tokens (``c``: the
    prefill rate from ``c - a``).  Non-streamed, so the client spends almost no CPU while the server
    works (on a 2-core machine a streaming client would slow the server it measures), and every
    prompt is unique so the server's prompt cache cannot skip the prefill.
    """

    latency_a_s: float
    latency_b_s: float
    latency_c_s: float
    prompt_a: float
    prompt_c: float
    completion_a: float
    completion_b: float

    @property
    def completion_tps(self) -> float:
        return (self.completion_b - self.completion_a) / max(1e-6, self.latency_b_s - self.latency_a_s)

    @property
    def prompt_tps(self) -> float:
        extra = self.latency_c_s - self.latency_a_s
        return (self.prompt_c - self.prompt_a) / extra if extra > 0 else 1e6

    @property
    def ttft_s(self) -> float:
        """The fixed cost of a request: its latency less prefill and decode."""
        fixed = self.latency_a_s - self.prompt_a / self.prompt_tps - self.completion_a / self.completion_tps
        return max(0.0, fixed)


async def measure_single(orch: Orchestrator, *, repeats: int = 3) -> SingleRequest:
    """Time lone requests of the three shapes (see :class:`SingleRequest`), ``repeats`` times each."""
    shapes: dict[str, list[QueryResult]] = {"a": [], "b": [], "c": []}
    for i in range(repeats):
        for shape, prompt, tokens in (("a", SHORT_PROMPT, 4), ("b", SHORT_PROMPT, 64), ("c", LONG_PROMPT, 4)):
            query = Query(f"{shape}{i}", f"Story {shape}{i}. {prompt}", max_tokens=tokens, temperature=0.0)
            shapes[shape].append((await orch.run([query], mode="sequential")).results[0])

    def median(shape: str, value: Callable[[QueryResult], float]) -> float:
        return statistics.median(value(r) for r in shapes[shape])

    return SingleRequest(
        latency_a_s=median("a", lambda r: r.latency_s),
        latency_b_s=median("b", lambda r: r.latency_s),
        latency_c_s=median("c", lambda r: r.latency_s),
        prompt_a=median("a", lambda r: r.usage.prompt_tokens),
        prompt_c=median("c", lambda r: r.usage.prompt_tokens),
        completion_a=median("a", lambda r: r.usage.completion_tokens),
        completion_b=median("b", lambda r: r.usage.completion_tokens),
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


def fit_contention(
    base: ModelProfile, sweep: pd.DataFrame, *, slots: int, prompt_tokens: float, completion_tokens: float
) -> float:
    """The contention (0..2, step 0.005) whose predicted sweep walls best match the measured ones."""

    def error(contention: float) -> float:
        profile = ModelProfile(
            ttft_s=base.ttft_s, prompt_tps=base.prompt_tps, completion_tps=base.completion_tps, contention=contention
        )
        total = 0.0
        rows = zip(sweep["queries"].tolist(), sweep["concurrency"].tolist(), sweep["wall_s"].tolist(), strict=True)
        for queries, concurrency, wall in rows:
            if not wall > 0:
                continue  # a level that measured no time says nothing about contention
            predicted = predicted_wall(
                profile,
                queries=int(queries),
                concurrency=int(concurrency),
                slots=slots,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )
            total += math.log(predicted / float(wall)) ** 2
        return total

    return min((c / 200 for c in range(401)), key=error)


def fit_profile(
    single: SingleRequest, sweep: pd.DataFrame, *, slots: int, prompt_tokens: float, completion_tokens: float
) -> ModelProfile:
    """A profile from lone-request figures plus the contention that fits the sweep."""
    base = ModelProfile(ttft_s=single.ttft_s, prompt_tps=single.prompt_tps, completion_tps=single.completion_tps)
    contention = fit_contention(
        base, sweep, slots=slots, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
    )
    n = max(1, round(completion_tokens))
    return ModelProfile(
        ttft_s=round(base.ttft_s, 4),
        prompt_tps=round(base.prompt_tps, 1),
        completion_tps=round(base.completion_tps, 2),
        jitter=0.03,
        contention=contention,
        min_completion_tokens=n,
        max_completion_tokens=n,
    )


def sweep_queries(n: int, *, max_tokens: int, prefix: str = "s", stream: bool = False) -> list[Query]:
    """Story prompts a base model continues at length, at temperature 0."""
    return [
        Query(
            f"{prefix}{i}",
            f"Story {prefix}{i}. {SHORT_PROMPT} a fisherman who",
            max_tokens=max_tokens,
            temperature=0.0,
            stream=stream,
        )
        for i in range(n)
    ]


def compare_sweeps(real: pd.DataFrame, simulated: pd.DataFrame) -> pd.DataFrame:
    """Median wall per concurrency level (over repeats), real vs simulated, and their ratio."""
    table = pd.DataFrame(
        {
            "real_wall_s": real.groupby("concurrency")["wall_s"].median(),
            "sim_wall_s": simulated.groupby("concurrency")["wall_s"].median(),
        }
    )
    table["sim_over_real"] = [ratio(s, r) for s, r in zip(table["sim_wall_s"], table["real_wall_s"], strict=True)]
    return table


async def warm_up(orch: Orchestrator, queries: Sequence[Query]) -> None:
    """Warm a server up (load weights, fill caches) with a few requests whose results do not count."""
    await orch.run(queries, raise_if_all_failed=False)
