"""The sync bridge, and the kit inside a real Jupyter kernel (jupyter_client), interrupts included."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hybrid import run_sync
from hybrid.progress import silenced

pytest.importorskip("jupyter_client", reason="the notebook extra is not installed")
from .helpers import SETUP, Kernel

#: Kernels, subprocesses or nbval: left out of `make test-fast`.
pytestmark = pytest.mark.heavy


async def _answer() -> int:
    await asyncio.sleep(0.01)
    return 42


async def _fail() -> None:
    raise ValueError("boom")


def in_plain_thread(call: Any) -> Any:
    """``call()`` in a fresh thread with no event loop, like a script's main thread.  (In pytest's own
    main thread, pytest-asyncio's loop bookkeeping around an ``asyncio.run`` leaks a loop of its own.)"""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_run_sync_without_a_loop() -> None:
    assert in_plain_thread(lambda: run_sync(_answer())) == 42


async def test_run_sync_inside_a_running_loop_uses_a_worker_thread() -> None:
    caller = threading.get_ident()

    async def which_thread() -> int:
        return threading.get_ident()

    assert run_sync(which_thread()) != caller


def test_run_sync_errors_propagate() -> None:
    with pytest.raises(ValueError, match="boom"):
        in_plain_thread(lambda: run_sync(_fail()))


def test_progress_is_off_under_ci(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from hybrid import progress

    monkeypatch.setenv("CI", "true")
    assert silenced()
    with progress.bar(3, "q", requested=True) as bar:
        assert bar is None
    monkeypatch.delenv("CI")
    monkeypatch.setenv("HYBRID_PROGRESS", "1")
    assert not silenced()
    with progress.bar(3, "hybrid gather", requested=True) as bar:
        for _ in range(3):
            progress.tick(bar)
    assert "3/3" in capsys.readouterr().err  # the text fallback outside a notebook


@pytest.fixture
def kernel() -> Iterator[Kernel]:
    k = Kernel()
    yield k
    k.close()


def test_top_level_await_in_a_real_kernel(kernel: Kernel) -> None:
    assert kernel.run(SETUP)["text"].strip() == "ready"
    result = kernel.run("run = await orch.run(queries[:3]); print(run.metrics.succeeded, len(run.to_frame()))")
    assert result["error"] is None and result["text"].strip() == "3 3"
    bridged = kernel.run("from hybrid import run_sync\nprint(run_sync(asyncio.sleep(0.01, result='bridged')))")
    assert bridged["text"].strip() == "bridged"


def test_interrupt_keeps_the_kernel_and_the_finished_results(kernel: Kernel) -> None:
    kernel.run(SETUP)
    msg_id = kernel.client.execute("run = await orch.run(queries)")
    time.sleep(1.5)  # the fast queries finish, the slow ones are in flight for a minute
    kernel.manager.interrupt_kernel()
    interrupted = kernel.collect(msg_id, timeout=30)
    assert interrupted["error"] in ("KeyboardInterrupt", "CancelledError")
    # The kit's line comes first (stderr, before the traceback), names what was kept and where
    # without guessing the user's variable name; the traceback has no TaskGroup or kit internals.
    assert interrupted["text"].startswith(
        "hybrid: the run was interrupted; 3 of 6 queries had finished. Their results are on the orchestrator's "
        "last_run."
    )
    assert "TaskGroup" not in interrupted["traceback"] and "strategies.py" not in interrupted["traceback"]
    assert len(interrupted["traceback"].splitlines()) < 25, interrupted["traceback"]
    check = kernel.run(
        "await asyncio.sleep(0.2)\n"
        "print(orch.last_run.cancelled, [r.ok for r in orch.last_run.results], server.stats()['in_flight'])"
    )
    assert check["error"] is None
    assert check["text"].strip() == "True [True, True, True, False, False, False] 0"
    again = kernel.run("print((await orch.run(queries[:2])).metrics.succeeded)")
    assert again["text"].strip() == "2"


def test_progress_bars_are_on_in_a_watched_kernel_and_off_headless_and_in_scripts(kernel: Kernel) -> None:
    """``progress="auto"``: a front end that can answer input() (JupyterLab, Notebook, VS Code, and
    jupyter_client's default) gets the bar; a headless runner's requests (nbval, nbclient,
    papermill send allow_stdin=false) get none; a script gets none."""
    from hybrid.progress import wanted

    assert wanted("auto") is False  # this test process is not a kernel
    inside = kernel.run("from hybrid.progress import wanted\nprint(wanted('auto'), wanted(False))")
    assert inside["text"].strip() == "True False"
    headless = kernel.collect(kernel.client.execute("print(wanted('auto'))", allow_stdin=False), timeout=60)
    assert headless["text"].strip() == "False"


async def test_a_notebook_run_by_nbclient_shows_no_bar_without_any_setting(tmp_path: Path) -> None:
    """What nbval and papermill do: execute a notebook with nbclient; a run's cell output is the
    answer only, no widget and no bar text, with no environment variable set."""
    import nbclient
    import nbformat

    cells = [
        "from hybrid import Orchestrator, Query\nfrom hybrid.testing import FakeBackend\n"
        "async with Orchestrator(FakeBackend()) as orch:\n    run = await orch.run([Query('q', 'hello')])\n"
        "print(run.results[0].text)"
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    env = {k: v for k, v in os.environ.items() if k not in ("HYBRID_PROGRESS", "CI")}
    client = nbclient.NotebookClient(notebook, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    await client.async_execute(env=env)
    outputs = notebook.cells[0].outputs
    assert [o.get("text") for o in outputs] == ["ok\n"], outputs


def test_enable_nested_lets_legacy_asyncio_run_work_in_a_kernel(kernel: Kernel) -> None:
    without = kernel.run("import asyncio\nasyncio.run(asyncio.sleep(0))")
    assert without["error"] == "RuntimeError"
    nested = kernel.run(
        "from hybrid.notebook import enable_nested\nenable_nested()\n"
        "print(asyncio.run(asyncio.sleep(0, result='nested ok')))"
    )
    assert nested["error"] is None and nested["text"].strip() == "nested ok"


def test_an_interrupted_run_resumes_from_the_store_in_a_real_kernel(kernel: Kernel, tmp_path: Path) -> None:
    """Interrupt a stored run mid-way: the finished rows are on disk, and a resumed run sends only the rest."""
    kernel.run(SETUP)
    kernel.run(
        "from hybrid import Store\n"
        f"store = Store({str(tmp_path / 'runs.sqlite')!r})\n"
        "stored = await stack.enter_async_context(Orchestrator(backend, store=store, timeout=None))"
    )
    msg_id = kernel.client.execute("run = await stored.run(queries, name='interrupted')")
    time.sleep(1.5)  # the fast queries finish, the slow ones are in flight for a minute
    kernel.manager.interrupt_kernel()
    assert kernel.collect(msg_id, timeout=30)["error"] in ("KeyboardInterrupt", "CancelledError")
    resumed = kernel.run(
        "fast = {name: sim.ModelProfile(ttft_s=0.01, prompt_tps=1e9, completion_tps=1e9) for name in profiles}\n"
        "quick = await stack.enter_async_context(sim.serve(sim.SimConfig(profiles=fast)))\n"
        "again = OpenAIBackend(base_url=quick.url, api_key=quick.api_key, model='sim-small')\n"
        "async with Orchestrator(again, store=store) as o:\n"
        "    done = await o.run(queries, name='interrupted', resume=True)\n"
        "print([r.origin for r in done.results], quick.stats()['requests'], store.load('interrupted').ok)"
    )
    assert resumed["error"] is None, resumed
    assert resumed["text"].strip() == "['resumed', 'resumed', 'resumed', 'sent', 'sent', 'sent'] 3 True"
