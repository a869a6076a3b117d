"""``hybrid notebooks run``: a notebook over a grid of parameters with papermill, into one store,
killed once and run again: every combination ends with its run, no query is sent twice, and the
summary table is printed and saved."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import psutil
import pytest

from hybrid.cli import main as cli_main
from hybrid.notebook_grid import combinations, finished, parse_value

pytestmark = pytest.mark.heavy

QUERIES = 6
PARAMETERS = """\
hybrid_store = "runs.sqlite"
hybrid_run_name = None
model = "sim-small"
temperature = 0.0"""
# One query at a time, each taking real time (time scale 1), so a kill lands mid-way through a run.
BODY = f"""\
from hybrid import Orchestrator, Query, sim

queries = [
    Query(f"q{{i}}", f"Question {{i}}", model=model, temperature=temperature, max_tokens=8) for i in range({QUERIES})
]
async with Orchestrator(sim.backend(sim.SimConfig(seed=3)), store=hybrid_store, max_concurrency=1) as orch:
    run = await orch.run(queries, name=hybrid_run_name, resume=True)
print(run.summary())"""


def notebook(tmp_path: Path, parameters: str = PARAMETERS, tagged: bool = True) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(parameters), nbformat.v4.new_code_cell(BODY)]
    if tagged:
        nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "study.ipynb"
    nbformat.write(nb, path)
    return path


def grid_command(nb: Path, store: Path) -> list[str]:
    return [
        sys.executable, "-m", "hybrid", "notebooks", "run", str(nb),
        "-p", "model", "sim-small", "sim-large", "-p", "temperature", "0", "0.7", "--store", str(store),
    ]  # fmt: skip


def rows_kept(store: Path, run_name: str) -> int:
    if not store.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
            return int(
                db.execute(
                    "SELECT COUNT(*) FROM results r JOIN runs ON runs.id = r.run_id WHERE runs.name = ?", (run_name,)
                ).fetchone()[0]
            )
    except sqlite3.OperationalError:  # the store is being made: no tables yet
        return 0


def test_a_grid_killed_mid_way_ends_with_every_run_and_no_query_sent_twice(tmp_path: Path) -> None:
    nb, store = notebook(tmp_path), tmp_path / "runs.sqlite"
    grid = combinations(nb, [("model", ["sim-small", "sim-large"]), ("temperature", [0, 0.7])], tmp_path / "x")
    second = grid[1].run_name
    assert [c.run_name for c in grid] == [
        "study[model=sim-small,temperature=0]",
        "study[model=sim-small,temperature=0.7]",
        "study[model=sim-large,temperature=0]",
        "study[model=sim-large,temperature=0.7]",
    ]
    first_try = subprocess.Popen(grid_command(nb, store), stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while rows_kept(store, second) < 2:  # the second combination is part-way through its run
            assert first_try.poll() is None and time.monotonic() < deadline, "the grid ended before it was killed"
            time.sleep(0.05)
    finally:
        for process in [*psutil.Process(first_try.pid).children(recursive=True), first_try]:  # its kernel too
            process.kill()
        first_try.wait()
    assert 2 <= rows_kept(store, second) < QUERIES
    out = tmp_path / "runs-notebooks"
    first_done = (out / f"{grid[0].run_name}.ipynb").stat().st_mtime_ns
    assert finished(out / f"{grid[0].run_name}.ipynb") and not finished(out / f"{second}.ipynb")

    again = subprocess.run(grid_command(nb, store), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    assert lines[0] == f"[1/4] {grid[0].run_name}: finished before, not run again"
    assert (out / f"{grid[0].run_name}.ipynb").stat().st_mtime_ns == first_done
    with sqlite3.connect(store) as db:
        sent = db.execute(
            "SELECT runs.name, r.name, COUNT(*) FROM results r JOIN runs ON runs.id = r.run_id "
            "WHERE r.origin = 'sent' GROUP BY runs.name, r.name"
        ).fetchall()
        statuses = dict(db.execute("SELECT name, status FROM runs").fetchall())
    assert statuses == {c.run_name: "finished" for c in grid}
    assert len(sent) == 4 * QUERIES and {count for *_, count in sent} == {1}  # each query sent exactly once
    summary = pd.read_csv(out / "summary.csv")
    assert summary["run"].tolist() == [c.run_name for c in grid]
    assert summary["ok"].tolist() == [QUERIES] * 4 and summary["segments"].tolist() == [1, 2, 1, 1]
    assert summary[["model", "temperature"]].values.tolist() == [
        [c.values["model"], c.values["temperature"]] for c in grid
    ]
    assert any(second in line and " 2 " in line for line in lines)  # the printed table: two segments
    assert lines[-1] == f"Saved {out / 'summary.csv'}"
    assert f"{QUERIES}/{QUERIES} ok in" in "".join(
        o.get("text", "") for c in nbformat.read(out / f"{second}.ipynb", 4).cells for o in c.get("outputs", [])
    )


@pytest.mark.parametrize(
    ("make", "args", "said"),
    [
        (lambda p: p / "nope.ipynb", ["-p", "model", "a"], "No notebook at"),
        (lambda p: notebook(p, tagged=False), ["-p", "model", "a"], "no cell tagged 'parameters'"),
        (lambda p: notebook(p, parameters="model = 'x'"), ["-p", "model", "a"], "no default for hybrid_store"),
        (lambda p: notebook(p), ["-p", "seed", "1"], "no default for seed"),
        (lambda p: notebook(p), ["-p", "model"], "-p model has no values"),
        (lambda p: notebook(p), ["-p", "model", "a", "-p", "model", "b"], "-p model is given twice"),
    ],
)
def test_a_bad_grid_is_refused_before_any_kernel_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make, args: list[str], said: str
) -> None:
    nb = make(tmp_path)
    assert cli_main(["notebooks", "run", str(nb), *args, "--store", str(tmp_path / "runs.sqlite")]) == 2
    assert said in capsys.readouterr().err
    assert not (tmp_path / "runs-notebooks").exists() and not (tmp_path / "runs.sqlite").exists()


def test_values_are_read_as_papermill_reads_them() -> None:
    assert [parse_value(v) for v in ("0", "0.7", "true", "null", '"0"', "gpt-4o-mini")] == [
        0,
        0.7,
        True,
        None,
        "0",
        "gpt-4o-mini",
    ]


def test_a_combination_whose_notebook_fails_is_reported_and_the_others_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nb = notebook(tmp_path)
    cells = nbformat.read(nb, 4)
    # cell 3 of the executed notebook: papermill's injected parameters are cell 2
    cells.cells.insert(1, nbformat.v4.new_code_cell('assert model != "broken", "no such model here"'))
    nbformat.write(cells, nb)
    store = tmp_path / "runs.sqlite"
    args = ["notebooks", "run", str(nb), "-p", "model", "broken", "sim-small", "--store", str(store)]
    assert cli_main(args) == 1
    out = capsys.readouterr().out
    assert "[1/2] study[model=broken]: failed in cell 3 (AssertionError: no such model here)" in out
    summary = pd.read_csv(tmp_path / "runs-notebooks" / "summary.csv")
    assert summary["status"].tolist() == ["notebook failed", "finished"]
    assert summary["notebook_error"].tolist()[0] == "AssertionError: no such model here"
