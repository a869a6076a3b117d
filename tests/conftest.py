"""Shared fixtures: a simulator over loopback and backends of both kinds pointed at it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from hybrid import HTTPBackend, OpenAIBackend, Orchestrator, Retry, sim

BACKENDS = {"openai": OpenAIBackend, "http": HTTPBackend}


@pytest.fixture(params=sorted(BACKENDS))
def backend_kind(request: pytest.FixtureRequest) -> str:
    """Each test using it runs once per backend."""
    kind: str = request.param
    return kind


@contextlib.asynccontextmanager
async def orchestrated(
    kind: str = "openai", *, config: sim.SimConfig | None = None, **orchestrator: Any
) -> AsyncIterator[tuple[Orchestrator, sim.SimServer]]:
    """A simulator (time scale 0 unless given) and an open orchestrator on it."""
    config = config or sim.SimConfig(seed=7, time_scale=0.0)
    orchestrator.setdefault("retry", Retry(attempts=3, base=0.001, cap=0.01))
    orchestrator.setdefault("timeout", 10.0)
    async with sim.serve(config) as server:
        backend = BACKENDS[kind](base_url=server.url, api_key=server.api_key, model="sim-small")
        async with Orchestrator(backend, **orchestrator) as orch:
            yield orch, server


@pytest.fixture
def orch_factory() -> Callable[..., Any]:
    return orchestrated
