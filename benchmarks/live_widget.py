"""What the live run widget costs a run: throughput with it against without it, side by side.

5,000 queries at time scale 0 (the simulator answers at once, so the client's own work is all there
is to measure) through ``sim.backend`` at concurrency 64, alternating rounds with ``progress=False``
and with the live widget forced on (``progress.watched_kernel`` patched to true; outside a kernel the
widget's comm is ipywidgets' stand-in, so what is measured is the kit's side: the per-query tally
and a snapshot every 0.25 s). Printed: calls/s of each round and the median ratio; goal: the widget
costs at most 5% of throughput.

    .venv/bin/python benchmarks/live_widget.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time

import hybrid
from hybrid import Orchestrator, Query, progress, sim
from hybrid.provenance import machine_info

QUERIES = 5_000
CONCURRENCY = 64


async def calls_per_s(widget: bool) -> float:
    queries = [Query(f"q{i}", f"question {i}") for i in range(QUERIES)]
    backend = sim.backend(sim.SimConfig(seed=1, time_scale=0.0))
    async with Orchestrator(backend, max_concurrency=CONCURRENCY, timeout=None, progress=widget) as orch:
        start = time.perf_counter()
        run = await orch.run(queries)
        elapsed = time.perf_counter() - start
    assert run.metrics.succeeded == QUERIES
    return QUERIES / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    print(machine_info())
    progress.watched_kernel = lambda: True  # type: ignore[assignment]  # the widget, as in JupyterLab
    hybrid.run_sync(calls_per_s(False))  # warm-up: imports, caches
    ratios = []
    for number in range(1, rounds + 1):
        without = hybrid.run_sync(calls_per_s(False))
        with contextlib.redirect_stdout(io.StringIO()):  # display() outside a kernel prints a repr
            with_widget = hybrid.run_sync(calls_per_s(True))
        ratios.append(with_widget / without)
        print(f"round {number}: without {without:,.0f} calls/s, with the widget {with_widget:,.0f} calls/s, "
              f"ratio {ratios[-1]:.3f}")  # fmt: skip
    median = statistics.median(ratios)
    print(f"median ratio {median:.3f} (worst {min(ratios):.3f}): the widget costs {1 - median:.1%} of throughput "
          f"(goal: at most 5%)")  # fmt: skip


if __name__ == "__main__":
    main()
