"""``lab.decide`` against a fixed-size test of the same power, over seeded trials.

A suite of 4 queries is scored on a scripted backend whose answers pass with a known probability
(seeded per trial, query and sample).  Per threshold, 1,000 trials (``--trials``) where the suite is
healthy (the true pass rate is the threshold + 0.1) and 1,000 where it dropped (the threshold -
0.2) give: false alarms (verdict "fail" when healthy), detection ("fail" when dropped; an
"inconclusive" counts as not detected) and the mean samples sent; in brackets, the exact rates of
the test as calibrated (what the simulated rates estimate, with a standard error of about 0.5
points at 2,000 trials).  Beside them, the smallest
fixed-size test (fail when at most c of n samples pass, exact binomial) with the same or better
error rates at those two rates, computed here, and the ratio of the means to its n.

    .venv/bin/python benchmarks/sequential_gate.py [--trials 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import subprocess
from math import comb

from hybrid import Orchestrator, Query, lab
from hybrid.lab.gates import _chance_of_fail
from hybrid.testing import noisy_backend

SUITE = [Query(f"case-{i}", f"Is {i} a number?") for i in range(4)]


def binomial_cdf(c: int, n: int, p: float) -> float:
    return sum(comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(c + 1))


def fixed_size(healthy: float, dropped: float, false_alarms: float, detection: float) -> tuple[int, int]:
    """The smallest n (and its cut-off c) whose test "fail if at most c of n pass" raises at most
    ``false_alarms`` at ``healthy`` and detects ``dropped`` at least ``detection`` of the time."""
    for n in range(1, 2000):
        for c in range(n + 1):
            if binomial_cdf(c, n, healthy) <= false_alarms and binomial_cdf(c, n, dropped) >= detection:
                return n, c
    raise ValueError("no fixed-size test below 2,000 samples")


async def trial(pass_rate: float, min_pass: float, seed: int) -> lab.Gate:
    async with Orchestrator(noisy_backend(pass_rate, seed=seed), progress=False) as orch:
        return await lab.decide(orch, SUITE, lab.contains("yes"), min_pass=min_pass)


async def main(trials: int, commit: str) -> None:
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}; commit {commit}")
    print(f"suite of {len(SUITE)} queries, decide(batch=4, max_repeats=32, confidence=0.95); {trials} trials each")
    print(
        "| min_pass | false alarms at +0.1 (exact) | detection at -0.2 (exact) | mean samples (healthy / dropped) "
        "| fixed n | ratio |"
    )
    print("|---|---|---|---|---|---|")
    for min_pass in (0.6, 0.7, 0.8, 0.85):
        healthy, dropped = min_pass + 0.1, min_pass - 0.2
        good = [await trial(healthy, min_pass, seed) for seed in range(trials)]
        bad = [await trial(dropped, min_pass, 10**6 + seed) for seed in range(trials)]
        alarms = sum(g.verdict == "fail" for g in good) / trials
        detected = sum(g.verdict == "fail" for g in bad) / trials
        mean_good, mean_bad = sum(g.n for g in good) / trials, sum(g.n for g in bad) / trials
        n, _ = fixed_size(healthy, dropped, 0.05, 0.95)
        ratio = (mean_good + mean_bad) / 2 / n
        test = lab.SequentialTest(min_pass, max_samples=32 * len(SUITE))
        step = (test.on_pass, test.on_fail)
        exact = [_chance_of_fail(test.upper, test.lower, step, p, test.max_samples) for p in (healthy, dropped)]
        print(
            f"| {min_pass:.2f} | {alarms:.1%} ({exact[0]:.1%}) | {detected:.1%} ({exact[1]:.1%}) "
            f"| {mean_good:.1f} / {mean_bad:.1f} | {n} | {ratio:.2f} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    asyncio.run(main(parser.parse_args().trials, commit))
