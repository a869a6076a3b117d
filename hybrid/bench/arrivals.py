"""Open-loop load: when requests arrive, and :func:`open_loop`, which sends them at those times.

Real traffic does not wait for answers before the next request comes, so a load test sends at
times drawn in advance.  The gaps between arrivals follow vLLM's ``bench serve``:

* ``"poisson"``: exponential gaps, mean ``1 / rate`` (independent users);
* ``"gamma"``: gamma gaps with shape ``burstiness`` and the same mean; below 1 the traffic comes
  in bursts, above 1 it is more regular, 1 is Poisson;
* ``"constant"``: every ``1 / rate`` seconds exactly (what a capacity search wants: no burst
  hides the knee).

A ``ramp_to_qps`` makes the rate climb linearly from ``rate_qps`` at the first request to
``ramp_to_qps`` at the last (vLLM's linear ramp-up), to walk a server up to its saturation in one
run.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pandas as pd

from hybrid.bench.replay import Replay
from hybrid.errors import check_choice, check_int, check_number
from hybrid.orchestrator import Orchestrator
from hybrid.query import Query
from hybrid.workload import Request, Workload

ARRIVALS = ("poisson", "gamma", "constant")


def arrival_times(
    n: int,
    rate_qps: float,
    *,
    arrival: str = "poisson",
    burstiness: float = 1.0,
    ramp_to_qps: float | None = None,
    seed: int = 0,
) -> list[float]:
    """Seconds after the start at which each of ``n`` requests arrives (see the module docstring)."""
    check_int("n (requests)", n, minimum=0)
    check_number("rate_qps (requests per second)", rate_qps, positive=True, unit="requests per second")
    check_choice("arrival", arrival, ARRIVALS)
    check_number("burstiness (the gamma shape; 1 = Poisson)", burstiness, positive=True)
    if ramp_to_qps is not None:
        check_number("ramp_to_qps (requests per second)", ramp_to_qps, positive=True, unit="requests per second")
    rng = random.Random(seed)
    at, times = 0.0, []
    for i in range(n):
        rate = rate_qps if ramp_to_qps is None or n < 2 else rate_qps + (ramp_to_qps - rate_qps) * i / (n - 1)
        if arrival == "constant":
            gap = 1.0 / rate
        elif arrival == "gamma":
            gap = rng.gammavariate(burstiness, 1.0 / (rate * burstiness))
        else:
            gap = rng.expovariate(rate)
        at += gap
        times.append(at)
    return times


async def open_loop(
    orch: Orchestrator,
    queries: Sequence[Query],
    *,
    rate_qps: float,
    arrival: str = "poisson",
    burstiness: float = 1.0,
    ramp_to_qps: float | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Submit queries at arrival times drawn in advance (:func:`hybrid.bench.arrivals.arrival_times`:
    ``arrival`` ``"poisson"``, ``"gamma"`` with ``burstiness``, or ``"constant"``, at ``rate_qps``,
    ramping linearly to ``ramp_to_qps`` if given); one row per query.

    Unlike ``run`` (a closed batch), arrivals do not wait for earlier answers, so queue time shows
    what real traffic at that rate would see.  It is one run, replayed on the arrivals' clock
    (:func:`hybrid.bench.replay`): ``queue_s`` counts from each arrival.  Rows carry ``ttft_s`` and
    ``completion_tokens`` for :func:`goodput`; ``attrs`` hold the rate, the wall and the run's flags.
    """
    times = arrival_times(
        len(queries), rate_qps, arrival=arrival, burstiness=burstiness, ramp_to_qps=ramp_to_qps, seed=seed
    )
    schedule = Workload(
        tuple(Request(t=at, name=q.name, prompt=q.prompt) for q, at in zip(queries, times, strict=True))
    )
    run = await orch.run(queries, mode=Replay(schedule), raise_if_all_failed=False)
    frame = pd.DataFrame(
        [
            {
                "name": r.name,
                "arrival_s": r.scheduled_s,
                "scheduled_s": r.scheduled_s,
                "ok": r.ok,
                "latency_s": r.latency_s,
                "queue_s": r.queue_s,
                "ttft_s": r.ttft_s,
                "completion_tokens": r.usage.completion_tokens,
                "server_queue_s": r.server_queue_s,
                "attempts": r.attempts,
                "error_kind": None if r.error is None else r.error.kind,
            }
            for r in run.results
        ]
    )
    frame.attrs.update(
        rate_qps=rate_qps, arrival=arrival, ramp_to_qps=ramp_to_qps, wall_s=run.metrics.wall_s, flags=run.flags
    )
    return frame
