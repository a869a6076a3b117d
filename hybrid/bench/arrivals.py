"""When requests arrive in an open-loop test: the schedules :func:`hybrid.bench.open_loop` uses.

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

from hybrid.errors import check_choice, check_int, check_number

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
