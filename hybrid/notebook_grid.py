"""One notebook run over a grid of parameters with papermill, every combination's run in one store.

Analysts loop a notebook over models and settings by hand; `papermill`_ is the ecosystem's tool for
running a notebook with parameters.  ``hybrid notebooks run NOTEBOOK -p model a b -p temperature 0
0.7 --store runs.sqlite`` runs ``NOTEBOOK`` once per combination (here four), each with papermill,
and prints (and saves) a table of the runs they made.  (:func:`hybrid.lab.grid` stays the grid of
*prompts* inside one run.)

The notebook's contract: a cell tagged ``parameters`` holding a default for each ``-p`` name and for
``hybrid_store`` and ``hybrid_run_name``, which papermill overrides per combination; the notebook
passes them to its orchestrator::

    hybrid_store = "runs.sqlite"        # a cell tagged "parameters"
    hybrid_run_name = None
    model = "sim-small"
    ...
    async with Orchestrator(backend, store=hybrid_store) as orch:
        run = await orch.run(queries, name=hybrid_run_name, resume=hybrid_run_name is not None)

Resumable twice over.  A combination whose executed notebook papermill finished without an error is
not run again.  A combination that was killed part-way runs again, and its run resumes from the
store: the queries answered before are landed from it, never sent twice.

Each combination's run is named ``STEM[name=value,...]`` and its executed notebook is kept as
``OUT/STEM[name=value,...].ipynb`` (``OUT`` defaults to ``<store stem>-notebooks`` beside the store).
The summary (``OUT/summary.csv``) is :meth:`Store.runs`'s row of each combination's run, the
parameters in front.

.. _papermill: https://papermill.readthedocs.io
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from hybrid.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

#: The parameters the kit injects into every combination, beside the grid's own.
KIT_PARAMETERS = ("hybrid_store", "hybrid_run_name")
SUMMARY_FILE = "summary.csv"
#: What the summary shows of each combination's run (:meth:`Store.runs`'s columns).
SUMMARY_COLUMNS = ("status", "segments", "queries", "ok", "failed", "wall_s", "total_tokens", "cost_usd")


@dataclass(frozen=True, slots=True)
class Combination:
    """One point of the grid: its parameter values, its run's name and its executed notebook."""

    values: dict[str, Any]
    run_name: str
    output: Path


def parse_value(text: str) -> Any:
    """A ``-p`` value as papermill's own command line reads one: a JSON number, ``true``/``false``/
    ``null`` or a quoted string; anything else is the text itself (``gpt-4o-mini``)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def combinations(notebook: Path, parameters: Sequence[tuple[str, Sequence[Any]]], out_dir: Path) -> list[Combination]:
    """Every combination of ``parameters`` (name, values), the first name varying slowest."""
    names = [name for name, _ in parameters]
    grid = []
    for values in itertools.product(*(values for _, values in parameters)):
        chosen = dict(zip(names, values, strict=True))
        label = ",".join(f"{name}={_shown(value)}" for name, value in chosen.items())
        run_name = f"{notebook.stem}[{label}]"
        grid.append(Combination(chosen, run_name, out_dir / f"{run_name}.ipynb"))
    return grid


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def finished(output: Path) -> bool:
    """Whether papermill finished executing ``output`` without an error (its metadata says so)."""
    try:
        meta = orjson.loads(output.read_bytes()).get("metadata", {}).get("papermill", {})
    except (OSError, orjson.JSONDecodeError):
        return False
    return bool(meta.get("end_time")) and not meta.get("exception")


def check(notebook: Path, parameters: Sequence[tuple[str, Sequence[Any]]]) -> None:
    """Refuse, before any kernel starts, a notebook that is missing, is not one, or whose
    ``parameters`` cell lacks a default for a grid or kit parameter."""
    import papermill

    if notebook.suffix != ".ipynb":
        raise ConfigError(f"{notebook} is not a notebook: give the path of a .ipynb file.")
    if not notebook.is_file():
        raise ConfigError(f"No notebook at {notebook}: check the path.")
    names = [name for name, _ in parameters]
    if not names:
        raise ConfigError("Give at least one parameter to vary: -p NAME VALUE [VALUE ...].")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"-p {repeated[0]} is given twice: give all its values after one -p.")
    for name, values in parameters:
        if not values:
            raise ConfigError(f"-p {name} has no values: -p {name} VALUE [VALUE ...].")
    try:
        declared = papermill.inspect_notebook(str(notebook))
    except Exception as exc:  # papermill's own errors are of many kinds (a bad file, bad JSON)
        raise ConfigError(f"{notebook} cannot be read as a notebook ({type(exc).__name__}: {exc}).") from None
    if not declared:
        raise ConfigError(
            f"{notebook} has no cell tagged 'parameters': tag one holding a default for "
            f"{', '.join([*KIT_PARAMETERS, *names])} (papermill overrides them per combination)."
        )
    missing = [name for name in (*KIT_PARAMETERS, *names) if name not in declared]
    if missing:
        raise ConfigError(
            f"{notebook}'s parameters cell has no default for {', '.join(missing)}: add e.g. "
            f"`{missing[0]} = None` there, and pass hybrid_store / hybrid_run_name to the orchestrator "
            "(store=hybrid_store, name=hybrid_run_name, resume=True)."
        )


def output_folder(store: Path | str, out_dir: Path | str | None) -> Path:
    """Where the executed notebooks and the summary go: ``out_dir``, else ``<store stem>-notebooks``
    beside the store."""
    if out_dir is not None:
        return Path(out_dir)
    store = Path(store).resolve()
    return store.with_name(f"{store.stem}-notebooks")


def run_grid(
    notebook: Path | str,
    parameters: Sequence[tuple[str, Sequence[Any]]],
    store: Path | str,
    *,
    out_dir: Path | str | None = None,
    kernel_name: str | None = None,
    say: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Run ``notebook`` once per combination of ``parameters`` into ``store`` (see the module
    docstring); returns the summary, also saved as ``OUT/summary.csv``.  A combination whose notebook
    fails is reported and the others still run; its row in the summary says so."""
    import papermill

    notebook, store = Path(notebook), Path(store).resolve()
    check(notebook, parameters)
    out = output_folder(store, out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid = combinations(notebook, parameters, out)
    failures: dict[str, str] = {}
    kernels = _local_kernels()
    for number, combo in enumerate(grid, 1):
        head = f"[{number}/{len(grid)}] {combo.run_name}"
        if finished(combo.output):
            say(f"{head}: finished before, not run again")
            continue
        say(f"{head}: running -> {combo.output}")
        try:
            papermill.execute_notebook(
                str(notebook),
                str(combo.output),
                parameters={**combo.values, "hybrid_store": str(store), "hybrid_run_name": combo.run_name},
                kernel_name=kernel_name,
                kernel_manager_class=kernels,
                cwd=str(notebook.parent),
                progress_bar=False,
            )
        except papermill.PapermillExecutionError as exc:
            failures[combo.run_name] = f"{exc.ename}: {exc.evalue}"
            say(f"{head}: failed in cell {exc.exec_count} ({exc.ename}: {exc.evalue}); see {combo.output}")
    table = summary(store, grid, failures)
    table.to_csv(out / SUMMARY_FILE, index=False)
    return table


def _local_kernels() -> type:
    """A kernel manager whose kernels talk over Unix sockets (``ipc``), not TCP: a grid's kernels
    are on this machine, so no port need open, and the kernel does not warn, once per combination,
    that its TCP traffic is unencrypted."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class LocalKernelManager(AsyncKernelManager):
        @default("transport")
        def _transport_default(self) -> str:
            return "ipc"

    return LocalKernelManager


def summary(store: Path, grid: Sequence[Combination], failures: dict[str, str] | None = None) -> pd.DataFrame:
    """Per combination, its parameters and its run's row of :meth:`Store.runs` (empty where the
    notebook made no run of that name), plus the notebook's error if it failed."""
    import pandas as pd

    from hybrid.store import open_existing

    failures = failures or {}
    runs = pd.DataFrame()
    if store.exists():
        with open_existing(store) as kept:
            runs = kept.runs().set_index("name")
    rows = []
    for combo in grid:
        row: dict[str, Any] = {**combo.values, "run": combo.run_name}
        if combo.run_name in runs.index:
            row |= {column: runs.at[combo.run_name, column] for column in SUMMARY_COLUMNS}
        else:
            row["status"] = "notebook failed" if combo.run_name in failures else "no run of this name"
        row["notebook_error"] = failures.get(combo.run_name)
        rows.append(row)
    names = list(grid[0].values) if grid else []
    return pd.DataFrame(rows, columns=[*names, "run", *SUMMARY_COLUMNS, "notebook_error"])
