"""The simulator's own cost per chat completion, with no socket and no client: for A/B of its code.

A client benchmark's wall rate moves with the machine (this one's timings swing by a fifth between
identical runs), so a change to the simulator is best judged by what it alone costs.  This script
feeds the lean HTTP protocol (``hybrid/sim/lean_http.py``) the exact bytes the kit's HTTPBackend
sends, one distinct prompt per request (``--cached``: one prompt repeated, so the reply is cached),
on a fake transport, on uvloop at time scale 0, and prints the CPU per request (the best of five
runs).  For numbers that do not move at all, count instructions with valgrind: the difference
between two request counts, divided by their difference::

    .venv/bin/python benchmarks/sim_socket_free.py [--requests 20000] [--cached]
    PYTHONHASHSEED=0 valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \\
        .venv/bin/python benchmarks/sim_socket_free.py --requests 300 --once    # then --requests 1300
"""

from __future__ import annotations

import argparse
import asyncio
import time

import uvloop

from hybrid.provenance import machine_info
from hybrid.sim.config import SimConfig
from hybrid.sim.lean_http import LeanConnection
from hybrid.sim.openai_protocol import Simulator


def request(prompt: str) -> bytes:
    """A chat completion exactly as HTTPBackend (aiohttp) sends it to the simulator."""
    body = b'{"model":"sim-small","messages":[{"role":"user","content":"%s"}]}' % prompt.encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
        b"Authorization: Bearer sim-no-key-required\r\nContent-Type: application/json\r\nAccept: */*\r\n"
        b"Accept-Encoding: gzip, deflate\r\nUser-Agent: Python/3.11 aiohttp/3.14.5\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


class CountingTransport(asyncio.Transport):
    """Takes the answers (one ``write`` each at time scale 0) and says when all have been written."""

    def __init__(self, expected: int, done: asyncio.Future[None]) -> None:
        super().__init__()
        self.expected, self.done = expected, done

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.expected -= 1
        if self.expected == 0:
            self.done.set_result(None)

    def is_closing(self) -> bool:
        return False


async def cpu_per_request(prompts: list[str]) -> float:
    """Seconds of CPU per request to answer ``prompts`` on one connection, one after the other."""
    simulator = Simulator(SimConfig(seed=1, time_scale=0.0))
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    connection = LeanConnection(simulator, asyncio.Protocol, set())
    connection.connection_made(CountingTransport(len(prompts), done))
    requests = [request(prompt) for prompt in prompts]
    started = time.process_time()
    for data in requests:
        connection.data_received(data)
        await asyncio.sleep(0)  # let its answer be written, as the loop would between reads
    await done
    return (time.process_time() - started) / len(prompts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--cached", action="store_true", help="one prompt repeated: the reply is cached")
    parser.add_argument("--once", action="store_true", help="one run, no warm-up and no output (for valgrind)")
    args = parser.parse_args()

    def prompts(run: int) -> list[str]:  # distinct across runs, so no run finds another's replies cached
        return [f"Question {1 if args.cached else run * args.requests + i}: one word." for i in range(args.requests)]

    if args.once:
        uvloop.run(cpu_per_request(prompts(0)))
        return
    print(machine_info())
    uvloop.run(cpu_per_request(prompts(0)))  # warm-up
    best = min(uvloop.run(cpu_per_request(prompts(run))) for run in range(1, 6))
    kind = "one prompt repeated (cached)" if args.cached else "distinct prompts"
    print(f"{best * 1e6:.1f} us of CPU per request, {kind}, best of five runs of {args.requests}")


if __name__ == "__main__":
    main()
