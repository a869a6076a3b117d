"""``hybrid report``: a PR comment's markdown and one self-contained html file, from the store.

Runs are recorded on the scripted backend in virtual time: a baseline and a candidate whose pass
rates per group are known, with the scores kept beside each run (``lab.score(..., store=, name=)``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hybrid import Orchestrator, Query, Store, lab
from hybrid.cli import main
from hybrid.lab.pull_request import MAX_GROUPS, PullRequestReport
from hybrid.testing import Answer, FakeBackend

pytestmark = pytest.mark.looptime

#: Per case of the suite: how many of 20 repeats pass in the baseline and in the candidate.
PASSES = {"steady": (18, 18), "regressed": (19, 5), "improved": (6, 19), "noisy": (15, 13)}


def suite() -> list[Query]:
    return [
        Query(f"{case}-{r}", f"Question about {case}", sample=r, metadata={"case": case})
        for case in PASSES
        for r in range(20)
    ]


async def record(store: Store, name: str, which: int, cost_per_answer: int = 10) -> None:
    def answer(query: Query, attempt: int) -> Answer:
        passing = query.sample < PASSES[str((query.metadata or {})["case"])][which]
        return Answer("good" if passing else "bad", completion_tokens=cost_per_answer)

    async with Orchestrator(FakeBackend(answer), store=store) as orch:
        run = await orch.run(suite(), name=name)
    await lab.score(run, [lab.equals("good")], store=store, name=name)


@pytest.fixture
async def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "runs.sqlite")
    await record(store, "main", 0)
    await record(store, "branch", 1, cost_per_answer=12)
    return store


async def test_the_markdown_puts_regressions_first_with_verdicts_from_the_kept_scores(store: Store) -> None:
    report = PullRequestReport(store, "branch", "main", min_pass=0.7)
    text = report.markdown()
    rows = [line for line in text.splitlines() if line.split(" | ")[0].strip("| ") in PASSES]
    assert [row.split(" | ")[0].strip("| ") for row in rows] == ["regressed", "noisy", "steady", "improved"]
    assert rows[0].endswith("| worse | fail |") and "25% (11%-47%)" in rows[0] and "95% (76%-99%)" in rows[0]
    assert rows[-1].endswith("| better | pass |") and " no clear change " in rows[1]
    assert "**1 regression(s), 1 improvement(s), 2 without a clear change · pass rate 69% " in text
    tokens = re.search(r"\| tokens \| ([\d,]+) \| ([\d,]+) \| ([+-][\d.]+%) \|", text)
    assert tokens is not None and int(tokens[1].replace(",", "")) > int(tokens[2].replace(",", ""))
    assert len(text) < 4000  # a PR comment


async def test_a_large_suite_shows_every_regression_and_a_bounded_rest(tmp_path: Path) -> None:
    store = Store(tmp_path / "runs.sqlite")
    queries = [
        Query(f"case-{c}-{r}", "q", sample=r, metadata={"case": f"case-{c:02}"}) for c in range(40) for r in range(8)
    ]
    for name, failing in (("main", set()), ("branch", {3, 17, 29})):

        def answer(query: Query, attempt: int, failing: set[int] = failing) -> Answer:
            case = int(str((query.metadata or {})["case"]).split("-")[1])
            return Answer("bad" if case in failing else "good")

        async with Orchestrator(FakeBackend(answer), store=store) as orch:
            run = await orch.run(queries, name=name)
        await lab.score(run, [lab.equals("good")], store=store, name=name)
    text = PullRequestReport(store, "branch", "main").markdown()
    shown = [line for line in text.splitlines() if line.startswith("| case-")]
    assert [line.split(" | ")[0] for line in shown[:3]] == ["| case-03", "| case-17", "| case-29"]
    assert len(shown) == 3 + MAX_GROUPS and f"and {40 - 3 - MAX_GROUPS} more group(s) without a regression" in text


async def test_a_run_without_kept_scores_counts_answered_rows_and_without_a_baseline_has_no_verdicts(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "runs.sqlite")
    async with Orchestrator(FakeBackend(), store=store) as orch:
        await orch.run([Query("a", "x"), Query("b", "y")], name="only")
    text = PullRequestReport(store, "only").markdown()
    assert "| group | pass rate (95% interval) | n |" in text and "verdict" not in text
    assert "| a | 100% (21%-100%) | 1 |" in text


@pytest.mark.heavy  # draws the run's charts
async def test_the_html_is_one_file_that_needs_nothing_else(store: Store, tmp_path: Path) -> None:
    page = PullRequestReport(store, "branch", "main").html()
    assert page.startswith("<!doctype html>") and "<style>" in page and "<svg" in page
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:|/)""", page)  # no request: nothing to fetch
    assert "<script" not in page and "<tr class='worse'><td>regressed</td>" in page
    assert "good" in page  # the run's answers, as the viewer shows them


@pytest.mark.heavy
async def test_hybrid_report_from_a_terminal(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store.close()
    path = str(store.path)
    assert main(["report", "branch", "main", "--store", path]) == 0
    assert capsys.readouterr().out.startswith("### hybrid report: `branch` vs `main`")
    out = tmp_path / "report.html"
    assert main(["report", "branch", "--store", path, "--format", "html", "-o", str(out)]) == 0
    assert out.read_text().startswith("<!doctype html>")
    assert main(["report", "nope", "--store", path]) == 2
    assert "No run named 'nope'" in capsys.readouterr().err
    assert main(["report", "branch", "--store", str(tmp_path / "missing.sqlite")]) == 2
    assert "No run store at" in capsys.readouterr().err
