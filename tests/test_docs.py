"""The README and every page under docs/ work as typed.

- Each fenced ``python`` block runs, in order, in one fresh Jupyter kernel per page (top-level
  ``await`` works there as in a notebook), in an empty folder, so a snippet that drifts from the
  kit, or that uses a name no earlier block defined, fails the suite.
- Each fenced ``bash`` block runs in the repository (this suite runs in a fresh clone's venv
  under ``make test``); the only change made is its port (a free one instead of 8000), so
  parallel runs cannot collide.
- A block marked with a ``<!-- not run by tests/test_docs.py: why -->`` line right above it is
  left out (it needs a real endpoint, or serves until Ctrl-C); the README's install section is run
  by its own test, in a clean virtualenv and a home folder of its own.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

#: Kernels, subprocesses and a virtualenv: left out of `make test-fast`.
pytestmark = pytest.mark.heavy

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP_MARK = "<!-- not run by tests/test_docs.py"
INSTALL_MARK = f"{SKIP_MARK}: the install section, run by test_the_install_section_and_hello_world"


def blocks(page: Path, language: str, *, marked: bool = False) -> list[tuple[int, str]]:
    """(line number, text) of each fenced block in ``language``: those meant to be run, or with
    ``marked`` those marked not to be."""
    lines = page.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        if lines[i].strip() == f"```{language}":
            end = lines.index("```", i + 1)
            skipped = i > 0 and lines[i - 1].startswith(SKIP_MARK)
            if skipped == marked:
                found.append((i + 1, "\n".join(lines[i + 1 : end])))
            i = end
        i += 1
    return found


def test_every_link_between_pages_leads_somewhere() -> None:
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_the_readme_is_a_front_door() -> None:
    """Short enough to read in one sitting: the detail lives in docs/."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    first_heading = readme.index("\n## ")
    assert "make demo" not in readme[:first_heading]  # what it is for comes first, the set-up after
    for topic in ("durable-runs", "lab", "benchmarks", "virtual-time", "scale-out", "viewer", "regression-testing",
                  "simulator", "migrating", "workloads"):  # fmt: skip
        assert f"(docs/{topic}.md)" in readme, topic


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_page_has_runnable_blocks_and_every_skip_says_why() -> None:
    for page in PAGES:
        text = page.read_text()
        assert text.count("```python") + text.count("```bash") == len(blocks(page, "python")) + len(
            blocks(page, "bash")
        ) + text.count(SKIP_MARK), f"{page.name}: a block marked not to run is not right below its mark"
        for line in text.splitlines():
            if line.startswith(SKIP_MARK):
                assert re.match(rf"{re.escape(SKIP_MARK)}: \S.* -->$", line), f"{page.name}: a skip without a why"
    assert blocks(ROOT / "README.md", "python") and blocks(ROOT / "README.md", "bash")


@pytest.mark.timeout(600)  # a kernel and every block of a page: longer than a unit test on a busy machine
@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "python")], ids=lambda p: p.name)
def test_a_page_s_python_blocks_run_in_order_in_one_fresh_kernel(page: Path, tmp_path: Path) -> None:
    runnable = blocks(page, "python")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(text) for _, text in runnable])
    client = NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": tmp_path}})
    try:
        client.execute()
    except CellExecutionError as error:
        ran = sum(1 for cell in notebook.cells if cell.get("execution_count"))
        line = runnable[max(0, ran - 1)][0]
        pytest.fail(f"{page.name}: the python block at line {line} failed:\n{error}")


def shell_cases() -> list[tuple[Path, int, str]]:
    return [(page, line, text) for page in PAGES for line, text in blocks(page, "bash")]


@pytest.mark.parametrize(
    ("page", "line", "block"), shell_cases(), ids=[f"{p.name}-line{n}" for p, n, _ in shell_cases()]
)
def test_a_shell_block_runs_as_typed(page: Path, line: int, block: str) -> None:
    script = re.sub(r"\b8000\b", str(free_port()), block)
    done = subprocess.run(
        ["bash", "-e", "-c", "set -m\n" + script], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, f"{page.name}: the block at line {line} failed:\n{done.stdout}\n{done.stderr}"
    if "chat/completions" in block:
        assert '"object":"chat.completion"' in done.stdout.replace(" ", "")


@pytest.mark.timeout(900)  # a virtualenv and an install from the package index: minutes on a busy machine
def test_the_install_section_and_hello_world_work_in_a_clean_environment(tmp_path: Path) -> None:
    """The README's install block, as typed, in a home folder of its own (so ``~/...`` and the
    ``--user`` kernel land there), then its hello world in the environment it made."""
    readme = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(readme) if line.startswith(INSTALL_MARK)) + 2
    install = "\n".join(readme[start : readme.index("```", start)])
    cache = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True).stdout
    env = {**os.environ, "HOME": str(tmp_path), "PIP_CACHE_DIR": cache.strip() or str(tmp_path / "pip")}
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run(["bash", "-e", "-c", install], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"the install section failed:\n{done.stdout}\n{done.stderr}"
    assert (tmp_path / ".local/share/jupyter/kernels/hybrid/kernel.json").exists()
    hello = blocks(ROOT / "README.md", "python")[0][1]
    # python -m asyncio's way of running a block with top-level await, as a notebook cell does
    runner = (
        "import ast, asyncio, sys\n"
        "code = compile(sys.stdin.read(), 'hello world', 'exec', flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)\n"
        "result = eval(code, {})\n"
        "if result is not None:\n"
        "    asyncio.run(result)\n"
    )
    python = tmp_path / "hybrid-env/bin/python"
    said = subprocess.run(
        [python, "-c", runner], input=hello, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert said.returncode == 0, said.stderr
    assert "20/20 ok" in said.stdout and "Simulated echo: What is 3 + 3?" in said.stdout, said.stdout
