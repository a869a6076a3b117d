"""A store's history: the runs it holds, a run loaded as it was measured, two runs compared, a run
exported.  Loading computes metrics with the same code as the live run (``RunMetrics.compute``)
from the stored rows and run fields, so the two are equal; a resumed run's segments are merged
by :mod:`hybrid.store.segments`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from hybrid.errors import ConfigError, error_of_kind
from hybrid.metrics import BudgetState, RunMetrics
from hybrid.query import Query, QueryResult
from hybrid.results import RunResult
from hybrid.store.base import StoreFile
from hybrid.store.schema import IN_LATEST_SEGMENT, result_from
from hybrid.store.segments import Segment, merge

if TYPE_CHECKING:
    import pandas as pd


class History(StoreFile):
    """Reading finished runs (part of :class:`~hybrid.store.Store`)."""

    def runs(self) -> pd.DataFrame:
        """One row per saved run: name, mode, status, when, segments (the first run and each
        resume), queries, ok/failed and tokens (each query in its latest state), wall (the
        segments' walls summed), cost (every paid attempt of every segment)."""
        import pandas as pd

        self.flush()
        rows = self._read(
            "SELECT runs.name, runs.mode, runs.status, runs.started_at, runs.ended_at, "
            "(SELECT COUNT(*) FROM segments s WHERE s.run_id = runs.id), runs.queries, "
            "SUM(r.error_kind IS NULL), SUM(r.error_kind IS NOT NULL), "
            "(SELECT SUM(COALESCE(s.wall_s, (SELECT MAX(x.finished_s) FROM results x "
            "  WHERE x.run_id = s.run_id AND x.segment = s.segment), 0)) FROM segments s WHERE s.run_id = runs.id), "
            "SUM(r.prompt_tokens + r.completion_tokens), "
            "(SELECT SUM(x.cost_usd) FROM results x WHERE x.run_id = runs.id AND x.origin IN ('sent', 'batch')), "
            "runs.kit_version, runs.git_commit "
            f"FROM runs LEFT JOIN results r ON r.run_id = runs.id AND r.idx < runs.queries AND {IN_LATEST_SEGMENT} "
            "GROUP BY runs.id ORDER BY runs.started_at"
        )
        columns = [
            "name",
            "mode",
            "status",
            "started_at",
            "ended_at",
            "segments",
            "queries",
            "ok",
            "failed",
            "wall_s",
            "total_tokens",
            "cost_usd",
            "kit_version",
            "git_commit",
        ]
        frame = pd.DataFrame(rows, columns=columns)
        for column in ("started_at", "ended_at"):
            frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
        return frame

    def load(self, name: str, *, segment: int | None = None) -> RunResult:
        """Run ``name`` as it was saved: a :class:`RunResult` with ``to_frame()``, plots and all,
        whose metrics are computed from the stored rows and run fields by the same code as the live
        run's, so they are equal.  ``segment=k`` gives one segment as it ran (0 is the first run,
        1 its first resume, -1 the latest); without it a resumed run's segments are merged
        (:func:`hybrid.store.segments.merge`).  Queries that never finished (a killed run) come back as
        ``cancelled`` rows."""
        self.flush()
        found = self._read("SELECT id FROM runs WHERE name = ?", (name,))
        if not found:
            known = [row[0] for row in self._read("SELECT name FROM runs ORDER BY started_at")]
            raise ConfigError(f"No run named {name!r} in {self}; saved runs: {known}.")
        infos = self._result_rows("SELECT * FROM segments WHERE run_id = ? ORDER BY segment", (found[0][0],))
        if segment is None:
            return merge([self._segment(name, info) for info in infos])
        if not isinstance(segment, int) or isinstance(segment, bool) or not -len(infos) <= segment < len(infos):
            raise ConfigError(
                f"Run {name!r} has {len(infos)} segment(s): pass segment=0 (the first run) to "
                f"{len(infos) - 1} (the latest resume), or -1 for the latest; got {segment!r}."
            )
        return self._segment(name, infos[segment])[0]

    def _segment(self, name: str, info: dict[str, Any]) -> Segment:
        """One stored segment as it ran, and each row's fingerprint (for :func:`merge`)."""
        count = info["queries"]
        rows = self._result_rows(
            "SELECT * FROM results WHERE run_id = ? AND segment = ? AND idx < ? ORDER BY idx",
            (info["run_id"], info["segment"], count),
        )
        by_index = {row["idx"]: row for row in rows}
        results: list[QueryResult] = []
        prints: list[str | None] = []
        for i in range(count):
            row = by_index.get(i)
            prints.append(None if row is None else row["fingerprint"])
            results.append(
                result_from(row)
                if row is not None
                else QueryResult(
                    query=Query(f"#{i}", "(never finished)"),
                    index=i,
                    error=error_of_kind("cancelled", f"Run {name!r} ended before this query finished."),
                )
            )
        ended = info["wall_s"] is not None
        if ended:
            wall, warnings = info["wall_s"], tuple(orjson.loads(info["warnings"]))
            cancelled = bool(info["cancelled"])
        else:  # a killed run, or a file from a kit that kept only the rows
            wall = max((r.finished_s for r in results), default=0.0)
            cancelled = info["status"] != "finished"
            warnings = (
                f"Run {name!r} never recorded its end (its process was killed, or it is still running): its wall is "
                "up to its last result and its CPU time is unknown."
                if info["ended_at"] is None
                else f"Run {name!r} was saved by an older version of the kit, which did not keep its concurrency, CPU "
                "time or warnings: its ideal efficiency and CPU per call are unknown.",
            )
            if len(by_index) < count:
                warnings += (
                    f"{count - len(by_index)} of {count} queries never finished (the run was {info['status']}).",
                )
        trace = [(at, limit) for at, limit in orjson.loads(info["concurrency_trace"] or "[]")]
        metrics = RunMetrics.compute(
            results,
            wall_s=wall,
            cpu_s=math.nan if info["cpu_s"] is None else info["cpu_s"],  # SQLite keeps NaN as NULL
            concurrency=info["concurrency"],
            concurrency_trace=trace,
            budget=BudgetState(*orjson.loads(info["budget"])) if info.get("budget") else None,
        )
        run = RunResult(
            results=tuple(results), metrics=metrics, mode=info["mode"], warnings=warnings, cancelled=cancelled
        )
        return run, prints

    def compare(self, a: str, b: str) -> pd.DataFrame:
        """Per query name, runs ``a`` and ``b`` side by side: text changed, tokens, latency, cost, error."""
        import pandas as pd

        left = self.load(a).to_frame().set_index("name")
        right = self.load(b).to_frame().set_index("name")
        columns = ["ok", "error_kind", "total_tokens", "latency_s", "cost_usd", "text"]
        frame = left[columns].add_suffix(f"_{a}").join(right[columns].add_suffix(f"_{b}"), how="outer")
        frame.insert(0, "text_changed", frame[f"text_{a}"].fillna("") != frame[f"text_{b}"].fillna(""))
        frame.insert(1, "tokens_delta", frame[f"total_tokens_{b}"] - frame[f"total_tokens_{a}"])
        frame.insert(2, "latency_delta_s", frame[f"latency_s_{b}"] - frame[f"latency_s_{a}"])
        return pd.DataFrame(frame)

    def export(self, name: str, path: str | Path) -> Path:
        """Write run ``name``'s rows to ``path``: ``.parquet``, ``.csv`` or ``.jsonl`` by its suffix."""
        target = Path(path)
        frame = self.load(name).to_frame()
        if target.suffix == ".parquet":
            frame.to_parquet(target)
        elif target.suffix == ".csv":
            frame.to_csv(target, index=False)
        elif target.suffix == ".jsonl":
            frame.to_json(target, orient="records", lines=True)
        else:
            raise ConfigError(f"Export to {str(path)!r}: use a .parquet, .csv or .jsonl file name.")
        return target
