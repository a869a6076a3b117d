"""What the live run widget costs a run, measured two ways side by side.

20,000 queries at time scale 0 (the simulator answers at once, so the client's own work is all
there is) through ``sim.backend`` at concurrency 64, in rounds of ``progress=False`` and of the live
widget forced on (``progress.watched_kernel`` patched to true; outside a kernel the widget's comm is
ipywidgets' stand-in, so what is measured is the kit's side: the per-query tally and a snapshot
every 0.25 s), each first in every other round. Printed per round:

- calls/s without and with the widget, and their ratio: end to end, but this machine's calls/s
  vary by a fifth from run to run, more than the effect measured;
- the widget's own time: every call of its per-query hooks and its snapshots, timed, as a share of
  the run's wall. This is what the widget takes from the loop, and it varies little.

Goal: the widget costs at most 5% of throughput.

    .venv/bin/python benchmarks/live_widget.py [--rounds 9]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import statistics
import time
from collections.abc import Callable
from typing import Any

import hybrid
from hybrid import Orchestrator, Query, live_run, progress, sim
from hybrid.provenance import machine_info

QUERIES = 20_000
CONCURRENCY = 64
#: Seconds spent inside the widget's code on the loop, this round.
SPENT = [0.0]


def timed(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            SPENT[0] += time.perf_counter() - start

    return wrapper


async def calls_per_s(widget: bool) -> tuple[float, float]:
    """(calls/s, the widget's share of the wall) of one run."""
    queries = [Query(f"q{i}", f"question {i}") for i in range(QUERIES)]
    backend = sim.backend(sim.SimConfig(seed=1, time_scale=0.0))
    SPENT[0] = 0.0
    async with Orchestrator(backend, max_concurrency=CONCURRENCY, timeout=None, progress=widget) as orch:
        start = time.perf_counter()
        run = await orch.run(queries)
        elapsed = time.perf_counter() - start
    assert run.metrics.succeeded == QUERIES
    return QUERIES / elapsed, SPENT[0] / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    rounds = parser.parse_args().rounds
    print(machine_info())
    progress.watched_kernel = lambda: True  # type: ignore[assignment]  # the widget, as in JupyterLab
    for name in ("started", "finished", "send"):
        setattr(live_run.LiveRun, name, timed(getattr(live_run.LiveRun, name)))
    with contextlib.redirect_stdout(io.StringIO()):  # warm-up of both: imports, caches, the widget's class
        hybrid.run_sync(calls_per_s(False))
        hybrid.run_sync(calls_per_s(True))
    ratios, shares = [], []
    for number in range(1, rounds + 1):
        measured = {}
        for widget in (False, True) if number % 2 else (True, False):  # each goes first in every other round
            with contextlib.redirect_stdout(io.StringIO()):  # display() outside a kernel prints a repr
                measured[widget] = hybrid.run_sync(calls_per_s(widget))
        (without, _), (with_widget, share) = measured[False], measured[True]
        ratios.append(with_widget / without)
        shares.append(share)
        print(f"round {number}: without {without:,.0f} calls/s, with the widget {with_widget:,.0f} calls/s "
              f"(ratio {ratios[-1]:.3f}); the widget's own time {share:.2%} of the wall")  # fmt: skip
    print(f"calls/s ratio: median {statistics.median(ratios):.3f}, from {min(ratios):.3f} to {max(ratios):.3f}")
    print(f"the widget's own time: median {statistics.median(shares):.2%} of the wall, at most {max(shares):.2%} "
          "(goal: at most 5%)")  # fmt: skip


if __name__ == "__main__":
    main()
