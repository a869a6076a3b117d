"""Child server processes (the simulator's, llama-server): stopping them for sure."""

from __future__ import annotations

import asyncio


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
