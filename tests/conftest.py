"""Shared fixtures and helpers: a simulator over loopback, backends of both kinds pointed at it, and
waiting for the server to settle, and the field-by-field check that a loaded run is the live one."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from hybrid import AnthropicBackend, HTTPBackend, OpenAIBackend, Orchestrator, Retry, RunResult, sim
from hybrid.query import QueryResult

BACKENDS = {"openai": OpenAIBackend, "http": HTTPBackend}
#: With Anthropic's Messages API (the simulator's second dialect): the backends the fault, retry and
#: cancellation tests cross.
ALL_BACKENDS = {**BACKENDS, "anthropic": AnthropicBackend}

#: pytester: the kit's pytest plugin is tested from temporary projects.
pytest_plugins = ["pytester"]


@pytest.fixture(params=sorted(BACKENDS))
def backend_kind(request: pytest.FixtureRequest) -> str:
    """Each test using it runs once per backend of OpenAI's protocol."""
    kind: str = request.param
    return kind


@pytest.fixture(params=sorted(ALL_BACKENDS))
def any_backend_kind(request: pytest.FixtureRequest) -> str:
    """Each test using it runs once per backend, Anthropic's included."""
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
        backend = ALL_BACKENDS[kind](base_url=server.url, api_key=server.api_key, model="sim-small")
        async with Orchestrator(backend, **orchestrator) as orch:
            yield orch, server


@pytest.fixture
def orch_factory() -> Callable[..., Any]:
    return orchestrated


async def settled(server: sim.SimServer, *, within_s: float = 3.0) -> dict[str, Any]:
    """The server's stats once it has had nothing in flight on two checks 10 ms apart, or after
    ``within_s``.  One check is not enough: a request the client sent just before closing may be
    counted a turn later.  The sleeps also let the SDK's abandoned stream iterators close (the loop's
    async-generator finalizer does that in tasks that end within a turn)."""
    quiet = 0
    for _ in range(round(within_s / 0.01)):
        quiet = quiet + 1 if server.stats()["in_flight"] == 0 else 0
        if quiet == 2:
            break
        await asyncio.sleep(0.01)
    return server.stats()


#: Tasks of the simulator sharing this loop: its request handlers and asyncio accepting its connections.
SERVER_TASKS = ("RequestHandler", "LeanConnection", "_accept_connection")


def client_tasks() -> set[asyncio.Task[Any]]:
    """Pending tasks, less the simulator's own (a client never accepts connections)."""
    return {
        t
        for t in asyncio.all_tasks()
        if not any(name in getattr(t.get_coro(), "__qualname__", "") for name in SERVER_TASKS)
    }


def _policy_loop() -> asyncio.AbstractEventLoop | None:
    """The loop set on the main thread's policy, without creating one (a private slot of the
    default policy; None under another policy)."""
    local = getattr(asyncio.get_event_loop_policy(), "_local", None)
    return getattr(local, "_loop", None)


@pytest.fixture(autouse=True)
def close_loops_made_for_sync_tests(request: pytest.FixtureRequest) -> Any:
    """looptime's pytest plugin asks the event-loop policy for the loop of every test, sync ones too,
    which makes the policy create a default loop in the main thread that nobody closes; when the next
    async test replaces it, it is garbage-collected and pytest reports "unclosed event loop" against
    whichever test runs then.  Close a loop that appeared during a sync test."""
    before = _policy_loop()
    yield
    loop = _policy_loop()
    if inspect.iscoroutinefunction(request.function) or loop is None or loop is before:
        return
    if not loop.is_running() and not loop.is_closed():
        loop.close()
        asyncio.set_event_loop(None)


# -- kept equals measured: a loaded run against the live one ---------------------------------
def _same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to NaN (inside tuples too)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _row(result: QueryResult) -> dict[str, Any]:
    """Everything a row carries, errors as what a user reads of them."""
    error = result.error
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.name != "error"}
    fields["error"] = (
        None if error is None else (error.kind, error.message, error.status, getattr(error, "retry_after_s", None))
    )
    return fields


def assert_same_run(loaded: RunResult, live: RunResult) -> None:
    """``loaded`` equals ``live`` field by field: rows, metrics, mode, warnings, cancelled, segments, flags, prices."""
    assert len(loaded.results) == len(live.results)
    for kept, measured in zip(loaded.results, live.results, strict=True):
        differ = {k: (v, _row(measured)[k]) for k, v in _row(kept).items() if not _same(v, _row(measured)[k])}
        assert not differ, f"row {measured.index} ({measured.name}) differs: {differ}"
    for field in dataclasses.fields(live.metrics):
        kept, measured = getattr(loaded.metrics, field.name), getattr(live.metrics, field.name)
        assert _same(kept, measured), f"metrics.{field.name}: stored {kept!r}, live {measured!r}"
    assert (loaded.mode, loaded.warnings, loaded.cancelled, loaded.segments, loaded.flags, loaded.prices) == (
        live.mode,
        live.warnings,
        live.cancelled,
        live.segments,
        live.flags,
        live.prices,
    )
    assert loaded.summary() == live.summary()
