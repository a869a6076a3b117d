"""The suite recorded against Gemma 3 270M (``make record-real``, committed) replays here, on a
machine with no model, no server, no key and every network socket blocked, to the same verdicts."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_socket

from hybrid import real
from hybrid.scenarios import regression_suite
from hybrid.store.schema import SCHEMA_VERSION

RECORDING = Path(__file__).resolve().parent.parent / "notebooks" / "recordings" / "gemma_suite.sqlite"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("HYBRID_CACHE", raising=False)
    pytest_socket.disable_socket(allow_unix_socket=True)
    try:
        yield
    finally:
        pytest_socket.enable_socket()


def test_the_suite_names_the_model_the_real_server_answers_to() -> None:
    assert regression_suite.MODEL == real.MODEL_ALIAS


def test_the_committed_recording_is_at_the_stores_schema_so_reading_it_leaves_it_as_committed() -> None:
    """Opening a store upgrades an older schema in place, and ``docs/durable-runs.md`` lists this
    recording's runs (a block ``tests/test_docs.py`` runs in the repository): a recording left at an
    older schema is rewritten by every ``make test``, and a fresh clone is no longer clean."""
    with sqlite3.connect(f"file:{RECORDING}?immutable=1", uri=True) as db:
        version = db.execute("PRAGMA user_version").fetchone()[0]
    assert version == SCHEMA_VERSION, (
        f"the recording is at schema {version}, the store at {SCHEMA_VERSION}: upgrade it with "
        f"`.venv/bin/hybrid runs --store notebooks/recordings/{RECORDING.name} list` and commit it"
    )


async def test_the_committed_gemma_recording_replays_offline_to_its_verdicts(offline: None) -> None:
    recorded = json.loads(regression_suite.verdicts_path(RECORDING).read_text())
    before = RECORDING.stat().st_mtime_ns, RECORDING.stat().st_size
    replayed = await regression_suite.replay(RECORDING)
    assert replayed == recorded  # verdict, samples used and pass rate, case by case
    assert {outcome["verdict"] for outcome in recorded.values()} >= {"pass", "fail"}  # the suite tells them apart
    assert (RECORDING.stat().st_mtime_ns, RECORDING.stat().st_size) == before  # replayed from a copy


async def test_the_committed_recording_under_a_new_fingerprint_version_is_refused_with_how_to_record_again(
    offline: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A kit that changes what it hashes cannot replay an old recording: every row says so and
    names the command that records it again, rather than passing or failing the gates silently."""
    import shutil

    import hybrid.fingerprint as fingerprint
    from hybrid import Orchestrator, Store

    copy = tmp_path / RECORDING.name
    shutil.copy(RECORDING, copy)
    monkeypatch.setattr(fingerprint, "FINGERPRINT_VERSION", fingerprint.FINGERPRINT_VERSION + 1)
    fingerprint.fingerprint.cache_clear()
    try:
        with Store(copy) as store:
            async with Orchestrator(regression_suite.replay_backend(), store=store, cache="replay") as orch:
                run = await orch.run(
                    [regression_suite.query(case) for case in regression_suite.CASES], raise_if_all_failed=False
                )
    finally:
        fingerprint.fingerprint.cache_clear()
    assert [r.error.kind if r.error else "ok" for r in run.results] == ["not_recorded"] * len(regression_suite.CASES)
    for row in run.results:
        assert "older fingerprint version" in str(row.error) and "HYBRID_CACHE=record" in str(row.error)
