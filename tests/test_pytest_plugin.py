"""The pytest plugin, used as a project that installs the kit uses it: from a temporary project
(pytester), with its own ini file, a backend factory of its own and a recording it commits."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.heavy

FACTORY = '''
import os, random
from hybrid.errors import ServerError
from hybrid.testing import Answer, Fail, FakeBackend

def make():
    """Answers "Paris" with probability RATE per sample (seeded by the sample index)."""
    rate = float(os.environ.get("RATE", "1.0"))
    return FakeBackend(lambda q, a: Answer("Paris" if random.Random(q.sample).random() < rate else "Lyon"))

def broken():
    """Every call fails: a replay must never reach it."""
    return FakeBackend(default=Fail(ServerError("the network was used")))
'''

TEST = """
import pytest
from hybrid import Query, run_sync

async def ask(orch, sample):
    async with orch:
        run = await orch.run([Query("capital", "What is the capital of France?", sample=sample)])
    return run["capital"]

@pytest.mark.llm(min_pass=0.8, max_repeats={repeats})
def test_capital(hybrid_orch, hybrid_sample):
    row = run_sync(ask(hybrid_orch, hybrid_sample))
    assert row.text is not None and "Paris" in row.text, row.text
"""


@pytest.fixture(autouse=True)
def no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """The temporary projects set the cache mode themselves; the caller's HYBRID_CACHE stays out."""
    monkeypatch.delenv("HYBRID_CACHE", raising=False)


def project(pytester: pytest.Pytester, *, backend: str = "factory:make", repeats: int = 16, **ini: str) -> None:
    options = {"hybrid_backend": backend, "hybrid_store": "recording.sqlite", **ini}
    pytester.makeini("[pytest]\n" + "".join(f"{key} = {value}\n" for key, value in options.items()))
    pytester.makepyfile(factory=FACTORY, test_llm=TEST.format(repeats=repeats))
    pytester.syspathinsert()


def test_a_recorded_suite_replays_without_the_backend_and_passes(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RATE", "1.0")
    project(pytester)
    # As in a project that installs only the kit and pytest: no pytest-asyncio (looptime's plugin,
    # a dependency's, would then break every fixture; the kit's plugin unregisters it).
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:asyncio").assert_outcomes(passed=1)
    assert (pytester.path / "recording.sqlite").exists()

    project(pytester, backend="factory:broken")  # the same suite, its backend now unusable
    replayed = pytester.runpytest_subprocess("--hybrid-cache=replay", "-p", "no:cacheprovider")
    replayed.assert_outcomes(passed=1)
    live = pytester.runpytest_subprocess("--hybrid-cache=live", "-p", "no:cacheprovider")  # proof the backend is broken
    live.assert_outcomes(failed=1)


def test_a_failing_llm_test_shows_the_rate_interval_threshold_and_two_failing_answers(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RATE", "0.0")
    project(pytester)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.re_match_lines(
        [r".*test_capital: fail after \d sample\(s\): 0/\d passed \(0%, 95% interval 0%-\d+%\).*"]
    )
    result.stdout.fnmatch_lines(["*below the threshold 80%*", "*sample 0: AssertionError: Lyon*", "*sample 1: *Lyon*"])


@pytest.mark.parametrize(("inconclusive", "outcome"), [("skip", "skipped"), ("fail", "failed")])
def test_an_undecided_llm_test_skips_or_fails_as_the_ini_says(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, inconclusive: str, outcome: str
) -> None:
    monkeypatch.setenv("RATE", "0.9")  # samples 0-2: Paris, Paris, Lyon
    project(pytester, repeats=3, hybrid_inconclusive=inconclusive)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(**{outcome: 1})
    result.stdout.fnmatch_lines(["*inconclusive after 3 sample(s)*had not decided when the samples ran out*"])


def test_a_wrong_backend_or_mode_is_a_usage_error(pytester: pytest.Pytester) -> None:
    project(pytester, backend="factory:missing")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*hybrid_backend = 'factory:missing' does not name a callable*"])
    project(pytester, hybrid_cache="sometimes")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.stderr.fnmatch_lines(["*ini option hybrid_cache = 'sometimes': use one of replay, record, live*"])
