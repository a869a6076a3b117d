"""The embedded OpenAI-compatible simulator: a real HTTP server for offline, deterministic runs,
or the same server in-process (``sim.backend``), which also runs on a virtual clock.

>>> async with sim.serve(sim.SimConfig(seed=7)) as server:
...     backend = OpenAIBackend(base_url=server.url, api_key=server.api_key, model="sim-small")
>>> backend = sim.backend(sim.SimConfig(seed=7))  # no sockets
"""

from hybrid.sim.config import PROFILES, Faults, ModelProfile, Script, SimConfig
from hybrid.sim.in_process import SimBackend, backend
from hybrid.sim.openai_protocol import Simulator
from hybrid.sim.serve import SimServer, new_api_key, serve, serve_in_thread, serve_process

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
