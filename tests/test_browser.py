"""What a user sees, in a real browser: the live viewer, and the kit inside JupyterLab.

Playwright (from PyPI) drives the system's Chromium in headless mode; ``make test-browser`` installs
both.  Screenshots of every check land in ``out/browser/``.  JupyterLab runs as a child process on a
free port with a token, on a copy of the notebooks, with progress bars left on (as a user has
them) and notebook windowing off (so every cell is in the page to be checked).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nbformat
import pytest

# Playwright is installed by `make test-browser` only; plain `make test` deselects these tests but
# still collects the module, which must not fail there.
pytest.importorskip("playwright")
from playwright.async_api import Browser, Page, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeout

from hybrid import Store, sim, view
from tests.helpers import LIVE_KERNEL, SETUP

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "out" / "browser"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert CHROMIUM, "Chromium is missing: make test-browser installs it"
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        await launched.close()


# -- (0) the report, opened from disk -------------------------------------------------------------
async def test_the_html_report_opens_from_disk_with_no_request_leaving_the_page(
    browser: Browser, tmp_path: Path
) -> None:
    from hybrid import Orchestrator, Query, lab
    from hybrid.lab.pull_request import PullRequestReport
    from hybrid.testing import Answer, FakeBackend

    store = Store(tmp_path / "runs.sqlite")
    queries = [Query(f"q{r}", "Capital of France?", sample=r, metadata={"case": "capital"}) for r in range(12)]
    for name, passing in (("main", 12), ("branch", 3)):
        backend = FakeBackend(lambda q, a, passing=passing: Answer("Paris" if q.sample < passing else "Lyon"))
        async with Orchestrator(backend, store=store) as orch:
            run = await orch.run(queries, name=name)
        await lab.score(run, [lab.contains("Paris")], store=store, name=name)
    path = tmp_path / "report.html"
    path.write_text(PullRequestReport(store, "branch", "main").html())
    page = await browser.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    await page.goto(path.as_uri())
    await page.screenshot(path=str(SHOTS / "report.png"), full_page=True)
    assert requests == [path.as_uri()]  # the file itself, and nothing else
    regressed = page.locator("#groups tr.worse td").first
    assert await regressed.text_content() == "capital" and await regressed.is_visible()
    assert await page.locator("svg").count() >= 2  # the run page's charts, inlined
    assert (
        await page.evaluate("getComputedStyle(document.querySelector('header')).backgroundColor") == "rgb(45, 62, 80)"
    )


# -- (1) the viewer -----------------------------------------------------------------------------
async def test_the_viewer_follows_a_run_in_another_process_live(browser: Browser, tmp_path: Path) -> None:
    n = 40
    path = tmp_path / "runs.sqlite"
    store = Store(path)
    urls: list[str] = []
    async with sim.serve(sim.SimConfig(seed=3, time_scale=1.0)) as server:
        viewer = asyncio.ensure_future(view.serve(store, port=0, announce=urls.append))
        child = subprocess.Popen([sys.executable, "-c", LIVE_KERNEL, server.url, server.api_key, str(path), str(n)])  # noqa: ASYNC220
        try:
            while not urls or "live" not in set(store.runs()["name"]):
                assert child.poll() is None, "the child ended before its run started"
                await asyncio.sleep(0.05)
            page = await browser.new_page()
            await page.goto(urls[0] + "runs/live")
            # Rows turn done while the run is still going...
            await page.wait_for_function(
                f"(() => {{ const d = Number(document.getElementById('done').textContent);"
                f" return d > 0 && d < {n} && document.getElementById('summary').dataset.status === 'running'; }})()",
                timeout=60_000,
            )
            await page.screenshot(path=str(SHOTS / "viewer-running.png"), full_page=True)
            # ...and when it ends, the page reloads as the finished run, with its plots.
            await page.wait_for_function("document.querySelectorAll('figure svg').length === 3", timeout=60_000)
            await page.screenshot(path=str(SHOTS / "viewer-finished.png"), full_page=True)
            done_rows = await page.locator("#rows tr.done").count()
            shown_ok = int(await page.inner_text("#ok"))
            figures = await page.locator("figure svg").count()
            status = await page.get_attribute("#summary", "data-status")
        finally:
            child.wait(timeout=60)
            viewer.cancel()
            await asyncio.gather(viewer, return_exceptions=True)
    stored = store.load("live")
    assert done_rows == shown_ok == stored.metrics.succeeded == n
    assert figures == 3 and status == "finished"  # timeline, where the time went, tokens
    store.close()


#: Overlapping text boxes in every figure of a page, as the browser lays them out ([(figure, a, b),
#: ...]), and the smallest scale a figure is shown at (its drawn width over its own): below 3/4, the
#: kit's smallest text (8 pt) would be shown under 8 px, too small to read.
OVERLAPPING_TEXT = """() => {
  const found = [];
  let scale = Infinity;
  for (const [f, figure] of [...document.querySelectorAll('figure svg')].entries()) {
    const boxes = [...figure.querySelectorAll("g[id^='text_']")]
      .map(g => ({id: g.id, r: g.getBoundingClientRect()})).filter(b => b.r.width > 0 && b.r.height > 0);
    scale = Math.min(scale, figure.getBoundingClientRect().width / figure.width.baseVal.value);
    for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
      const a = boxes[i].r, b = boxes[j].r;
      const x = Math.min(a.right, b.right) - Math.max(a.left, b.left);
      const y = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
      if (x > 1 && y > 1) found.push([f, boxes[i].id, boxes[j].id]);
    }
  }
  return {overlaps: found, scale: scale};
}"""


@pytest.mark.parametrize("queries", [10, 120, 10_000])
async def test_a_run_page_reads_well_at_any_size(browser: Browser, tmp_path: Path, queries: int) -> None:
    """Its figures draw a big run in groups: no text overlaps and the page above the table stays as
    tall at 10,000 queries as at 10."""
    from hybrid import Orchestrator, Query, simulate

    async def study() -> None:
        for name, seed in (("big", 5), ("again", 6)):
            async with Orchestrator(sim.backend(sim.SimConfig(seed=seed)), store=tmp_path / "runs.sqlite") as orch:
                await orch.run([Query(f"question-{i}", f"question {i}") for i in range(queries)], name=name)

    await simulate(study)
    store = Store(tmp_path / "runs.sqlite")
    urls: list[str] = []
    served = asyncio.ensure_future(view.serve(store, port=0, announce=urls.append))
    try:
        while not urls:
            await asyncio.sleep(0.05)
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await page.goto(urls[0] + "runs/big")
        figures = await page.locator("figure svg").count()
        text = await page.evaluate(OVERLAPPING_TEXT)
        above_table = await page.evaluate("document.getElementById('rows').getBoundingClientRect().top + scrollY")
        top = {"x": 0, "y": 0, "width": 1280, "height": above_table + 300}  # a whole page of 1,000 rows is too tall
        await page.screenshot(path=str(SHOTS / f"viewer-{queries}-queries.png"), full_page=True, clip=top)
        compare = await browser.new_page(viewport={"width": 1280, "height": 900})
        await compare.goto(urls[0] + "compare?a=big&b=again")
        await compare.screenshot(path=str(SHOTS / f"compare-{queries}-queries.png"), full_page=True, clip=top)
        compared = await compare.evaluate(OVERLAPPING_TEXT)
        pareto = await browser.new_page(viewport={"width": 1280, "height": 900})
        await pareto.goto(urls[0] + "pareto")
        await pareto.screenshot(path=str(SHOTS / f"pareto-{queries}-queries.png"), full_page=True)
        frontier = await pareto.evaluate(OVERLAPPING_TEXT)
    finally:
        served.cancel()
        await asyncio.gather(served, return_exceptions=True)
        store.close()
    assert figures == 3
    assert text["overlaps"] == [] and compared["overlaps"] == [] and frontier["overlaps"] == [], (text, compared)
    assert text["scale"] >= 0.75 and compared["scale"] >= 0.75 and frontier["scale"] >= 0.75, (text, compared)
    assert above_table < 2_000, above_table  # the summary and three figures; the table pages itself


# -- (2) and (3): JupyterLab --------------------------------------------------------------------
NOTEBOOKS = ("01_quickstart.ipynb", "02_benchmark_speedups.ipynb", "03_prompt_lab.ipynb", "04_regression_tests.ipynb")
#: The notebooks that draw figures (the others show tables and text).
WITH_FIGURES = ("01_quickstart.ipynb", "02_benchmark_speedups.ipynb")
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """JupyterLab on a copy of the notebooks: (base URL, token, its folder)."""
    folder = tmp_path_factory.mktemp("lab")
    for name in NOTEBOOKS:  # as a user gets them to run: no outputs yet, the kit's kernel named
        notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        notebook.metadata["kernelspec"] = KERNELSPEC
        nbformat.write(notebook, folder / name)
    shutil.copytree(ROOT / "notebooks" / "recordings", folder / "recordings")  # what notebook 04 replays
    settings = {
        # Every cell in the page, to be checked; the notebook's kernel started without asking.
        "notebook-extension/tracker": {"windowingMode": "none", "autoStartDefaultKernel": True},
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }
    for plugin, values in settings.items():
        where = folder / ".settings" / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_text(json.dumps(values))
    port, token = free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in ("HYBRID_PROGRESS", "CI")}  # bars on, as for a user
    env["JUPYTERLAB_SETTINGS_DIR"] = str(folder / ".settings")
    env["HYBRID_STORE"] = str(folder / "runs.sqlite")  # what the launcher's "hybrid view" serves
    shutil.copy(ROOT / "notebooks" / "recordings" / "gemma_suite.sqlite", folder / "runs.sqlite")
    command = [str(Path(sys.executable).with_name("jupyter")), "lab", "--no-browser", f"--ServerApp.port={port}"]
    command += ["--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                assert process.poll() is None, "JupyterLab exited at start"
                time.sleep(0.1)
        yield base, token, folder
    finally:
        process.terminate()
        process.wait(timeout=30)


async def open_notebook(browser: Browser, lab: tuple[str, str, Path], name: str) -> Page:
    base, token, _ = lab
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    await page.goto(f"{base}/lab/tree/{name}?reset&token={token}")  # reset: only this notebook open
    await page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    select = page.get_by_role("button", name="Select", exact=True)  # a kernel dialog, if settings did not apply
    with contextlib.suppress(PlaywrightTimeout):
        await select.click(timeout=3_000)
    await kernel_idle(page)
    return page


async def notebook_of(browser: Browser, lab: tuple[str, str, Path], name: str, cells: list[str]) -> Page:
    """A notebook of ``cells`` in the lab's folder, opened in JupyterLab, its kernel idle."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    notebook.metadata["kernelspec"] = KERNELSPEC
    nbformat.write(notebook, lab[2] / name)
    return await open_notebook(browser, lab, name)


async def kernel_idle(page: Page, timeout_ms: int = 300_000) -> None:
    idle = page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle'] >> visible=true")
    await idle.first.wait_for(timeout=timeout_ms)


async def run_menu(page: Page, item: str) -> None:
    await page.get_by_role("menuitem", name="Run", exact=True).click()
    await page.get_by_role("menuitem", name=item, exact=True).click()


async def all_code_cells_ran(page: Page, timeout_ms: int = 300_000) -> None:
    """Every code cell shows an execution count ([n]), none is still waiting or running ([*])."""
    try:
        await page.wait_for_function(
            "(() => { const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];"
            " return p.length > 0 && p.every(e => /\\[\\d+\\]/.test(e.textContent)); })()",
            timeout=timeout_ms,
        )
    except Exception:
        await page.screenshot(path=str(SHOTS / "stuck.png"))
        (SHOTS / "stuck.html").write_text(await page.content())
        raise


@pytest.mark.parametrize("name", NOTEBOOKS)
async def test_a_notebook_runs_all_cells_in_jupyterlab(browser: Browser, lab: tuple[str, str, Path], name: str) -> None:
    page = await open_notebook(browser, lab, name)
    await run_menu(page, "Run All Cells")
    await all_code_cells_ran(page)
    await kernel_idle(page)
    await page.screenshot(path=str(SHOTS / f"{Path(name).stem}.png"), full_page=True)
    errors = await page.locator(
        ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
    ).all_inner_texts()
    assert not [e for e in errors if "Traceback" in e or "Error" in e], errors
    assert await page.locator(".jp-RenderedHTMLCommon table").count() > 0  # DataFrames render as tables
    if name in WITH_FIGURES:
        assert await page.locator(".jp-RenderedImage img").count() > 0  # figures render as images
    # Every run's live widget (progress="auto" in a kernel with widgets) ended and gave way to its
    # summary; a tqdm bar (an open-loop or batch run's) reached 100%.
    assert await page.locator(".hybrid-run").count() == 0
    bars = await page.locator(".jp-OutputArea-output .widget-html-content").all_inner_texts()
    assert all("100%" in bar for bar in bars if "%" in bar), bars
    await page.close()


async def test_the_viewer_opens_inside_jupyterlab(browser: Browser, lab: tuple[str, str, Path]) -> None:
    """The launcher's item (jupyter-server-proxy, at <lab>/hybrid-view/) and a viewer a kernel started
    (store.view()'s link, at <lab>/proxy/<port>/): pages, styles and links work under the prefix."""
    base, token, folder = lab
    page = await open_notebook(browser, lab, "01_quickstart.ipynb")
    await page.get_by_role("button", name="New Launcher").first.click()  # "+" in the file browser
    item = page.locator(".jp-LauncherCard[title='hybrid view'], .jp-LauncherCard:has-text('hybrid view')").first
    await item.wait_for(timeout=30_000)
    await page.close()
    urls: list[str] = []
    served = asyncio.ensure_future(view.serve(folder / "runs.sqlite", port=0, announce=urls.append))
    try:
        while not urls:
            await asyncio.sleep(0.05)
        port = urls[0].rstrip("/").rsplit(":", 1)[1]
        for prefix in (f"{base}/hybrid-view/", f"{base}/proxy/{port}/"):
            viewer = await browser.new_page()
            await viewer.goto(f"{prefix}?token={token}")
            await viewer.locator("#runs a", has_text="suite").first.click()  # a link relative to the prefix
            await viewer.wait_for_selector("#summary", timeout=30_000)
            assert viewer.url.startswith(prefix) and "/runs/suite" in viewer.url
            assert await viewer.locator("figure svg").count() == 3
            background = "getComputedStyle(document.querySelector('header')).backgroundColor"
            assert await viewer.evaluate(background) == "rgb(45, 62, 80)"  # its stylesheet, under the prefix
            await viewer.screenshot(path=str(SHOTS / f"viewer-in-lab-{prefix.split('/')[-2]}.png"), full_page=True)
            await viewer.close()
    finally:
        served.cancel()
        await asyncio.gather(served, return_exceptions=True)


WIDGET = [
    SETUP.replace('os.environ["HYBRID_PROGRESS"] = "0"\n', "").replace("max_concurrency=8", "max_concurrency=2"),
    "queries = [Query(f'q{i}', f'question {i}') for i in range(2000)]\nrun = await orch.run(queries)",
    "await asyncio.sleep(0.2)\n"
    "print('after', run.cancelled, len(run.results), 0 < sum(r.ok for r in run.results) < 2000, "
    "server.stats()['in_flight'])",
]


async def test_a_run_shows_a_live_widget_that_cancels_it_and_ends_as_its_summary(
    browser: Browser, lab: tuple[str, str, Path]
) -> None:
    page = await notebook_of(browser, lab, "widget.ipynb", WIDGET)
    await run_menu(page, "Run All Cells")
    widget = page.locator(".jp-CodeCell").nth(1).locator(".hybrid-run")
    await widget.wait_for(timeout=120_000)
    counts = []
    for shot in (1, 2):  # the widget updates while the run goes on
        await page.wait_for_function(
            f"(() => {{ const w = document.querySelector('.hybrid-run'); return w && Number(w.dataset.done) > "
            f"{counts[-1] if counts else 0}; }})()",
            timeout=60_000,
        )
        counts.append(int(await widget.get_attribute("data-done") or 0))
        await widget.screenshot(path=str(SHOTS / f"widget-{shot}.png"))
        await asyncio.sleep(1.0)
    assert counts[0] < counts[1] < 2000
    button = widget.get_by_role("button", name="cancel run")
    await button.wait_for(state="visible", timeout=30_000)  # shown: the kernel hears it during the run
    await button.click()
    await kernel_idle(page, timeout_ms=60_000)
    await all_code_cells_ran(page, timeout_ms=60_000)
    await page.screenshot(path=str(SHOTS / "widget-cancelled.png"), full_page=True)
    run_cell, last_cell = page.locator(".jp-CodeCell").nth(1), page.locator(".jp-CodeCell").nth(2)
    assert await run_cell.locator(".hybrid-run").count() == 0  # replaced by the run's summary
    shown = " ".join(await run_cell.locator(".jp-OutputArea-output").all_inner_texts())
    assert "hybrid: the run was cancelled from its widget" in shown and "ok in" in shown, shown
    assert await run_cell.locator(".jp-RenderedHTMLCommon table").count() == 1
    assert "Traceback" not in shown
    # the next cell ran on the same kernel: the partial run, nothing left in flight at the server
    after = " ".join(await last_cell.locator(".jp-OutputArea-output").all_inner_texts())
    assert "after True 2000 True 0" in after, after
    await page.close()


BIG_RUN = [
    "import os\nos.environ.pop('HYBRID_PROGRESS', None)\nfrom hybrid import Orchestrator, Query, sim\n"
    "stack = __import__('contextlib').AsyncExitStack()\n"
    "server = await stack.enter_async_context(sim.serve(sim.SimConfig(seed=1, time_scale=0.0)))\n"
    "orch = await stack.enter_async_context(Orchestrator(sim.backend(sim.SimConfig(seed=1, time_scale=0.0)), "
    "max_concurrency=64))",
    "run = await orch.run([Query(f'q{i}', f'question {i}') for i in range(10_000)])\nprint(run.summary())",
]
#: Long tasks (over 200 ms) the page ran while a live widget showed a running run: [[start, ms], ...].
WATCH_LONG_TASKS = """() => {
  window.hybridLong = []; window.hybridRunning = [];
  new PerformanceObserver(list => list.getEntries().forEach(e => window.hybridLong.push([e.startTime, e.duration])))
    .observe({type: 'longtask', buffered: false});
  setInterval(() => {
    if (document.querySelector(".hybrid-run[data-state='running']")) window.hybridRunning.push(performance.now());
  }, 20);
}"""


async def test_ten_thousand_queries_update_the_widget_without_stalling_the_page(
    browser: Browser, lab: tuple[str, str, Path]
) -> None:
    page = await notebook_of(browser, lab, "big_run.ipynb", BIG_RUN)
    assert await page.evaluate("PerformanceObserver.supportedEntryTypes.includes('longtask')")
    await page.evaluate(WATCH_LONG_TASKS)
    await run_menu(page, "Run All Cells")
    await all_code_cells_ran(page)
    await kernel_idle(page)
    await page.screenshot(path=str(SHOTS / "big-run.png"), full_page=True)
    running = await page.evaluate("window.hybridRunning")
    long_tasks = await page.evaluate("window.hybridLong")
    assert len(running) > 10, "the widget never showed the run going on"
    during = [task for task in long_tasks if running[0] <= task[0] <= running[-1]]
    assert not [t for t in during if t[1] > 200], during
    print(f"{len(running)} samples of a running widget, {len(during)} long tasks meanwhile: {during}")
    shown = " ".join(await page.locator(".jp-CodeCell").nth(1).locator(".jp-OutputArea-output").all_inner_texts())
    assert "10000/10000 ok" in shown
    await page.close()


INTERRUPT = [
    SETUP,
    "run = await orch.run(queries)",
    "await asyncio.sleep(0.2)\nprint('after', orch.last_run.cancelled, [r.ok for r in orch.last_run.results], "
    "server.stats()['in_flight'])",
]


async def test_interrupting_a_run_from_the_toolbar_keeps_the_kernel_and_the_results(
    browser: Browser, lab: tuple[str, str, Path]
) -> None:
    page = await notebook_of(browser, lab, "interrupt.ipynb", INTERRUPT)
    await run_menu(page, "Run All Cells")
    # The fast queries finish, the slow ones would take ten minutes: interrupt from the toolbar.
    await page.wait_for_function(
        "document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')[0].textContent.includes('[1]')", timeout=120_000
    )
    await asyncio.sleep(2.0)
    stop = "jp-button[data-command='notebook:interrupt-kernel'], button[data-command='notebook:interrupt-kernel']"
    await page.locator(stop).first.click()
    await kernel_idle(page, timeout_ms=60_000)
    await page.screenshot(path=str(SHOTS / "interrupt.png"), full_page=True)
    outputs = await page.locator(".jp-CodeCell").nth(1).locator(".jp-OutputArea-output").all_inner_texts()
    assert any("hybrid: the run was interrupted; 3 of 6 queries had finished" in o for o in outputs), outputs
    # The kernel is alive: run the last cell again by itself and read what the run kept.
    last = page.locator(".jp-CodeCell").nth(2)
    await last.click()
    await page.keyboard.press("Shift+Enter")
    await page.wait_for_function(
        "(() => { const o = document.querySelectorAll('.jp-CodeCell')[2].querySelector('.jp-OutputArea');"
        " return o && o.textContent.includes('after'); })()",
        timeout=60_000,
    )
    text = await last.locator(".jp-OutputArea").inner_text()
    assert "after True [True, True, True, False, False, False] 0" in text
    await page.close()
