"""The kit against what a user would write by hand, on the same workload: raw ``AsyncOpenAI`` +
gather on either transport, a raw aiohttp loop, a thread pool over the sync SDK, ``langchain-openai``.

Peers are measured alternately within each repeat, so drift on a shared machine hits them all
alike.  Calls per second count *answered* calls only: a peer that fails fast must not rank fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import aiohttp
import httpx2
import openai
import orjson
import pandas as pd

from hybrid.backends import HTTPBackend, OpenAIBackend
from hybrid.orchestrator import Orchestrator
from hybrid.query import Query

PeerRunner = Callable[[str, str, str, Sequence[Query], int], Awaitable[int]]


async def _peer_kit(
    backend_cls: type[OpenAIBackend | HTTPBackend], url: str, key: str, model: str, queries: Sequence[Query], c: int
) -> int:
    async with Orchestrator(
        backend_cls(base_url=url, api_key=key, model=model), max_concurrency=c, timeout=None
    ) as orch:
        run = await orch.run(queries, raise_if_all_failed=False)
    return run.metrics.succeeded


#: A hand-written client's call for one query: True when the server answered.
HandCall = Callable[[Query], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class HandRun:
    """One batch through a hand-written loop: answers, wall, and each answered query's latency
    (timed inside the semaphore, so without its wait for a slot, as the kit times ``latency_s``)."""

    succeeded: int
    wall_s: float
    latencies: list[float]


async def by_hand(call: HandCall, queries: Sequence[Query], c: int) -> HandRun:
    """What a user writes by hand around a client: a semaphore of ``c`` and ``gather``."""
    semaphore = asyncio.Semaphore(c)
    clock = asyncio.get_running_loop().time

    async def one(q: Query) -> float | None:
        async with semaphore:
            t0 = clock()
            answered = await call(q)
            return clock() - t0 if answered else None

    start = clock()
    results = await asyncio.gather(*(one(q) for q in queries), return_exceptions=True)
    wall = clock() - start
    latencies = [r for r in results if isinstance(r, float)]
    return HandRun(succeeded=len(latencies), wall_s=wall, latencies=latencies)


@contextlib.asynccontextmanager
async def raw_openai(url: str, key: str, model: str, *, aio: bool) -> AsyncIterator[HandCall]:
    """One ``AsyncOpenAI`` as a user makes it (httpx transport, or the SDK's aiohttp one)."""
    http_client = openai.DefaultAioHttpClient() if aio else None
    async with openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, http_client=http_client) as client:

        async def call(q: Query) -> bool:
            await client.chat.completions.create(model=model, messages=q.messages())  # type: ignore[arg-type]
            return True

        yield call


@contextlib.asynccontextmanager
async def raw_aiohttp(url: str, key: str, model: str, c: int) -> AsyncIterator[HandCall]:
    """The floor: bare aiohttp POSTs on one session, no parsing beyond reading the body."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c), headers=headers) as session:

        async def call(q: Query) -> bool:
            body = orjson.dumps({"model": model, "messages": q.messages()})
            async with session.post(url + "/chat/completions", data=body) as response:
                await response.read()
                return response.status == 200

        yield call


async def _peer_raw_openai(url: str, key: str, model: str, queries: Sequence[Query], c: int, *, aio: bool) -> int:
    async with raw_openai(url, key, model, aio=aio) as call:
        return (await by_hand(call, queries, c)).succeeded


async def _peer_raw_aiohttp(url: str, key: str, model: str, queries: Sequence[Query], c: int) -> int:
    async with raw_aiohttp(url, key, model, c) as call:
        return (await by_hand(call, queries, c)).succeeded


def _threads_blocking(url: str, key: str, model: str, queries: Sequence[Query], c: int) -> int:
    limits = httpx2.Limits(max_connections=c, max_keepalive_connections=c)
    with openai.OpenAI(
        base_url=url, api_key=key, max_retries=0, http_client=openai.DefaultHttpxClient(limits=limits)
    ) as client:

        def one(q: Query) -> bool:
            try:
                client.chat.completions.create(model=model, messages=q.messages())  # type: ignore[arg-type]
            except openai.OpenAIError:
                return False
            return True

        with ThreadPoolExecutor(max_workers=c) as pool:
            return sum(pool.map(one, queries))


async def _peer_threads(url: str, key: str, model: str, queries: Sequence[Query], c: int) -> int:
    """The seeds' legacy pattern: ThreadPoolExecutor over the sync SDK (run off the loop)."""
    return await asyncio.to_thread(_threads_blocking, url, key, model, queries, c)


async def _peer_langchain(url: str, key: str, model: str, queries: Sequence[Query], c: int) -> int:
    from langchain_openai import ChatOpenAI

    # A client of its own, closed here: ChatOpenAI otherwise shares one cached HTTP client between
    # instances and never closes it, and closing that shared one broke every later repeat.
    http_client = openai.DefaultAsyncHttpxClient()
    llm = ChatOpenAI(base_url=url, api_key=key, model=model, max_retries=0, http_async_client=http_client)  # type: ignore[arg-type]
    try:
        replies = await llm.abatch([q.prompt for q in queries], config={"max_concurrency": c}, return_exceptions=True)
    finally:
        await http_client.aclose()
    return sum(not isinstance(r, BaseException) for r in replies)


def available_peers() -> dict[str, PeerRunner]:
    """The peers this installation can run (``langchain`` only with the ``peers`` extra)."""
    peers: dict[str, PeerRunner] = {
        "kit OpenAIBackend": lambda *a: _peer_kit(OpenAIBackend, *a),
        "kit HTTPBackend": lambda *a: _peer_kit(HTTPBackend, *a),
        "raw AsyncOpenAI (httpx)": lambda *a: _peer_raw_openai(*a, aio=False),
        "raw AsyncOpenAI (aiohttp)": lambda *a: _peer_raw_openai(*a, aio=True),
        "raw aiohttp loop": _peer_raw_aiohttp,
        "threads + sync OpenAI": _peer_threads,
    }
    try:
        import langchain_openai  # noqa: F401
    except ImportError:
        return peers
    peers["langchain ChatOpenAI.abatch"] = _peer_langchain
    return peers


async def peers(
    url: str,
    api_key: str,
    model: str,
    queries: Sequence[Query],
    *,
    concurrency: int = 64,
    repeats: int = 3,
    only: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Every peer on the same workload, alternating, ``repeats`` times; one row per (repeat, peer).

    ``calls_per_s`` (answered calls per second of wall) and client ``cpu_per_call_ms`` come from
    wall time and this process's CPU time (run the server in another process so its CPU is not
    counted).  ``ratio_to_kit`` divides each
    peer's median calls/s by that of ``kit OpenAIBackend``.
    """
    runners = {name: run for name, run in available_peers().items() if only is None or name in only}
    rows = []
    for repeat in range(repeats):
        for name, runner in runners.items():
            clock = asyncio.get_running_loop().time
            wall0, cpu0 = clock(), time.process_time()
            ok = await runner(url, api_key, model, queries, concurrency)
            wall, cpu = clock() - wall0, time.process_time() - cpu0
            rows.append(
                {
                    "peer": name,
                    "repeat": repeat,
                    "queries": len(queries),
                    "succeeded": ok,
                    "wall_s": wall,
                    "calls_per_s": ok / wall if wall > 0 else 0.0,
                    "cpu_per_call_ms": cpu / len(queries) * 1000,
                }
            )
    frame = pd.DataFrame(rows)
    medians = frame.groupby("peer")["calls_per_s"].median()
    reference = medians.get("kit OpenAIBackend", medians.iloc[0])
    frame["ratio_to_kit"] = frame["peer"].map(medians) / reference
    return frame
