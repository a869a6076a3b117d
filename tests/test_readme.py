"""The README's shell blocks work as typed: each fenced ``bash`` block is run in the repository
(this suite runs in a fresh clone's venv under ``make test``), except those marked with a
``<!-- not run by tests/test_readme.py: why -->`` line right above them.  The only change made to
a block is its port (a free one instead of 8000), so parallel runs cannot collide."""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import pytest

#: Kernels, subprocesses or nbval: left out of `make test-fast`.
pytestmark = pytest.mark.heavy

ROOT = Path(__file__).resolve().parent.parent
SKIP_MARK = "<!-- not run by tests/test_readme.py"


def shell_blocks() -> list[tuple[int, str]]:
    """(line number, text) of each fenced bash block meant to be run."""
    lines = (ROOT / "README.md").read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            start = i
            end = lines.index("```", i + 1)
            if not (start > 0 and lines[start - 1].startswith(SKIP_MARK)):
                blocks.append((start + 1, "\n".join(lines[start + 1 : end])))
            i = end
        i += 1
    return blocks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_readme_has_runnable_blocks_and_marks_the_others() -> None:
    text = (ROOT / "README.md").read_text()
    assert text.count("```bash") == len(shell_blocks()) + text.count(SKIP_MARK)
    assert shell_blocks(), "no shell block left to check"


@pytest.mark.parametrize(
    ("line", "block"), shell_blocks(), ids=lambda value: f"line{value}" if isinstance(value, int) else ""
)
def test_a_readme_shell_block_runs_as_typed(line: int, block: str) -> None:
    script = re.sub(r"\b8000\b", str(free_port()), block)
    done = subprocess.run(
        ["bash", "-e", "-c", "set -m\n" + script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"README block at line {line} failed:\n{done.stdout}\n{done.stderr}"
    if "chat/completions" in block:
        assert '"object":"chat.completion"' in done.stdout.replace(" ", "")
