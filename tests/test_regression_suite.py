"""The suite recorded against Gemma 3 270M (``make record-real``, committed) replays here, on a
machine with no model, no server, no key and every network socket blocked, to the same verdicts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_socket

from hybrid import real
from hybrid.scenarios import regression_suite

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


async def test_the_committed_gemma_recording_replays_offline_to_its_verdicts(offline: None) -> None:
    recorded = json.loads(regression_suite.verdicts_path(RECORDING).read_text())
    before = RECORDING.stat().st_mtime_ns, RECORDING.stat().st_size
    replayed = await regression_suite.replay(RECORDING)
    assert replayed == recorded  # verdict, samples used and pass rate, case by case
    assert {outcome["verdict"] for outcome in recorded.values()} >= {"pass", "fail"}  # the suite tells them apart
    assert (RECORDING.stat().st_mtime_ns, RECORDING.stat().st_size) == before  # replayed from a copy
