"""Three ways to run the simulator: in the caller's loop, in a background thread, in its own process.

* :func:`serve` — ``async with sim.serve(config) as server`` in the running loop: what tests and
  notebooks use; the cheapest, and ``server.stats()`` reads the live counters.
* :func:`serve_in_thread` — a plain ``with`` block that runs the server on its own loop in a daemon
  thread, for synchronous code (scripts, the threads baseline) that has no loop to share.
* :func:`serve_process` — ``async with`` a child ``hybrid sim`` process, for benchmarks: the
  simulator's CPU is then not charged to the client being measured.

The thread and process runners start their own event loops; that is the simulator running a
server, not the library bridging a call, which the design allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
import tempfile
import threading
import urllib.request
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from hybrid.errors import HybridError
from hybrid.process import IN_PROCESS_URLS, stop
from hybrid.sim.batch_protocol import BatchService
from hybrid.sim.config import SimConfig
from hybrid.sim.lean_http import LeanConnection, close_all
from hybrid.sim.openai_protocol import Simulator

LOOPBACK = ("127.0.0.1", "localhost", "::1")
_PLACEHOLDER_KEY = "sim-no-key-required"


@dataclass(frozen=True, slots=True, kw_only=True)
class SimServer:
    """A running simulator.  ``url`` is the OpenAI base URL (``.../v1``), ``api_key`` the key to send,
    ``pid`` the server's process when it runs in its own (:func:`serve_process`); ``batches`` its
    Batch API (files and batches) when it runs in this process."""

    url: str
    root: str
    api_key: str = field(repr=False)
    simulator: Simulator | None = field(default=None, repr=False)
    batches: BatchService | None = field(default=None, repr=False)
    pid: int | None = None

    def stats(self) -> dict[str, Any]:
        """Requests seen, in flight now, peak in flight, counts by status, disconnects, injected faults.

        For a server in this process the counters are read directly; for one in another process
        this is a short blocking GET on loopback (use :meth:`fetch_stats` inside a busy loop).
        """
        if self.simulator is not None:
            return self.simulator.stats()
        with urllib.request.urlopen(self.root + "/sim/stats", timeout=10) as response:
            data: dict[str, Any] = json.load(response)
            return data

    async def fetch_stats(self) -> dict[str, Any]:
        """Like :meth:`stats`, without blocking the event loop for an out-of-process server."""
        if self.simulator is not None:
            return self.simulator.stats()
        import aiohttp

        async with aiohttp.ClientSession() as session, session.get(self.root + "/sim/stats") as response:
            data: dict[str, Any] = await response.json()
            return data


def _warn_if_exposed(host: str) -> None:
    if host not in LOOPBACK:
        warnings.warn(
            f"The simulator is binding {host!r}, reachable from other machines. It is a test server: "
            "bind 127.0.0.1 unless you mean it, and set an api_key.",
            stacklevel=3,
        )


@contextlib.asynccontextmanager
async def serve(config: SimConfig | None = None) -> AsyncIterator[SimServer]:
    """Serve the simulator in the running event loop until the block exits."""
    config = config or SimConfig()
    _warn_if_exposed(config.host)
    simulator = Simulator(config)
    batches = BatchService(simulator)
    app = simulator.app()
    batches.add_routes(app)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    aiohttp_server = runner.server
    assert aiohttp_server is not None
    # Chat completions are answered by the lean protocol; it hands any other request's connection
    # to aiohttp (hybrid/sim/lean_http.py says why).
    lean: set[LeanConnection] = set()
    simulator.engine.open_connections = lambda: len(lean) + len(aiohttp_server.connections)
    try:
        listener = await asyncio.get_running_loop().create_server(
            lambda: LeanConnection(simulator, aiohttp_server, lean), config.host, config.port, backlog=4096
        )
        host, port = listener.sockets[0].getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        root = f"http://{host}:{port}"
        IN_PROCESS_URLS.add(root + "/v1")
        try:
            yield SimServer(
                url=root + "/v1",
                root=root,
                api_key=config.api_key or _PLACEHOLDER_KEY,
                simulator=simulator,
                batches=batches,
            )
        finally:
            IN_PROCESS_URLS.discard(root + "/v1")
            listener.close()
            await close_all(lean)
            await listener.wait_closed()
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def serve_in_thread(config: SimConfig | None = None, *, start_timeout: float = 10.0) -> Iterator[SimServer]:
    """Serve the simulator on its own loop in a daemon thread, for synchronous callers."""
    ready = threading.Event()
    state: dict[str, Any] = {}
    lock = threading.Lock()

    async def main() -> None:
        with lock:
            if state.get("abandoned"):  # the caller gave up before the loop even started
                return
            state["loop"], state["task"] = asyncio.get_running_loop(), asyncio.current_task()
        try:
            async with serve(config) as server:
                state["server"] = server
                ready.set()
                await asyncio.Event().wait()  # until shut_down cancels this task
        except asyncio.CancelledError:
            pass
        except BaseException as exc:
            state["error"] = exc
            ready.set()
            raise

    def shut_down() -> None:
        """Cancel the server's task, wherever it is (starting up or serving), and join the thread."""
        with lock:
            state["abandoned"] = True
            if "task" in state:
                state["loop"].call_soon_threadsafe(state["task"].cancel)
        thread.join(timeout=10)

    thread = threading.Thread(target=lambda: asyncio.run(main()), name="hybrid-sim", daemon=True)
    thread.start()
    if not ready.wait(start_timeout) or "error" in state:
        shut_down()
        raise HybridError(f"The simulator thread did not start: {state.get('error', 'timed out')}")
    try:
        yield state["server"]
    finally:
        shut_down()


@contextlib.asynccontextmanager
async def serve_process(
    config: SimConfig | None = None, *, start_timeout: float = 30.0, uvloop: bool = False
) -> AsyncIterator[SimServer]:
    """Run ``hybrid sim`` as a child process with ``config``; stop it when the block exits.

    The config travels as a JSON file; the API key (if any) through the environment, never argv.
    ``uvloop=True`` runs the child on uvloop (``hybrid sim --uvloop``; the ``fast`` extra).
    """
    config = config or SimConfig()
    _warn_if_exposed(config.host)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(config.to_dict(), handle)
        path = handle.name
    env = dict(os.environ)
    env.pop("HYBRID_SIM_API_KEY", None)
    if config.api_key is not None:
        env["HYBRID_SIM_API_KEY"] = config.api_key
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hybrid",
        "sim",
        "--config",
        path,
        "--quiet",
        *(["--uvloop"] if uvloop else []),
        stdout=asyncio.subprocess.PIPE,
        stderr=None,
        env=env,
    )
    try:
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), start_timeout)
        except TimeoutError:
            raise HybridError("The simulator process did not report its address in time.") from None
        text = line.decode().strip()
        if not text.startswith("http"):
            raise HybridError(f"The simulator process failed to start (it printed {text!r}).")
        root = text.removesuffix("/v1")
        yield SimServer(url=root + "/v1", root=root, api_key=config.api_key or _PLACEHOLDER_KEY, pid=process.pid)
    finally:
        await stop(process, grace_s=10.0)
        os.unlink(path)


def new_api_key() -> str:
    """A random key for a simulator that should enforce one."""
    return "sk-sim-" + secrets.token_hex(16)
