"""The run store: every result written to SQLite as it lands, the response cache, and run history.

One class, :class:`Store`, made of parts that each do one job: the file and its writer thread
(``base``), the format and its upgrades (``schema``), runs as they happen (``runs``), remote jobs
(``remote_jobs``), the cache's table (``cache``), history (``history``, with ``segments`` merging
a resumed run), scorers' verdicts on a run (``scores``), pruning to the runs worth keeping
(``prune``), and one run's record of itself (``record``: what the orchestrator holds).

Why ``sqlite3`` from the standard library, in WAL mode, with one writer thread: results must reach
the disk while the run goes on (a crashed or killed kernel loses at most what was in flight), but
the event loop must never wait on the disk.  ``record`` only puts the row on a queue; a single
writer thread takes everything queued, writes it in one transaction and commits, so under load
commits are batched and at low rates each row is committed within a millisecond.  WAL lets readers
(``runs()``, ``load()``, ``hybrid view``, another notebook) read beside the writer, and with
``synchronous=NORMAL`` a commit is in the OS's hands at once: a ``kill -9`` of the process loses
nothing committed (a power cut may lose the last commits, never corrupt the file).  ``aiosqlite``
was not needed: it also runs one thread per connection, but would put each write's round trip on
the loop.

Several processes may write to one store (two notebooks): SQLite serialises the writers and each
waits up to ``BUSY_TIMEOUT_S`` for the lock.  The schema is versioned with ``PRAGMA user_version``;
a file written by a newer kit, a corrupt file or a folder that cannot be written is a
:class:`~hybrid.errors.ConfigError` when the store is opened, before anything is sent.  If writing
fails mid-run (a full disk), the failure is logged, the run gets a warning, and the run completes
in memory: no answer is lost.

What is stored: runs (name, mode, settings without secrets, kit version, git commit, machine,
start/end, status) and every result field, the request's fingerprint, and the cache.  Never the
API key or request headers: nothing here ever sees them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hybrid.errors import ConfigError
from hybrid.store.cache import AnswerCache, Recorded
from hybrid.store.history import History
from hybrid.store.prune import Pruned, Pruning
from hybrid.store.record import RunRecord
from hybrid.store.remote_jobs import RemoteJobs
from hybrid.store.schema import SCHEMA_VERSION
from hybrid.store.scores import Scores

__all__ = ["SCHEMA_VERSION", "Pruned", "Recorded", "RunRecord", "Store", "open_existing"]


class Store(History, Pruning, AnswerCache, RemoteJobs, Scores):
    """A SQLite run store at ``path`` (created if missing).  See the module docstring."""

    def view(self, run: str | None = None) -> Any:
        """In a notebook cell: serve this store's viewer from the kernel (once) and show the page
        of ``run`` (default: the latest), linked and in a frame (:mod:`hybrid.view.in_notebook`).

        The store knows that there is a viewer, not which: the viewer registers itself under the
        entry point group ``hybrid.viewer`` (the kit's own ``pyproject.toml``), so the store, which
        the viewer reads, never imports it."""
        from importlib.metadata import entry_points

        found = entry_points(group="hybrid.viewer", name="notebook")
        if not found:
            raise ConfigError("No viewer is installed with this kit: reinstall it (pip install hybrid-llm-kit).")
        return next(iter(found)).load()(self, run)

    def run_record(
        self, name: str, *, mode: str, settings: dict[str, Any], default_model: str, resume: bool
    ) -> RunRecord:
        """The record one run writes through (made before anything is sent; it writes nothing
        until the run opens its segment): how the engine reaches the store, never by its modules."""
        return RunRecord(self, name, mode=mode, settings=settings, default_model=default_model, resume=resume)


def open_existing(path: str | Path) -> Store:
    """The store at ``path``, which must exist: what only reads a store (the viewer, ``hybrid
    runs``, ``hybrid report``, ``hybrid bench diff``) never creates one from a mistyped name."""
    if not Path(path).is_file():
        raise ConfigError(
            f"No run store at {str(path)!r}. Give the file your notebook writes to, e.g. "
            "`--store runs.sqlite` next to `Orchestrator(..., store='runs.sqlite')`."
        )
    return Store(path)
