"""plots.pareto: the frontier of a sweep, marked right."""

from __future__ import annotations

import math

import pandas as pd

from hybrid import plots


def test_the_frontier_is_what_no_other_point_beats_on_both_counts() -> None:
    throughput = [10.0, 20.0, 30.0, 30.0, 25.0, 40.0, math.nan]
    latency = [1.0, 1.5, 2.0, 3.0, 2.5, 5.0, 0.1]
    # 30 at 3.0 loses to 30 at 2.0; 25 at 2.5 loses to 30 at 2.0; NaN is never on it.
    assert plots.frontier(throughput, latency) == [0, 1, 2, 5]
    assert plots.frontier([5.0], [1.0]) == [0] and plots.frontier([], []) == []


def test_pareto_draws_every_configuration_and_joins_the_frontier_of_their_medians() -> None:
    sweep = pd.DataFrame(
        {
            "concurrency": [1, 1, 2, 4, 8, 16],
            "throughput_qps": [10.0, 12.0, 20.0, 38.0, 40.0, 39.0],
            "p95_latency_s": [1.0, 1.2, 1.1, 1.3, 2.0, 4.0],
        }
    )
    fig = plots.pareto(sweep)
    ax = fig.axes[0]
    everything, front = ax.lines
    assert list(everything.get_xdata()) == [1.1, 1.1, 1.3, 2.0, 4.0]  # level 1 is its repeats' median
    # Level 1 (11/s at 1.1 s) loses to level 2 (20/s at as little latency); 16 to 8 on both counts.
    assert list(front.get_xdata()) == [1.1, 1.3, 2.0] and list(front.get_ydata()) == [20.0, 38.0, 40.0]
    assert [t.get_text() for t in ax.texts] == ["1", "2", "4", "8", "16"]
    assert "p95 latency" in ax.get_xlabel() and fig.legends
