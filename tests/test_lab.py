"""The prompt lab: grids keep their coordinates, scorers judge fixed texts (unicode and empty
answers too) and say why, a model-graded rubric survives malformed grades, pass rates carry
Wilson intervals.  Orchestration on FakeBackend in virtual time."""

from __future__ import annotations

import math
import warnings

import pytest
import pytest_socket

from hybrid import ConfigError, Orchestrator, Price, Query, Retry, ServerError, lab
from hybrid.query import QueryResult
from hybrid.testing import Answer, Fail, FakeBackend

pytestmark = pytest.mark.looptime

CASE = Query("q", "Where is the Eiffel tower?", metadata={"vars": {"city": "Paris", "n": 3}})


async def judge(scorer: lab.Scorer, text: str | None) -> lab.Score:
    result = QueryResult(query=CASE, index=0, text=text, error=None if text is not None else ServerError("down"))
    return (await scorer.score_all([result]))[0]


@pytest.mark.parametrize(
    ("scorer", "text", "passed", "why"),
    [
        (lab.contains("{{city}}"), "It is in paris.", True, "found"),
        (lab.contains("{{city}}", case_sensitive=True), "It is in paris.", False, "'Paris' not in"),
        (lab.not_contains("London"), "Paris, not London.", False, "found 'Paris, not London.'"),
        (lab.contains("Zürich"), "Près de ZÜRICH, 東京 aussi", True, "found"),
        (lab.regex(r"\b\d{4}\b"), "Built in 1889.", True, "matched '1889'"),
        (lab.regex(r"\b\d{4}\b"), "", False, "no match in ''"),
        (lab.equals(" Paris "), "paris", True, "equal"),
        (lab.is_json(), '{"city": "Paris"', False, "not JSON"),
        (lab.json_schema({"type": "object", "required": ["city"]}), '{"town": "Paris"}', False, "'city' is a required"),
        (lab.json_schema({"type": "object", "properties": {"n": {"type": "integer"}}}), '{"n": "3"}', False, "at n:"),
        (lab.numeric("{{n}}", tolerance=0.5), "About 3,2 floors", True, "3.2 vs 3"),
        (lab.numeric(10), "no digits here", False, "no number"),
        (lab.python(lambda text, q: (len(text) < 5, "too long")), "a long answer", False, "too long"),
        (lab.python(lambda text, q: 1 / 0, name="broken"), "x", False, "raised ZeroDivisionError"),
        (lab.contains("Paris"), None, False, "no answer: server_error"),
    ],
)
async def test_scorers_judge_fixed_texts_and_say_why(
    scorer: lab.Scorer, text: str | None, passed: bool, why: str
) -> None:
    verdict = await judge(scorer, text)
    assert verdict.passed is passed and why in verdict.reason


DRAFT_4 = "http://json-schema.org/draft-04/schema#"


@pytest.mark.parametrize(
    ("scorer", "text", "passed", "why"),
    [
        (lab.regex(r"^(a+)+$"), "a" * 35 + "b", False, "no match"),  # minutes under `re`, ignoring Ctrl-C
        (lab.json_schema({"pattern": "^(a+)+$"}), f'"{"a" * 35}b"', False, "does not match"),
        (lab.regex(r"(a|aa)+$", timeout_s=0.2), "a" * 60 + "b", False, "timed out after 0.2 s"),
        (lab.json_schema({"pattern": "(a|aa)+$"}, timeout_s=0.2), f'"{"a" * 60}b"', False, "timed out after 0.2 s"),
        (lab.is_json(), "[" * 200_000, False, "recursion too deep"),
        (lab.json_schema({"$ref": "#"}), "{}", False, "recursion too deep"),
        (lab.json_schema({"$schema": DRAFT_4, "items": [{"type": "string"}]}), '["a", 1]', True, "matches"),
        (lab.json_schema({"$schema": DRAFT_4, "maximum": 5, "exclusiveMaximum": True}), "5", False, "maximum of 5"),
        (lab.json_schema({"$schema": DRAFT_4, "maximum": 5, "exclusiveMaximum": True}), "4.5", True, "matches"),
    ],
)
async def test_a_scorer_that_cannot_judge_an_answer_fails_it_and_says_why(
    scorer: lab.Scorer, text: str, passed: bool, why: str
) -> None:
    verdict = await judge(scorer, text)
    assert verdict.passed is passed and why in verdict.reason


def test_a_remote_ref_is_never_fetched() -> None:
    pytest_socket.disable_socket(allow_unix_socket=True)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            verdict = lab.json_schema({"$ref": "https://schemas.example.com/answer.json"}).judged("{}", CASE)
    finally:
        pytest_socket.enable_socket()
    assert verdict.passed is False and "could not be scored: Unresolvable" in verdict.reason
    assert [str(w.message) for w in seen] == []  # pytest-socket warns of every socket it blocks


async def test_template_variables_are_matched_literally_in_a_regex() -> None:
    kyiv = Query("k", "Capital of Ukraine?", metadata={"vars": {"city": "Kyiv (Kiev"}})
    result = QueryResult(query=kyiv, index=0, text="Kyiv (Kiev")
    [verdict] = await lab.regex("^{{city}}$").score_all([result])
    assert verdict.passed is True


async def test_a_python_scorer_may_return_a_value() -> None:
    verdict = await judge(lab.python(lambda text, q: len(text), name="length"), "four")
    assert verdict.passed is None and verdict.value == 4.0


def test_the_grid_keeps_every_coordinate_and_fills_case_variables() -> None:
    queries = lab.grid(
        {"plain": "Capital of {{country}}?", "polite": "Please, the capital of {{country}}?"},
        {"fr": {"country": "France"}, "jp": {"country": "Japan"}},
        models=["a", "b"],
        temperatures=[0.0, 0.7],
        repeats=3,
        max_tokens=20,
    )
    assert len(queries) == 2 * 2 * 2 * 2 * 3 and len({q.name for q in queries}) == len(queries)
    first = queries[0]
    assert first.prompt == "Capital of France?" and first.model == "a" and first.max_tokens == 20
    assert dict(first.metadata or {}) == {
        "variant": "plain", "case": "fr", "model": "a", "temperature": 0.0, "repeat": 0, "vars": {"country": "France"}
    }  # fmt: skip
    assert sorted({q.sample for q in queries}) == [0, 1, 2]
    with pytest.raises(ConfigError, match=r"uses \['country'\]"):
        lab.grid({"v": "About {{country}}"}, {"empty": {}})


def test_wilson_intervals_behave_at_the_edges() -> None:
    low, high = lab.wilson(0, 10)
    assert low == 0.0 and 0.25 < high < 0.35
    low, high = lab.wilson(10, 10)
    assert 0.65 < low < 0.75 and high == 1.0
    assert all(math.isnan(x) for x in lab.wilson(0, 0))
    low, high = lab.wilson(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)


async def test_scores_summaries_best_variant_and_matrix() -> None:
    queries = lab.grid(
        {"short": "Name the city of {{landmark}}.", "long": "Which city is {{landmark}} in? Answer in a word."},
        {
            "eiffel": {"landmark": "the Eiffel tower", "city": "Paris"},
            "colosseum": {"landmark": "the Colosseum", "city": "Rome"},
        },
        repeats=2,
        max_tokens=10,
    )

    def answer(query: Query, attempt: int) -> Answer:
        city = query.metadata["vars"]["city"] if query.metadata else ""
        right = query.metadata is not None and query.metadata["variant"] == "long"
        return Answer(city if right else "I am not sure.", prompt_tokens=10, completion_tokens=3)

    prices = {"fake": Price(prompt_per_mtok=1.0, completion_per_mtok=1.0)}
    async with Orchestrator(FakeBackend(answer), prices=prices) as orch:
        run = await orch.run(queries)
    scores = await lab.score(run, [lab.contains("{{city}}"), lab.regex(r"^[A-Z]\w+$")])
    assert len(scores) == len(queries) * 2
    table = lab.summary(scores, by="variant").set_index("variant")
    assert table.loc["long", "pass_rate"] == 1.0 and table.loc["short", "pass_rate"] == 0.0
    assert table.loc["long", "scored"] == 8 and table.loc["long", "total_tokens"] == 4 * 13
    assert table.loc["long", "ci_low"] == pytest.approx(lab.wilson(8, 8)[0])
    assert lab.best(scores, per="model")["variant"].tolist() == ["long"]
    view = lab.matrix(scores)
    assert view.frame.loc["long", "eiffel"].startswith("✓ ✓ Paris")
    assert "❌" not in view._repr_html_() and "✗" in view.frame.loc["short", "colosseum"]
    scorer_names = list(dict.fromkeys(scores["scorer"]))
    key = f"Marks, one per scorer in order ({', '.join(scorer_names)}): ✓ passed, ✗ failed, · measured only."
    assert repr(view).endswith(key) and f"<caption>{key}" in view._repr_html_().replace("&#x27;", "'")


async def test_a_rubric_whose_grades_fail_gives_failed_scores_not_an_exception() -> None:
    answers = FakeBackend({"a": Answer("Paris"), "b": Answer("Lyon")})
    odd = FakeBackend({"grade|a": Fail(ServerError("down")), "grade|b": Answer("[" * 200_000)})
    down = FakeBackend(default=Fail(ServerError("down")))
    async with Orchestrator(answers) as orch, Orchestrator(odd, retry=Retry.never()) as grader:
        run = await orch.run([Query(n, "Capital of France?") for n in "ab"])
        scores = await lab.score(run, [lab.rubric("names the capital", grader.run)])
        async with Orchestrator(down, retry=Retry.never()) as every_grade_fails:
            failed = await lab.score(run, [lab.rubric("names the capital", every_grade_fails.run)])
    assert scores["passed"].tolist() == [False, False]
    assert "the grader failed" in scores["reason"][0] and "nested too deeply" in scores["reason"][1]
    assert failed["passed"].tolist() == [False, False] and all("the grader failed" in r for r in failed["reason"])


async def test_a_rubric_grades_through_the_orchestrator_and_survives_malformed_grades() -> None:
    answers = FakeBackend(
        {"a": Answer("Paris"), "b": Answer("Lyon"), "c": Answer("Rome"), "d": Fail(ServerError("down"))}
    )
    grades = FakeBackend(
        {
            "grade|a": Answer('{"pass": true, "reason": "names Paris"}'),
            "grade|b": Answer('{"pass": false, "reason": "Lyon is not the capital"}'),
            "grade|c": Answer("PASS!!! (not JSON)"),
        }
    )
    async with Orchestrator(answers) as orch, Orchestrator(grades) as grader:
        run = await orch.run([Query(n, "Capital of France?") for n in "abcd"], raise_if_all_failed=False)
        judge_capital = lab.rubric("names the capital of France", grader.run)
        scores = await lab.score(run, [judge_capital])
    assert scores["passed"].tolist() == [True, False, False, False]
    assert "Lyon is not" in scores["reason"][1] and "unreadable grade" in scores["reason"][2]
    assert "no answer: server_error" in scores["reason"][3]
    assert [c.name for c in grades.calls] == ["grade|a", "grade|b", "grade|c"]  # the failed answer is not graded
    assert len(judge_capital.runs) == 1 and judge_capital.runs[0].metrics.queries == 3  # its tokens, apart
