"""Servers the kit starts: a port to give a child server process (the simulator's, llama-server, a
benchmark's bare server), stopping one for sure, and which servers run in this very process."""

from __future__ import annotations

import asyncio
import socket

#: Base URLs of servers answering from this very process right now (``sim.serve``,
#: ``sim.serve_in_thread`` register theirs): a run against one of them charges the server's CPU to the
#: client, which the run's ``server_in_process`` flag and the benchmarks' warning say.
IN_PROCESS_URLS: set[str] = set()


def free_port() -> int:
    """A loopback port free right now, for a child server that must be told its port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def stop(process: asyncio.subprocess.Process, *, grace_s: float = 10.0) -> None:
    """SIGTERM, wait up to ``grace_s`` for a clean exit, then SIGKILL; never leaves it running."""
    if process.returncode is not None:
        return
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), grace_s)
    except TimeoutError:
        process.kill()
        await process.wait()
