"""Gates that know answers are noisy: pass, fail or "not sure yet", with a stated error rate.

A regression suite over a model must not pass or fail on the model's luck.  :func:`gate` judges
scored answers (every repeat of every case) against a threshold with a Wilson interval, as
:func:`~hybrid.lab.summary` reports it: ``pass`` when the interval's lower bound is at or above
``min_pass``, ``fail`` when its upper bound is below, else ``inconclusive``: more samples would
tell.  :func:`decide` gets those samples itself, a few at a time, and stops as soon as it knows.
:func:`pass_at_k` and :func:`pass_hat_k` say, per case, how likely any one or all of k repeats pass.

An answer passes when every scorer that judged it passed (a value-only scorer does not vote).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from math import comb
from typing import TYPE_CHECKING, Any

from hybrid.errors import ConfigError, check_int, check_number
from hybrid.lab.report import wilson, z_for
from hybrid.lab.scorers import Scorer
from hybrid.query import Query, QueryResult

if TYPE_CHECKING:
    import pandas as pd

    from hybrid.orchestrator import Orchestrator


@dataclass(frozen=True, slots=True)
class Gate:
    """A verdict on a pass rate: ``verdict`` (``"pass"``, ``"fail"`` or ``"inconclusive"``), the
    observed ``rate`` of ``n`` samples with its interval ``low``..``high`` at ``confidence``, the
    threshold ``min_pass``, and ``why`` in one line.  ``groups`` holds a gate per group when asked
    for (``by=``); ``failing`` up to two failing samples as (answer or error, reason)."""

    verdict: str
    rate: float
    low: float
    high: float
    n: int
    min_pass: float
    confidence: float
    why: str
    groups: Mapping[Any, Gate] = field(default_factory=dict, repr=False)
    failing: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def to_frame(self) -> pd.DataFrame:
        """One row per group (or one row for an ungrouped gate): verdict, rate, interval, n, why."""
        import pandas as pd

        gates = self.groups or {"all": self}
        columns = ("verdict", "rate", "low", "high", "n", "why")
        return pd.DataFrame([{"group": key, **{c: getattr(g, c) for c in columns}} for key, g in gates.items()])

    def __str__(self) -> str:
        return self.why


def _checked(min_pass: float, confidence: float) -> None:
    check_number("min_pass", min_pass, minimum=0.0, maximum=1.0)
    check_number("confidence", confidence, minimum=0.5, maximum=0.9999)


def _percent(x: float) -> str:
    return f"{x:.0%}" if not math.isnan(x) else "n/a"


def _verdict_of(passed: int, n: int, min_pass: float, confidence: float) -> Gate:
    """The fixed-sample gate on ``passed`` of ``n`` (see the module docstring)."""
    low, high = wilson(passed, n, z=z_for(confidence))
    if n == 0:
        verdict, because = "inconclusive", "nothing was scored"
    elif low >= min_pass:
        verdict, because = "pass", f"its lower bound is at or above the threshold {_percent(min_pass)}"
    elif high < min_pass:
        verdict, because = "fail", f"its upper bound is below the threshold {_percent(min_pass)}"
    else:
        verdict, because = "inconclusive", f"the interval straddles the threshold {_percent(min_pass)}: send more"
    rate = passed / n if n else math.nan
    why = (
        f"{verdict}: {passed}/{n} passed ({_percent(rate)}, {confidence:.0%} interval "
        f"{_percent(low)}-{_percent(high)}); {because}"
    )
    return Gate(verdict, rate, low, high, n, min_pass, confidence, why)


def _answers(scores: pd.DataFrame | Iterable[bool]) -> list[bool]:
    """One pass/fail per answer: a score table's rows collapsed by answer (its ``index`` in the
    run, else its name and repeat; it passes when every scorer that voted passed), or the booleans
    as given."""
    import pandas as pd

    if not isinstance(scores, pd.DataFrame):
        return [bool(x) for x in scores]
    if "passed" not in scores:
        raise ConfigError("gate() needs lab.score()'s table (a 'passed' column) or a list of True/False.")
    voted = scores[scores["passed"].notna()]
    keys = ["index"] if "index" in voted else [k for k in ("name", "repeat") if k in voted]
    if not keys:
        return [bool(x) for x in voted["passed"]]
    return [bool(all(group["passed"])) for _, group in voted.groupby(keys, sort=False, dropna=False)]


def gate(
    scores: pd.DataFrame | Iterable[bool],
    *,
    min_pass: float,
    confidence: float = 0.95,
    by: str | Sequence[str] | None = None,
) -> Gate:
    """Judge ``scores`` (:func:`~hybrid.lab.score`'s table, or one True/False per answer) against
    ``min_pass`` with a Wilson interval at ``confidence``; with ``by`` (``"variant"``, ``"model"``,
    ``"case"`` or several) the gate's ``groups`` hold one gate per group as well."""
    _checked(min_pass, confidence)
    answers = _answers(scores)
    overall = _verdict_of(sum(answers), len(answers), min_pass, confidence)
    if by is None:
        return overall
    import pandas as pd

    if not isinstance(scores, pd.DataFrame):
        raise ConfigError("gate(by=...) needs lab.score()'s table, whose columns name the groups.")
    keys = [by] if isinstance(by, str) else list(by)
    missing = [k for k in keys if k not in scores]
    if missing:
        raise ConfigError(f"gate(by=...): the scores have no column {missing}; use {list(scores.columns)}.")
    groups = {}
    for key, frame in scores.groupby(by if isinstance(by, str) else keys, sort=False, dropna=False):
        part = _answers(frame)
        groups[key] = _verdict_of(sum(part), len(part), min_pass, confidence)
    return replace(overall, groups=groups)


# -- pass@k and pass^k ----------------------------------------------------------------------------
def _per_case(scores: pd.DataFrame, k: int, estimate: Callable[[int, int, int], float], column: str) -> pd.DataFrame:
    import pandas as pd

    check_int("k", k, minimum=1)
    key = "case" if "case" in scores and scores["case"].notna().any() else "name"
    rows = []
    for case, frame in scores[scores["passed"].notna()].groupby(key, sort=False):
        answers = _answers(frame)
        n, c = len(answers), sum(answers)
        if n < k:
            raise ConfigError(f"Case {case!r} has {n} scored sample(s), fewer than k={k}: run more repeats.")
        rows.append({key: case, "samples": n, "passed": c, column: estimate(n, c, k)})
    return pd.DataFrame(rows)


def pass_at_k(scores: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per case, the chance that at least one of ``k`` repeats passes, estimated without bias from
    its n >= k samples of which c passed: 1 - C(n-c, k) / C(n, k) (Chen et al., 2021)."""
    return _per_case(scores, k, lambda n, c, k: 1.0 - comb(n - c, k) / comb(n, k), f"pass@{k}")


def pass_hat_k(scores: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per case, the chance that all ``k`` repeats pass (pass^k, the reliability a user who asks k
    times sees), estimated without bias from n >= k samples: C(c, k) / C(n, k)."""
    return _per_case(scores, k, lambda n, c, k: comb(c, k) / comb(n, k), f"pass^{k}")


# -- sequential testing -----------------------------------------------------------------------------
def _chance_of_fail(upper: float, lower: float, step: tuple[float, float], p: float, samples: int) -> float:
    """The exact chance that the test with bounds ``upper``/``lower`` and log-likelihood steps
    ``step`` (on a pass, on a failure) says "fail" within ``samples`` samples of true pass rate
    ``p``: the walk tracked by its count of failures (a dynamic programme, samples^2 steps)."""
    on_pass, on_fail = step
    alive = {0: 1.0}  # failures so far -> the chance of being here undecided
    failed = 0.0
    for n in range(1, samples + 1):
        nxt: dict[int, float] = {}
        for f, chance in alive.items():
            for failures, q in ((f, p), (f + 1, 1 - p)):
                llr = (n - failures) * on_pass + failures * on_fail
                if llr >= upper:
                    failed += chance * q
                elif llr > lower:
                    nxt[failures] = nxt.get(failures, 0.0) + chance * q
        alive = nxt
    return failed


@functools.lru_cache(maxsize=64)
def calibrated_bounds(good: float, bad: float, error: float, samples: int) -> tuple[float, float]:
    """The SPRT's (fail, pass) bounds on the log-likelihood ratio, moved in from Wald's as far as
    the exact error rates of the test truncated at ``samples`` allow: "fail" at ``good`` at most
    ``error`` of the time, at ``bad`` at least ``1 - error``.  Wald's bounds are approximations
    that leave part of the error budget unused (their real error rates are a third lower), which
    costs samples; each bound is found by bisection with the other held, twice over.  A bound only
    ever moves in: when ``samples`` are too few for the rates (a drop cannot be detected that
    often in so few), Wald's bound stays, and what the test cannot tell is left inconclusive."""
    step = (math.log(bad / good), math.log((1 - bad) / (1 - good)))
    upper, lower = math.log((1 - error) / error), math.log(error / (1 - error))
    for _ in range(2):
        low, high = 0.01, upper
        for _ in range(20):  # the smallest upper bound with few enough false alarms
            mid = (low + high) / 2
            low, high = (low, mid) if _chance_of_fail(mid, lower, step, good, samples) <= error else (mid, high)
        upper = high
        low, high = lower, -0.01
        for _ in range(20):  # the highest lower bound that still detects the drop
            mid = (low + high) / 2
            low, high = (mid, high) if _chance_of_fail(upper, mid, step, bad, samples) >= 1 - error else (low, mid)
        lower = low
    return upper, lower


@dataclass
class SequentialTest:
    """Wald's sequential probability ratio test of a pass rate, fed samples as they come.

    Why an SPRT rather than an always-valid confidence sequence: a gate is a decision between "the
    suite is healthy" and "it dropped", and among all tests with the same error rates at two such
    rates the SPRT needs the fewest samples on average (Wald and Wolfowitz, 1948).  A confidence
    sequence answers a harder question (where exactly the rate is, at every moment) and pays for it:
    near the threshold it needs more samples than a fixed-size test, not fewer.

    The two rates told apart are ``min_pass - drop`` (a real regression: reported ``fail`` with
    probability at least ``confidence``) and ``min_pass + healthy`` (a healthy suite: reported
    ``fail`` with probability at most ``1 - confidence``); between them lies the indifference
    zone, where either verdict is acceptable.  After every sample the log-likelihood ratio is held
    against the bounds of :func:`calibrated_bounds` for a test of at most ``max_samples``.
    """

    min_pass: float
    confidence: float = 0.95
    drop: float = 0.2
    healthy: float = 0.1
    max_samples: int = 128
    passed: int = 0
    n: int = 0
    llr: float = 0.0

    def __post_init__(self) -> None:
        _checked(self.min_pass, self.confidence)
        check_number("drop", self.drop, positive=True, maximum=1.0)
        check_number("healthy", self.healthy, positive=True, maximum=1.0)
        check_int("max_samples", self.max_samples, minimum=1)
        self.bad = min(max(self.min_pass - self.drop, 0.001), 0.998)
        self.good = min(max(self.min_pass + self.healthy, self.bad + 0.001), 0.999)
        self.on_pass = math.log(self.bad / self.good)  # < 0
        self.on_fail = math.log((1 - self.bad) / (1 - self.good))  # > 0
        # At or above ``upper``: fail; at or below ``lower``: pass.
        self.upper, self.lower = calibrated_bounds(self.good, self.bad, 1.0 - self.confidence, self.max_samples)
        self.verdict: str | None = None

    def add(self, passed: bool) -> str | None:
        """Count one sample; the verdict once the test has decided.  A sample that arrives after
        the decision (one of the same round) is counted in ``n`` and the rate, since it was paid
        for, but cannot change the verdict."""
        self.n += 1
        self.passed += passed
        if self.verdict is None:
            self.llr += self.on_pass if passed else self.on_fail
            if self.llr >= self.upper:
                self.verdict = "fail"
            elif self.llr <= self.lower:
                self.verdict = "pass"
        return self.verdict

    def fewest_to_decide(self) -> int:
        """The fewest further samples that could reach a verdict: sending fewer is a wasted round."""
        to_fail = math.ceil((self.upper - self.llr) / self.on_fail)
        to_pass = math.ceil((self.llr - self.lower) / -self.on_pass)
        return max(1, min(to_fail, to_pass))

    def gate(self, failing: tuple[tuple[str, str], ...] = ()) -> Gate:
        """The verdict so far as a :class:`Gate` (``inconclusive`` if undecided); its interval is
        the Wilson interval of the samples, for the reader (the verdict is the SPRT's)."""
        described = _verdict_of(self.passed, self.n, self.min_pass, self.confidence)
        verdict = self.verdict or "inconclusive"
        test = (
            f"the sequential test (SPRT of {_percent(self.bad)} against {_percent(self.good)}, "
            f"error rates at most {1 - self.confidence:.0%})"
        )
        because = {
            "pass": f"{test} says the pass rate is not below the threshold {_percent(self.min_pass)}",
            "fail": f"{test} says the pass rate is below the threshold {_percent(self.min_pass)}",
            "inconclusive": f"{test} had not decided when the samples ran out; allow more repeats",
        }[verdict]
        why = (
            f"{verdict} after {self.n} sample(s): {self.passed}/{self.n} passed ({_percent(described.rate)}, "
            f"{self.confidence:.0%} interval {_percent(described.low)}-{_percent(described.high)}); {because}"
        )
        return replace(described, verdict=verdict, why=why, failing=failing)


async def _judged(results: Sequence[QueryResult], scorers: Sequence[Scorer]) -> list[tuple[bool, str]]:
    """Per result: passed (every scorer that voted passed) and the first failing reason."""
    verdicts = [await scorer.score_all(list(results)) for scorer in scorers]
    judged = []
    for i, _ in enumerate(results):
        votes = [v[i] for v in verdicts if v[i].passed is not None]
        failed = [f"{v.scorer}: {v.reason}" if v.reason else v.scorer for v in votes if not v.passed]
        judged.append((not failed, failed[0] if failed else ""))
    return judged


async def decide(
    orch: Orchestrator,
    queries: Sequence[Query],
    scorer: Scorer | Sequence[Scorer],
    *,
    min_pass: float,
    confidence: float = 0.95,
    max_repeats: int = 32,
    batch: int = 4,
    drop: float = 0.2,
    healthy: float = 0.1,
) -> Gate:
    """Send repeats of ``queries`` until a :class:`SequentialTest` decides, and return its
    :class:`Gate` (``n``: the samples used; ``inconclusive`` after ``max_repeats`` of each query).

    Samples are taken in turn (the next repeat of the next query, round after round, so the suite
    is sampled evenly) as distinct :attr:`Query.sample` indexes, so a cache never answers a repeat
    with an earlier sample; with a recording (``cache="replay"``) the same samples replay and the
    verdict is the recorded one.  Each round sends at most ``batch`` samples per query, and never
    more than the fewest that could decide the test, so little is paid past the decision.
    """
    check_int("max_repeats", max_repeats, minimum=1)
    check_int("batch", batch, minimum=1)
    scorers = [scorer] if isinstance(scorer, Scorer) else list(scorer)
    if not queries or not scorers or not all(isinstance(s, Scorer) for s in scorers):
        raise ConfigError("decide() needs at least one query and one scorer (e.g. lab.contains('Paris')).")
    test = SequentialTest(min_pass, confidence, drop=drop, healthy=healthy, max_samples=max_repeats * len(queries))
    samples = [
        replace(q, sample=q.sample + r, metadata={**(q.metadata or {}), "repeat": r})
        for r in range(max_repeats)
        for q in queries
    ]
    failing: list[tuple[str, str]] = []
    sent = 0
    while test.verdict is None and sent < len(samples):
        size = min(batch * len(queries), test.fewest_to_decide())
        round_ = samples[sent : sent + size]
        sent += len(round_)
        run = await orch.run(round_, raise_if_all_failed=False, progress=False)
        for result, (passed, reason) in zip(run.results, await _judged(run.results, scorers), strict=True):
            test.add(passed)
            if not passed and len(failing) < 2:
                failing.append((result.text if result.text is not None else f"(error) {result.error}", reason))
    return test.gate(tuple(failing))
