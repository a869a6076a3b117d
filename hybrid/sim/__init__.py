"""The embedded OpenAI-compatible simulator: a real HTTP server for offline, deterministic runs,
or the same server in-process (``sim.backend``), which also runs on a virtual clock.

>>> async with sim.serve(sim.SimConfig(seed=7)) as server:
...     backend = OpenAIBackend(base_url=server.url, api_key=server.api_key, model="sim-small")
>>> backend = sim.backend(sim.SimConfig(seed=7))  # no sockets

The simulator is a server and imports nothing of the client side; ``backend`` is the one place
the two meet: it builds a :class:`Simulator` and hands it to the in-process client,
:class:`~hybrid.backends.in_process.SimBackend` (the kit's HTTP codec over an in-process transport).
"""

from hybrid.backends.in_process import SimBackend
from hybrid.sim.batch_protocol import BatchService
from hybrid.sim.config import PROFILES, Faults, ModelProfile, Script, SimConfig
from hybrid.sim.openai_protocol import Simulator
from hybrid.sim.serve import SimServer, new_api_key, serve, serve_in_thread, serve_process


def backend(config: SimConfig | None = None, *, model: str = "sim-small") -> SimBackend:
    """The simulator in this process, no sockets: ``Orchestrator(sim.backend(SimConfig(seed=7)))``.
    Each call is a new server, with its own engine, rate windows and Batch API."""
    simulator = Simulator(config or SimConfig())
    return SimBackend(simulator, BatchService(simulator), model=model)


__all__ = [
    "PROFILES",
    "Faults",
    "ModelProfile",
    "Script",
    "SimBackend",
    "SimConfig",
    "SimServer",
    "Simulator",
    "backend",
    "new_api_key",
    "serve",
    "serve_in_thread",
    "serve_process",
]
