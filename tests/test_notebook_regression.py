"""Notebooks as regression tests: a scheduling bug must fail a checked cell under nbval.

The quickstart notebook's virtual-time cells (section 5) are ``NBVAL_CHECK_OUTPUT``: their timings
are the latency model's, exact on every machine.  Here a deliberate bug is planted in the kernel
through ``sitecustomize`` (gather's workers wait for each other, so nothing overlaps), and nbval
must fail exactly those cells, with everything else (texts, tokens, error kinds) still passing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

#: Kernels, subprocesses or nbval: left out of `make test-fast`.
pytestmark = pytest.mark.heavy

ROOT = Path(__file__).resolve().parent.parent

WORKERS_WAIT_FOR_EACH_OTHER = """
import asyncio
import hybrid.strategies as strategies

_fan_out = strategies.Gather.fan_out

async def fan_out(self, items, run_one, limit):
    lock = asyncio.Lock()
    async def waiting_for_each_other(index, query):
        async with lock:
            await run_one(index, query)
    await _fan_out(self, items, waiting_for_each_other, limit)

strategies.Gather.fan_out = fan_out
"""


@pytest.mark.timeout(300)
def test_a_scheduling_bug_fails_the_checked_timing_cells_of_the_quickstart(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(WORKERS_WAIT_FOR_EACH_OTHER)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "HYBRID_PROGRESS": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
         "--nbval-sanitize-with", "notebooks/sanitize.cfg", "-o", "addopts=", "-q",
         "notebooks/01_quickstart.ipynb"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
    assert done.returncode == 1, done.stdout[-3000:]
    assert len(failed) == 2, done.stdout[-3000:]
    assert "finished_s" in done.stdout and "parallel_efficiency" in done.stdout  # the two timing cells
