"""A forecast before sending: tokens, cost and wall time of a run, per query and in total.

``orch.estimate(queries)`` sends nothing.  Per query:

* prompt tokens by the kit's token rule (what the simulator counts; a real tokenizer differs a
  little);
* completion tokens, from the first source that knows: the backend's own model of the answer
  (the simulator's profile), the typical answer of that model in the run store's past runs, or
  ``max_tokens``; capped by ``max_tokens`` when set; otherwise a guess of 256, flagged;
* cost from the run's prices (yours, or genai-prices' for a known provider: :mod:`hybrid.pricing`;
  None without a price), each row naming where its price came from (``price_source``);
* latency from the backend's model (the simulator's profile) or the median latency of that
  model's past answers in the store.

The wall is what a perfect scheduler would reach with those latencies at the run's concurrency
(capped by the server's slots when the backend knows them), :func:`hybrid.metrics.ideal_wall`,
plus the tail: the run ends with its slowest answer, and of ``k`` answers running together the
slowest is expected at ``low + (high - low) * k / (k + 1)`` of their spread (uniformly spread
latencies), where ``low``/``high`` are the shortest and longest latency a query can have (the
backend's model, or the 5th and 95th percentiles of past answers).  Without that correction the
forecast of a wide run was 20% short.

A backend offers its model of the answer through an optional ``forecast(query)`` method returning
``(completion_tokens, latency_s, shortest_latency_s, longest_latency_s)`` and an optional
``slots`` attribute; the protocol does not require them.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hybrid.backends.protocol import SupportsForecast
from hybrid.metrics import ideal_wall
from hybrid.query import Price, Query, Usage
from hybrid.tokens import count_message_tokens

if TYPE_CHECKING:
    import pandas as pd

    from hybrid.store import Store

#: Completion tokens assumed when nothing better is known (and no ``max_tokens`` caps it).
GUESS_COMPLETION_TOKENS = 256


@dataclass(frozen=True, slots=True)
class Estimate:
    """A run's forecast: ``queries`` (a DataFrame, one row per query) and the totals."""

    queries: pd.DataFrame
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    #: None when a query's latency is not known; ``unknown`` then says which and why.
    wall_s: float | None
    concurrency: int
    unknown: str = ""
    #: Where each model's price came from (:attr:`Price.source`), for the models that have one.
    prices: Mapping[str, str] = field(default_factory=dict)

    def _prices(self) -> str:
        return "; ".join(f"{model}: {source}" for model, source in self.prices.items())

    def _wall(self) -> str:
        return f"unknown ({self.unknown})" if self.wall_s is None else f"{self.wall_s:.1f} s"

    def _repr_html_(self) -> str:
        cost = "unknown (no price)" if self.cost_usd is None else f"${self.cost_usd:.4f}"
        wall = self._wall()
        head = (
            f"<p><b>Forecast</b>: {len(self.queries)} queries, {self.prompt_tokens:,} prompt + "
            f"{self.completion_tokens:,} completion tokens, cost {cost}, wall {wall} at concurrency "
            f"{self.concurrency}.</p>"
        )
        if self.prices:
            head += f"<p>Prices: {html.escape(self._prices())}.</p>"
        return head + self.queries.to_html(index=False, max_rows=20, na_rep="")

    def __repr__(self) -> str:
        cost = "unknown" if self.cost_usd is None else f"${self.cost_usd:.4f}"
        return (
            f"<Estimate {len(self.queries)} queries, {self.prompt_tokens + self.completion_tokens:,} tokens, "
            f"cost {cost}, wall {self._wall()}{f', prices: {self._prices()}' if self.prices else ''}>"
        )


def estimate(
    queries: Sequence[Query],
    *,
    backend: Any,
    prices: Mapping[str, Price],
    max_concurrency: int,
    store: Store | None,
) -> Estimate:
    """The forecast of running ``queries`` (see the module docstring)."""
    import pandas as pd

    history = {} if store is None else store.typical_answers()
    forecast = backend.forecast if isinstance(backend, SupportsForecast) else None
    rows = []
    for query in queries:
        model = query.model or backend.model
        prompt = count_message_tokens(query.messages())
        completion, latency, low, high, source = None, math.nan, math.nan, math.nan, "guess"
        if forecast is not None:
            completion, latency, low, high = forecast(query)
            source = "backend"
        elif model in history:
            completion, latency, low, high = history[model]
            source = "history"
        if completion is None:
            completion = query.max_tokens or GUESS_COMPLETION_TOKENS
            source = "max_tokens" if query.max_tokens else "guess"
        elif query.max_tokens is not None:
            completion = min(completion, query.max_tokens)
        price = prices.get(model)
        cost = None if price is None else price.cost(Usage(prompt_tokens=prompt, completion_tokens=round(completion)))
        rows.append(
            {
                "name": query.name,
                "model": model,
                "prompt_tokens": prompt,
                "completion_tokens": round(completion),
                "cost_usd": cost,
                "price_source": None if price is None else price.source,
                "latency_s": latency,
                "low_s": low,
                "high_s": high,
                "source": source,
            }
        )
    frame = pd.DataFrame(rows)
    concurrency = min(max_concurrency, backend.slots) if isinstance(backend, SupportsForecast) else max_concurrency
    latencies = [x for x in frame["latency_s"] if not math.isnan(x)]
    wall = ideal_wall(latencies, concurrency) if len(latencies) == len(frame) else None
    unknown = ""
    if wall is None:
        models = ", ".join(repr(m) for m in dict.fromkeys(frame.loc[frame["latency_s"].isna(), "model"]))
        unknown = (
            f"no latency is known for {len(frame) - len(latencies)} of {len(frame)} queries: the backend cannot "
            f"forecast and the store holds no answers of {models} yet; run a few first"
        )
    elif not frame[["low_s", "high_s"]].isna().any().any():
        together = min(len(frame), concurrency)  # answers running at once at the end of the run
        low, high, mean = frame["low_s"].mean(), frame["high_s"].mean(), frame["latency_s"].mean()
        wall += max(0.0, low + (high - low) * together / (together + 1) - mean)
    costs = frame["cost_usd"]
    return Estimate(
        queries=frame,
        prompt_tokens=int(frame["prompt_tokens"].sum()),
        completion_tokens=int(frame["completion_tokens"].sum()),
        cost_usd=None if costs.isna().any() else float(costs.sum()),
        wall_s=wall,
        concurrency=concurrency,
        unknown=unknown,
        prices={model: prices[model].source for model in dict.fromkeys(frame["model"]) if model in prices},
    )
