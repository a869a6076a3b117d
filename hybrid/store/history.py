"""A store's history: the runs it holds, a run loaded as it was measured, two runs compared, a run
exported.  Loading computes metrics with the same code as the live run (``RunMetrics.compute``)
from the stored rows and run fields, so the two are equal; a resumed run's segments are merged
by :mod:`hybrid.store.segments`."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from hybrid.errors import ConfigError, error_of_kind
from hybrid.metrics import BudgetState, RunMetrics
from hybrid.query import Query, QueryResult
from hybrid.results import RunResult
from hybrid.store.base import StoreFile
from hybrid.store.schema import IN_LATEST_SEGMENT, RESULT_COLUMNS, result_from
from hybrid.store.segments import Segment, merge

if TYPE_CHECKING:
    import pandas as pd


#: Rows an export writes at a time: one chunk's texts are all it holds (100 answers of 100 KB: 10 MB).
EXPORT_ROWS = 100


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

    def load(self, name: str, *, segment: int | None = None, texts: bool = True) -> RunResult:
        """Run ``name`` as it was saved: a :class:`RunResult` with ``to_frame()``, plots and all,
        whose metrics are computed from the stored rows and run fields by the same code as the live
        run's, so they are equal.  ``segment=k`` gives one segment as it ran (0 is the first run,
        1 its first resume, -1 the latest); without it a resumed run's segments are merged
        (:func:`hybrid.store.segments.merge`).  Queries that never finished (a killed run) come back as
        ``cancelled`` rows.

        The run comes back whole, every answer's text in memory: a run of 50,000 answers of 100 KB
        takes about 5 GB.  ``texts=False`` leaves the texts out (``text`` is None on every row;
        metrics, plots and the summary do not need them), which is how the viewer reads a run;
        :meth:`export` writes a run of any size in chunks."""
        self.flush()
        found = self._read("SELECT id FROM runs WHERE name = ?", (name,))
        if not found:
            known = [row[0] for row in self._read("SELECT name FROM runs ORDER BY started_at")]
            raise ConfigError(f"No run named {name!r} in {self}; saved runs: {known}.")
        infos = self._result_rows("SELECT * FROM segments WHERE run_id = ? ORDER BY segment", (found[0][0],))
        if segment is None:
            return merge([self._segment(name, info, texts) for info in infos])
        if not isinstance(segment, int) or isinstance(segment, bool) or not -len(infos) <= segment < len(infos):
            raise ConfigError(
                f"Run {name!r} has {len(infos)} segment(s): pass segment=0 (the first run) to "
                f"{len(infos) - 1} (the latest resume), or -1 for the latest; got {segment!r}."
            )
        return self._segment(name, infos[segment], texts)[0]

    def _segment(self, name: str, info: dict[str, Any], texts: bool = True) -> Segment:
        """One stored segment as it ran, and each row's fingerprint (for :func:`merge`)."""
        count = info["queries"]
        columns = "*" if texts else f"{RESULT_COLUMNS.replace(' text,', ' NULL AS text,', 1)}"
        rows = self._result_rows(
            f"SELECT {columns} FROM results WHERE run_id = ? AND segment = ? AND idx < ? ORDER BY idx",
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
            results=tuple(results),
            metrics=metrics,
            mode=info["mode"],
            warnings=warnings,
            cancelled=cancelled,
            diagnostics=tuple(orjson.loads(info.get("diagnostics") or "[]")),
            flags=tuple(orjson.loads(info.get("flags") or "[]")),
            prices=orjson.loads(info.get("prices") or "{}"),
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
        """Write run ``name``'s rows to ``path``: ``.parquet``, ``.csv`` or ``.jsonl`` by its suffix;
        the rows of ``load(name).to_frame()``, written :data:`EXPORT_ROWS` at a time, so a run of any
        size is exported in bounded memory (only one chunk's texts are read at once)."""
        import pandas as pd

        target = Path(path)
        if target.suffix not in (".parquet", ".csv", ".jsonl"):
            raise ConfigError(f"Export to {str(path)!r}: use a .parquet, .csv or .jsonl file name.")
        run = self.load(name, texts=False)
        writer = _ChunkWriter(target, run.to_frame())
        with writer:
            for start in range(0, len(run.results), EXPORT_ROWS):
                chunk = run.results[start : start + EXPORT_ROWS]
                texts = self.texts(name, start, start + len(chunk))
                writer.write(pd.DataFrame([replace(r, text=texts.get(r.index)).as_row() for r in chunk]))
        return target

    def texts(self, name: str, start: int, stop: int) -> dict[int, str | None]:
        """The whole texts of rows ``start`` to ``stop - 1`` of run ``name``, by index (its latest
        segment, where a resumed row keeps the text that answered it): what ``load(name,
        texts=False)`` leaves out, read a few rows at a time (an export, the viewer's whole answer)."""
        rows = self._read(
            f"SELECT r.idx, r.text FROM results r JOIN runs ON runs.id = r.run_id WHERE runs.name = ? "
            f"AND {IN_LATEST_SEGMENT} AND r.idx >= ? AND r.idx < ?",
            (name, start, stop),
        )
        return {int(index): text for index, text in rows}


class _ChunkWriter:
    """Appends frames of rows to one export file; the whole run's frame without texts fixes the
    columns (and, for Parquet, their types) before the first chunk."""

    def __init__(self, target: Path, skeleton: pd.DataFrame) -> None:
        self.target = target
        self.columns = list(skeleton.columns)
        self.first = True
        self.schema: Any = None
        self.parquet: Any = None
        self.file: Any = None
        if target.suffix == ".parquet":
            import pandas as pd
            import pyarrow as pa

            texts = pd.Series("", index=skeleton.index, dtype="string")  # all None without texts: give the type
            self.schema = pa.Schema.from_pandas(skeleton.assign(text=texts), preserve_index=False)

    def __enter__(self) -> _ChunkWriter:
        if self.schema is not None:
            import pyarrow.parquet as pq

            self.parquet = pq.ParquetWriter(self.target, self.schema)
        else:
            self.file = self.target.open("w", encoding="utf-8", newline="")
        return self

    def write(self, frame: pd.DataFrame) -> None:
        frame = frame.reindex(columns=self.columns)
        if self.parquet is not None:
            import pyarrow as pa

            self.parquet.write_table(pa.Table.from_pandas(frame, schema=self.schema, preserve_index=False))
        elif self.target.suffix == ".csv":
            frame.to_csv(self.file, index=False, header=self.first)
        else:
            frame.to_json(self.file, orient="records", lines=True)  # each record ends its line
        self.first = False

    def __exit__(self, *exc: object) -> None:
        if self.parquet is not None:
            self.parquet.close()
        if self.file is not None:
            self.file.close()
