"""Memory under an endless response: what one bad endpoint costs the kernel.

A plain aiohttp server on loopback answers every request with a 200 body, an error body or an event
stream that never ends.  Eight such queries run at once on each backend with the default
``max_response_bytes`` (32 MiB) and a 60 s timeout.  Before the cap, the same server grew the client
by 1.4 GB in 2 s and held everything until the timeout; now every query ends as
``invalid_response`` once its response passes the cap.  Printed: the error kinds, the time until
the run returned, and the process's peak RSS growth (sampled) next to the cap x queries bound.

    .venv/bin/python benchmarks/hostile_memory.py
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import Awaitable
from typing import TypeVar

from aiohttp import web

from hybrid import HTTPBackend, OpenAIBackend, Orchestrator, Query, Retry
from hybrid.backends.response_limits import DEFAULT_MAX_RESPONSE_BYTES
from hybrid.provenance import machine_info
from hybrid.testing import chat_server

T = TypeVar("T")
QUERIES = 8
SHAPES = {  # prompt -> (status, content type, endless piece)
    "json": (200, "application/json", b"x" * 65536),
    "error": (500, "application/json", b"x" * 65536),
    "stream": (200, "text/event-stream", b'data: {"choices": [{"delta": {"content": "' + b"x" * 65536 + b'"}}]}\n\n'),
}


async def endless(request: web.Request) -> web.StreamResponse:
    status, content_type, piece = SHAPES[(await request.json())["messages"][-1]["content"]]
    response = web.StreamResponse(status=status, headers={"Content-Type": content_type})
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):
        while True:
            await response.write(piece)
    return response


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


async def peak_growth(work: Awaitable[T]) -> tuple[T, float]:
    """``work``'s result and the most the resident set grew above its start while it ran (sampled every 5 ms)."""
    start = peak = rss_mb()
    task = asyncio.ensure_future(work)
    while not task.done():
        peak = max(peak, rss_mb())
        await asyncio.sleep(0.005)
    return task.result(), peak - start


async def main() -> None:
    print(machine_info())
    bound_mb = QUERIES * DEFAULT_MAX_RESPONSE_BYTES / 2**20
    async with chat_server(endless) as url:
        for backend_type in (HTTPBackend, OpenAIBackend):
            for shape in SHAPES:
                backend = backend_type(base_url=url, api_key="k", model="m")
                queries = [Query(f"q{i}", shape, stream=shape == "stream") for i in range(QUERIES)]
                start = time.perf_counter()
                async with Orchestrator(backend, timeout=60, retry=Retry.never()) as orch:
                    run, grew = await peak_growth(orch.run(queries, raise_if_all_failed=False))
                took = time.perf_counter() - start
                kinds = sorted({r.error.kind if r.error else "ok" for r in run.results})
                print(
                    f"{backend_type.__name__:13} {shape:6}: {kinds} after {took:5.2f} s; "
                    f"peak RSS +{grew:6.1f} MB (bound {QUERIES} x 32 MiB = {bound_mb:.0f} MB)"
                )


if __name__ == "__main__":
    asyncio.run(main())
