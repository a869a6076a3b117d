"""The analyst's prompt lab: grids, scorers, pass rates with intervals, a matrix view.

>>> queries = lab.grid({"plain": "Capital of {{country}}?"}, {"fr": {"country": "France", "city": "Paris"}},
...                    models=["sim-small", "sim-large"], repeats=3)
>>> run = await orch.run(queries)
>>> scores = await lab.score(run, [lab.contains("{{city}}"), lab.regex(r"^\\w"), lab.rubric("names a city", orch.run)])
>>> lab.summary(scores, by="variant")        # pass rate, Wilson 95% interval, tokens, cost
>>> lab.matrix(scores)                       # variants x cases, answers with their marks
>>> lab.gate(scores, min_pass=0.8)           # pass, fail or inconclusive, with the interval
>>> await lab.decide(orch, suite, lab.contains("Paris"), min_pass=0.8)  # sends repeats until it knows
"""

from hybrid.lab.gates import Gate, SequentialTest, decide, gate, pass_at_k, pass_hat_k
from hybrid.lab.grid import grid
from hybrid.lab.report import Matrix, best, matrix, score, summary, wilson
from hybrid.lab.scorers import (
    Score,
    Scorer,
    contains,
    equals,
    is_json,
    json_schema,
    not_contains,
    numeric,
    python,
    regex,
    rubric,
)

__all__ = [
    "Gate",
    "Matrix",
    "Score",
    "Scorer",
    "SequentialTest",
    "best",
    "contains",
    "decide",
    "equals",
    "gate",
    "grid",
    "is_json",
    "json_schema",
    "matrix",
    "not_contains",
    "numeric",
    "pass_at_k",
    "pass_hat_k",
    "python",
    "regex",
    "rubric",
    "score",
    "summary",
    "wilson",
]
