"""Test doubles for the kit and for your own scenarios: a scripted backend and virtual time.

:class:`FakeBackend` meets the :class:`~hybrid.backends.protocol.Backend` protocol without sockets.
It answers each query from a script, per attempt: an :class:`Answer` (text, usage, a delay), a
:class:`Fail` (any :class:`~hybrid.errors.QueryError`, after a delay) or a :class:`Hang` (never
answers, until the orchestrator's timeout or a cancel).  It records every call with the loop
time it arrived, so a test can assert the exact schedule of attempts.

Virtual time comes from `looptime <https://pypi.org/project/looptime/>`_: mark a test
``@pytest.mark.looptime`` (pytest-asyncio) and its event loop's clock jumps from timer to timer
instead of waiting.  Every timestamp the kit records is the loop's clock, so under looptime a
retry after a 0.2 s backoff happens at exactly t=0.2 and the test takes microseconds::

    @pytest.mark.looptime
    async def test_retries_then_answers():
        backend = FakeBackend({"q": [Fail(ServerError("boom")), Answer("ok", delay=1.0)]})
        async with Orchestrator(backend, retry=Retry(base=0.2, jitter=0)) as orch:
            run = await orch.run([Query("q", "hi")])
        assert backend.times("q") == [0.0, 0.2]
        assert run["q"].latency_s == 1.2

For faults the simulator cannot produce (an endless body, a lying header, a redirect loop),
:func:`chat_server` serves one aiohttp handler of your own as a chat-completions endpoint on
loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from hybrid.errors import ConfigError, QueryError, check_number
from hybrid.query import Completion, Query, QueryResult, ServerReport, Usage
from hybrid.store import Store
from hybrid.tokens import count_message_tokens, count_tokens

__all__ = [
    "Answer",
    "Call",
    "Fail",
    "FakeBackend",
    "Hang",
    "Step",
    "assert_no_regression",
    "chat_server",
    "noisy_backend",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Timed:
    delay: float = 0.0

    def __post_init__(self) -> None:
        check_number(f"{type(self).__name__}(delay=...)", self.delay, minimum=0.0, unit="seconds")


@dataclass(frozen=True, slots=True)
class Answer(_Timed):
    """Answer ``text`` after ``delay`` seconds.  Usage defaults to the kit's token rule (not estimated);
    ``cached_prompt_tokens`` of the prompt are reported as served from the provider's prompt cache;
    ``ttft`` (seconds after the request) is reported for streamed queries; ``server`` is what the
    fake server says about itself (queue, service, rate limits left)."""

    text: str = "ok"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_prompt_tokens: int = 0
    finish_reason: str = "stop"
    ttft: float | None = None
    model: str | None = None
    server: ServerReport | None = None


@dataclass(frozen=True, slots=True)
class Fail(_Timed):
    """Raise ``error`` after ``delay`` seconds."""

    error: QueryError


@dataclass(frozen=True, slots=True)
class Hang:
    """Never answer; the orchestrator's timeout (or a cancel) ends the attempt."""


Step = Answer | Fail | Hang
#: A script: per query name, the steps of its attempts (the last one repeats), or a function of
#: (query, attempt number) that returns the step.
Script = Mapping[str, Step | Sequence[Step]] | Callable[[Query, int], Step]


@dataclass(frozen=True, slots=True)
class Call:
    """One attempt the fake received: which query, which attempt of it, when (loop time), on which client."""

    name: str
    attempt: int
    at: float
    blocking: bool = False


class FakeBackend:
    """A scripted backend (see the module docstring).  Queries not in the script get ``default``."""

    supports_threads = False

    def __init__(self, script: Script | None = None, *, default: Step | None = None, model: str = "fake") -> None:
        if script is not None and not (callable(script) or isinstance(script, Mapping)):
            raise ConfigError("FakeBackend script must be a mapping of query name -> step(s) or a function.")
        self._script = script if script is not None else {}
        self.default: Step = default if default is not None else Answer()
        self.model = model
        self.calls: list[Call] = []
        self.open_count = 0
        self.is_open = False
        self.max_connections: int | None = None
        self.timeout: float | None = None
        self._attempts: defaultdict[str, int] = defaultdict(int)

    def __repr__(self) -> str:
        return f"FakeBackend(model={self.model!r}, calls={len(self.calls)})"

    async def open(self, *, max_connections: int = 100, query_timeout: float | None = None) -> None:
        self.open_count += 1
        self.is_open = True
        self.max_connections, self.timeout = max_connections, query_timeout

    async def aclose(self) -> None:
        self.is_open = False

    def step(self, query: Query, attempt: int) -> Step:
        """The scripted step for attempt number ``attempt`` (1-based) of ``query``."""
        if callable(self._script):
            return self._script(query, attempt)
        steps = self._script.get(query.name, self.default)
        if isinstance(steps, Answer | Fail | Hang):
            return steps
        if not steps:
            return self.default
        return steps[min(attempt, len(steps)) - 1]

    def times(self, name: str) -> list[float]:
        """The loop times at which each attempt of query ``name`` arrived."""
        return [call.at for call in self.calls if call.name == name]

    def attempts(self, name: str) -> int:
        return self._attempts[name]

    async def complete(self, query: Query) -> Completion:
        if not self.is_open:
            raise ConfigError("The backend is not open: use it inside `async with Orchestrator(...)`.")
        loop = asyncio.get_running_loop()
        self._attempts[query.name] += 1
        attempt = self._attempts[query.name]
        self.calls.append(Call(query.name, attempt, loop.time()))
        step = self.step(query, attempt)
        if isinstance(step, Hang):
            await asyncio.Event().wait()
        assert not isinstance(step, Hang)
        if step.delay:
            await asyncio.sleep(step.delay)
        if isinstance(step, Fail):
            raise step.error
        return self._completion(query, step)

    def complete_blocking(self, query: Query) -> Completion:
        raise ConfigError("FakeBackend has no synchronous client; test mode='threads' with the simulator.")

    def _completion(self, query: Query, answer: Answer) -> Completion:
        prompt = answer.prompt_tokens
        completion = answer.completion_tokens
        usage = Usage(
            prompt_tokens=count_message_tokens(query.messages()) if prompt is None else prompt,
            completion_tokens=count_tokens(answer.text) if completion is None else completion,
            cached_prompt_tokens=answer.cached_prompt_tokens,
        )
        ttft = (answer.ttft if answer.ttft is not None else answer.delay) if query.stream else None
        return Completion(
            text=answer.text,
            usage=usage,
            model=answer.model or query.model or self.model,
            finish_reason=answer.finish_reason,
            ttft_s=ttft,
            server=answer.server,
        )


def noisy_backend(pass_rate: float, *, seed: object = 0, right: str = "yes", wrong: str = "no") -> FakeBackend:
    """A model that gets each sample right with probability ``pass_rate``: it answers ``right``
    or ``wrong``, drawn from a generator seeded by ``seed``, the query's name and its sample
    index, so a sample always gets the same answer (as a recording would give it back).  For
    testing gates and sequential tests against a known pass rate."""
    check_number("noisy_backend(pass_rate=...)", pass_rate, minimum=0.0, maximum=1.0)

    def answer(query: Query, attempt: int) -> Answer:
        draw = random.Random(f"{seed}/{query.name}/{query.sample}").random()
        return Answer(right if draw < pass_rate else wrong)

    return FakeBackend(answer)


@contextlib.asynccontextmanager
async def chat_server(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[str]:
    """Serve ``handler`` as ``POST /v1/chat/completions`` on 127.0.0.1 (a free port); yields the base
    URL to give a backend.  A server that misbehaves on purpose, to test what the kit does then."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


def assert_no_regression(baseline: Any, candidate: Any, **options: Any) -> Any:
    """Fail (``AssertionError`` with the comparison table) when ``candidate`` is slower than
    ``baseline`` beyond the tolerance, by :func:`hybrid.bench.compare_runs` (same arguments: runs,
    saved files or store names, ``metric=``, ``tolerance=``, ``level=``, ``store=``); return the
    comparison otherwise.  For a pytest test or an nbval-checked notebook cell that gates on speed.
    """
    from hybrid.bench.comparison import compare_runs

    comparison = compare_runs(baseline, candidate, **options)
    if comparison.regression:
        raise AssertionError(f"Performance regression.\n{comparison}")
    return comparison


def write_large_run(store: Store, name: str, *, rows: int, text_bytes: int) -> None:
    """A finished run of ``rows`` distinct answers of ``text_bytes`` each, written straight into
    ``store`` (no server, no orchestrator): for testing what reads runs (the viewer, exports) at
    sizes no test would ask a model for.  Rows go to the store as they are made, so writing a run
    of any size holds one answer at a time."""
    from hybrid.metrics import RunMetrics
    from hybrid.results import RunResult

    run_id, segment = store.begin_segment(name, mode="gather", settings={}, queries=rows, concurrency=1, resume=False)
    light = []
    for i in range(rows):
        text = f"answer {i} " + "x" * max(0, text_bytes - len(f"answer {i} "))
        result = QueryResult(
            query=Query(f"q{i}", f"question {i}"),
            index=i,
            text=text,
            usage=Usage(prompt_tokens=3, completion_tokens=max(1, text_bytes // 4)),
            model="m",
            latency_s=1.0,
            attempts=1,
            started_s=float(i),
            finished_s=i + 1.0,
        )
        store.record(run_id, segment, result, "m")
        light.append(replace(result, text=None))
        if i % 100 == 99:
            store.flush()  # the writer's queue holds at most a hundred answers
    metrics = RunMetrics.compute(light, wall_s=float(rows), cpu_s=0.0, concurrency=1)
    store.end_segment(run_id, segment, "finished", RunResult(results=tuple(light), metrics=metrics, mode="gather"))
    store.flush()
