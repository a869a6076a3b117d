"""What several test modules share: a real Jupyter kernel driven like a front end, the notebook
set-up that interrupts use, and the script of a run in another process that a viewer follows.
Test modules import from here (or from conftest), never from each other."""

from __future__ import annotations

import re
import textwrap
import time
from typing import Any

import jupyter_client


class Kernel:
    """A real ipykernel, driven like a notebook front end."""

    def __init__(self) -> None:
        self.manager, self.client = jupyter_client.manager.start_new_kernel(kernel_name="python3")

    def run(self, code: str, timeout: float = 60.0) -> dict[str, Any]:
        """Execute ``code``; return its status, text output and error name."""
        msg_id = self.client.execute(code)
        return self.collect(msg_id, timeout)

    def collect(self, msg_id: str, timeout: float) -> dict[str, Any]:
        out: dict[str, Any] = {"text": "", "error": None, "traceback": ""}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.client.get_iopub_msg(timeout=deadline - time.monotonic())
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out["text"] += content["text"]
            elif kind in ("execute_result", "display_data"):
                out["text"] += content["data"].get("text/plain", "")
            elif kind == "error":
                out["error"] = content["ename"]
                out["traceback"] = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(content["traceback"]))
            elif kind == "status" and content["execution_state"] == "idle":
                return out
        raise TimeoutError(f"the kernel did not finish {msg_id}")

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


SETUP = """
import asyncio, contextlib, os
os.environ["HYBRID_PROGRESS"] = "0"
from hybrid import Orchestrator, OpenAIBackend, Query, sim
profiles = {"sim-small": sim.ModelProfile(ttft_s=0.05, prompt_tps=1e9, completion_tps=1e9, jitter=0.0),
            "sim-large": sim.ModelProfile(ttft_s=60.0, prompt_tps=1e9, completion_tps=1e9, jitter=0.0)}
stack = contextlib.AsyncExitStack()
server = await stack.enter_async_context(sim.serve(sim.SimConfig(time_scale=1.0, profiles=profiles)))
backend = OpenAIBackend(base_url=server.url, api_key=server.api_key, model="sim-small")
orch = await stack.enter_async_context(Orchestrator(backend, max_concurrency=8, timeout=None))
queries = [Query(f"fast{i}", f"f{i}") for i in range(3)]
queries += [Query(f"slow{i}", f"s{i}", model="sim-large") for i in range(3)]
print("ready")
"""

#: A run in another process, as a second notebook would make it: argv is url, key, store path, n.
LIVE_KERNEL = textwrap.dedent(
    """
    import asyncio, sys
    from hybrid import Orchestrator, OpenAIBackend, Query
    url, key, path, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

    async def main():
        backend = OpenAIBackend(base_url=url, api_key=key, model="sim-small")
        async with Orchestrator(backend, store=path, max_concurrency=4) as orch:
            await orch.run([Query(f"q{i}", f"Question number {i}?", max_tokens=16) for i in range(n)], name="live")

    asyncio.run(main())
    """
)
