"""What scorers said of a run's answers, kept beside the run: a report, the viewer or CI reads the
same verdicts the notebook computed, without the scorers (a rubric's judge, a custom check)."""

from __future__ import annotations

from collections.abc import Iterable

from hybrid.errors import ConfigError
from hybrid.store.base import StoreFile


class Scores(StoreFile):
    """A run's scores (part of :class:`~hybrid.store.Store`)."""

    def save_scores(self, name: str, scores: Iterable[tuple[int, str, bool | None, float | None, str]]) -> None:
        """Keep ``scores`` (row index, scorer, passed, value, reason) for run ``name``, replacing
        what the same scorer said of the same row before; committed before this returns."""
        self.flush()
        with self._read_lock:
            found = self._reader.execute("SELECT id FROM runs WHERE name = ?", (name,)).fetchone()
            if found is None:
                raise ConfigError(f"No run named {name!r} in {self} to keep scores for: score a run of this store.")
            rows = [
                (found[0], index, scorer, None if passed is None else int(passed), value, reason)
                for index, scorer, passed, value, reason in scores
            ]
            self._reader.execute("BEGIN IMMEDIATE")
            try:
                self._reader.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?)", rows)
            except BaseException:
                self._reader.execute("ROLLBACK")  # as begin_segment does: never leave the reader in a transaction
                raise
            self._reader.execute("COMMIT")

    def scores(self, name: str) -> dict[int, list[tuple[str, bool | None, float | None, str]]]:
        """Run ``name``'s kept scores by row index: (scorer, passed, value, reason), in scorer order."""
        rows = self._read(
            "SELECT s.idx, s.scorer, s.passed, s.value, s.reason FROM scores s JOIN runs ON runs.id = s.run_id "
            "WHERE runs.name = ? ORDER BY s.idx, s.scorer",
            (name,),
        )
        found: dict[int, list[tuple[str, bool | None, float | None, str]]] = {}
        for index, scorer, passed, value, reason in rows:
            found.setdefault(index, []).append((scorer, None if passed is None else bool(passed), value, reason))
        return found
