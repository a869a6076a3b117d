"""``hybrid view``: pages from the run store and its events as Server-Sent Events.

The viewer is served in the test's loop (aiohttp's test server) on a store written by a run in
this process, or, for the live case, by a child process playing the notebook kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

import hybrid
from hybrid import Orchestrator, Query, Store, sim
from hybrid.testing import write_large_run
from hybrid.view import make_app, pages

from .helpers import LIVE_KERNEL


def grid(n: int) -> list[Query]:
    return [Query(f"q{i}", f"Question number {i}?", max_tokens=16) for i in range(n)]


async def stored_run(path: Path, name: str, n: int, faults: sim.Faults | None = None) -> None:
    config = sim.SimConfig(seed=3, time_scale=0.0, faults=faults or sim.Faults())
    async with Orchestrator(sim.backend(config), store=path) as orch:
        await orch.run(grid(n), name=name, raise_if_all_failed=False)


async def read_events(client: TestClient, name: str, *, headers: dict[str, str] | None = None,
                      until: str = "final_result") -> list[dict[str, Any]]:  # fmt: skip
    """SSE events of run ``name`` until one of kind ``until`` (inclusive)."""
    events: list[dict[str, Any]] = []
    async with client.get(f"/runs/{name}/events", headers=headers or {}) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        current: dict[str, Any] = {}
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if not line:
                if current:
                    current["received"] = time.time()
                    events.append(current)
                    if current["event"] == until:
                        return events
                current = {}
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(": ")
                current[field] = json.loads(value) if field == "data" else value
    return events


@pytest.fixture
async def viewer(tmp_path: Path) -> AsyncIterator[tuple[TestClient, Path]]:
    path = tmp_path / "runs.sqlite"
    store = Store(path)
    async with TestClient(TestServer(make_app(store))) as client:
        yield client, path
    store.close()


async def test_the_runs_page_lists_runs_with_their_counts(viewer: tuple[TestClient, Path]) -> None:
    client, path = viewer
    await stored_run(path, "clean", 4)
    await stored_run(path, "faulty", 6, sim.Faults(fail_first=5, fail_first_status=500))
    page = await (await client.get("/")).text()
    assert "<a href='runs/clean'>clean</a>" in page and "<a href='runs/faulty'>faulty</a>" in page
    row = page[page.index("runs/faulty") :].split("</tr>")[0]
    assert (
        "<td>finished</td>" in row and "<td>1</td><td>6</td><td>0</td><td>6</td>" in row
    )  # segments, queries, ok, failed


async def test_a_run_page_shows_every_row_and_the_plots(viewer: tuple[TestClient, Path]) -> None:
    client, path = viewer
    await stored_run(path, "grid", 5)
    response = await client.get("/runs/grid")
    page = await response.text()
    assert response.status == 200
    assert all(f"id='q{i}' class='done'" in page for i in range(5))
    assert page.count("<svg") == 3  # the timeline, where each query's time went, tokens per query
    assert "Where each query" in page
    assert "of ideal" in page and "5</span> of 5 finished" in page
    assert "viewer.js" not in page  # a finished run needs no live updates
    assert (await client.get("/static/viewer.js")).status == 200


async def test_a_run_page_shows_what_was_measured_in_real_time(viewer: tuple[TestClient, Path]) -> None:
    client, path = viewer
    await stored_run(path, "grid", 3)
    assert "id='diagnostics'" not in await (await client.get("/runs/grid")).text()
    with sqlite3.connect(path) as db:
        db.execute("""UPDATE segments SET diagnostics = '["The event loop was blocked for at least 0.30 s <here>"]'""")
    page = await (await client.get("/runs/grid")).text()
    shown = page[page.index("id='diagnostics'") :].split("</details>")[0]
    assert "The event loop was blocked for at least 0.30 s &lt;here&gt;" in shown
    assert "blocked" not in page[: page.index("id='diagnostics'")]  # not in the summary line


async def test_the_viewer_has_an_icon(viewer: tuple[TestClient, Path]) -> None:
    client, _ = viewer
    page = await (await client.get("/")).text()
    assert "<link rel='icon' href='static/favicon.svg'>" in page
    for path in ("/favicon.ico", "/static/favicon.svg"):  # the path browsers ask for first, and the linked one
        response = await client.get(path)
        assert response.status == 200 and response.content_type == "image/svg+xml"
        assert (await response.text()).startswith("<svg")


async def test_a_run_page_says_where_the_mean_query_spent_its_time(viewer: tuple[TestClient, Path]) -> None:
    """The latency's parts as the store kept them: the simulator reports its queue and its work."""
    client, path = viewer
    profiles = {"sim-small": sim.ModelProfile(ttft_s=0.02, prompt_tps=1e6, completion_tps=1e6, jitter=0.0)}
    config = sim.SimConfig(seed=3, time_scale=1.0, slots=1, profiles=profiles)
    async with Orchestrator(sim.backend(config), store=path, max_concurrency=2) as orch:
        run = await orch.run(grid(2), name="queued")
    page = await (await client.get("/runs/queued")).text()
    line = page[page.index("<p class='decomposition'>") :].split("</p>")[0]
    m = run.metrics
    assert m.mean_server_s is not None and m.mean_server_queue_s is not None and m.mean_server_queue_s > 0
    assert f"server queue {m.mean_server_queue_s * 1000:.3g} ms" in line  # one waited for the only slot
    assert f"server {m.mean_server_s * 1000:.3g} ms" in line
    assert "client queue" in line and "network and the rest" in line


async def test_a_run_whose_query_names_look_like_math_has_its_page(viewer: tuple[TestClient, Path]) -> None:
    client, path = viewer
    names = ["$$", r"$\alert$", "grep 'foo$' | sed 's/^$//'"]
    async with Orchestrator(sim.backend(sim.SimConfig(seed=3, time_scale=0.0)), store=path) as orch:
        await orch.run([Query(name, "hello") for name in names], name="dollars")
    response = await client.get("/runs/dollars")
    assert response.status == 200
    page = await response.text()
    assert all(html.escape(name) in page for name in names)


async def test_the_viewer_answers_only_to_its_own_host_names(viewer: tuple[TestClient, Path]) -> None:
    """A DNS-rebinding page reaches the viewer under its own host name: refused, nothing read."""
    client, path = viewer
    await stored_run(path, "secret-grid", 2)
    for host in ("attacker.example", "attacker.example:8765", "127.0.0.1.attacker.example"):
        response = await client.get("/runs/secret-grid", headers={"Host": host})
        assert response.status == 421 and "Question number" not in await response.text()
    for host in ("127.0.0.1", "localhost:8765", "[::1]:8765"):
        assert (await client.get("/", headers={"Host": host})).status == 200


async def test_a_viewer_bound_beyond_loopback_needs_its_token(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    await stored_run(path, "grid", 2)
    with Store(path) as store:
        app = make_app(store, hosts=("viewer.lan",), token="s3cret")
        async with TestClient(TestServer(app)) as client:
            lan = {"Host": "viewer.lan"}
            assert (await client.get("/runs/grid", headers=lan)).status == 403
            first = await client.get("/runs/grid?token=s3cret", headers=lan)
            assert first.status == 200  # ...and it sets the cookie, so the page's links work
            assert (await client.get("/runs/grid", headers=lan)).status == 200


async def test_odd_names_bad_event_ids_and_nul_bytes_are_handled(viewer: tuple[TestClient, Path]) -> None:
    client, path = viewer
    config = sim.SimConfig(seed=3, time_scale=0.0, answers="echo")
    async with Orchestrator(sim.backend(config), store=path) as orch:
        await orch.run([Query("q", "before\x00after")], name="grid {v2}")
    page = await client.get("/runs/grid%20%7Bv2%7D")
    assert page.status == 200 and "before\u2400after" in await page.text()
    for bad in ("99999999999999999999999", "-1", "abc"):
        events = await client.get("/runs/grid%20%7Bv2%7D/events", headers={"Last-Event-ID": bad})
        assert events.status == 400 and "Last-Event-ID" in await events.text()


async def test_a_deleted_store_is_a_503_and_a_replaced_one_is_reopened(tmp_path: Path) -> None:
    path, other = tmp_path / "runs.sqlite", tmp_path / "other.sqlite"
    await stored_run(path, "first", 1)
    await stored_run(other, "second", 1)
    with sqlite3.connect(other) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # a whole file, as a copied store is
    with Store(path) as store:
        async with TestClient(TestServer(make_app(store))) as client:
            path.rename(tmp_path / "moved.sqlite")
            gone = await client.get("/")
            assert gone.status == 503 and "deleted or moved" in await gone.text()
            other.rename(path)
            assert (await client.get("/runs/second")).status == 200


async def test_a_viewer_started_before_its_store_says_so_until_a_run_makes_it(tmp_path: Path) -> None:
    """JupyterLab's launcher item starts the viewer before any run: its page says what to do."""
    path = tmp_path / "runs.sqlite"
    async with TestClient(TestServer(make_app(path))) as client:
        waiting = await client.get("/")
        assert waiting.status == 503 and f"store={str(path)!r}" in html.unescape(await waiting.text())
        assert not path.exists()  # the viewer never makes it
        await stored_run(path, "first", 1)
        assert (await client.get("/runs/first")).status == 200


async def test_a_big_run_is_shown_a_page_of_rows_at_a_time_with_whole_answers_linked(
    viewer: tuple[TestClient, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paging at ten rows a page, so the run stays small (a page of a finished run draws its plots)."""
    monkeypatch.setattr(pages, "PAGE_ROWS", 10)
    client, path = viewer
    with Store(path) as store:
        write_large_run(store, "big", rows=25, text_bytes=400)
    first = await (await client.get("/runs/big")).text()
    assert "id='q9'" in first and "id='q10'" not in first and "rows 0-9 of 25" in first
    assert "?page=1'>next</a>" in first and "data-done='25'" in first and "previous</a>" not in first
    last = await (await client.get("/runs/big?page=2")).text()
    assert "id='q24'" in last and "id='q0'" not in last and "previous</a>" in last and "next</a>" not in last
    assert (await client.get("/runs/big?page=3")).status == 404
    assert (await client.get("/runs/big?page=-1")).status == 404
    assert "'runs/big/rows/3'>(whole answer)</a>" in first  # 400 characters: the table shows 300
    whole = await client.get("/runs/big/rows/3")
    assert whole.status == 200 and "answer 3 " + "x" * 391 in await whole.text()
    assert (await client.get("/runs/big/rows/500")).status == 404


async def test_a_run_page_says_its_validity_flags_and_what_they_mean(viewer: tuple[TestClient, Path]) -> None:
    client, path = viewer
    await stored_run(path, "grid", 3)
    assert "id='flags'" not in await (await client.get("/runs/grid")).text()
    with sqlite3.connect(path) as db:
        db.execute("""UPDATE segments SET flags = '["saturated", "server_in_process"]'""")
    page = await (await client.get("/runs/grid")).text()
    shown = page[page.index("id='flags'") :].split("</div>")[0]
    assert "saturated: the server&#x27;s own queue held a large share of the latency" in shown
    assert "server_in_process: " in shown and "sim.serve_process" in shown


async def test_a_run_page_says_where_each_price_came_from(viewer: tuple[TestClient, Path]) -> None:
    client, path = viewer
    await stored_run(path, "grid", 3)  # the simulator: a local server, no price
    assert "id='prices'" not in await (await client.get("/runs/grid")).text()
    source = "genai-prices 0.2.3: openai gpt-4o-mini, as of 2026-12-03"
    with sqlite3.connect(path) as db:
        db.execute("UPDATE segments SET prices = ?", (f'{{"gpt-4o-mini": "{source}"}}',))
    page = await (await client.get("/runs/grid")).text()
    assert f"<li>gpt-4o-mini: {source}</li>" in page[page.index("id='prices'") :].split("</div>")[0]


async def test_the_pareto_page_draws_finished_runs_and_names_the_frontier(viewer: tuple[TestClient, Path]) -> None:
    client, path = viewer
    assert "needs two finished runs" in await (await client.get("/pareto")).text()
    for name, slots in (("one-slot", 1), ("four-slots", 4), ("sixteen-slots", 16)):
        profile = sim.ModelProfile(ttft_s=1.0, prompt_tps=1e9, completion_tps=1e9, jitter=0.0)
        config = sim.SimConfig(seed=3, slots=slots, profiles={"sim-small": profile})
        await _looptime_run(path, config, name)
    assert "<a href='pareto'>" in await (await client.get("/")).text()
    page = await (await client.get("/pareto")).text()
    assert page.count("<svg") == 1
    rows = {row.split("</a>")[0].split(">")[-1]: row for row in page.split("<tr>")[2:]}
    assert rows.keys() == {"one-slot", "four-slots", "sixteen-slots"}
    # 16 slots answer 16 queries at once: most throughput and least latency; it alone is on the frontier
    assert [name for name, row in rows.items() if "<td>yes</td>" in row] == ["sixteen-slots"]


async def _looptime_run(path: Path, config: sim.SimConfig, name: str) -> None:
    async def study() -> None:
        async with Orchestrator(sim.backend(config), store=path, max_concurrency=16) as orch:
            await orch.run(grid(16), name=name)

    await hybrid.simulate(study)


async def test_every_page_links_relative_to_the_root_it_names(viewer: tuple[TestClient, Path]) -> None:
    """Under a proxy's prefix (jupyter-server-proxy's /proxy/<port>/) the viewer never sees, a page
    may link nowhere absolute: each names the root relative to itself, and links from there."""
    client, path = viewer
    await stored_run(path, "a/b", 2)
    await stored_run(path, "c", 2)
    bases = {
        "/": "./",
        "/runs/a%2Fb": "../",
        "/runs/a%2Fb/rows/0": "../../../",
        "/compare?a=a%2Fb&b=c": "./",
        "/pareto": "./",
        "/runs/nope": "../",
    }
    for url, base in bases.items():
        page = await (await client.get(url)).text()
        assert f"<head><base href='{base}'>" in page, url
        assert not re.search(r"""(href|src|action)=['"]/""", page), url
    assert "<a href='runs/a%2Fb'>a/b</a>" in await (await client.get("/")).text()


async def test_unknown_runs_are_404_pages(viewer: tuple[TestClient, Path]) -> None:
    client, _ = viewer
    for url in ("/runs/nope", "/runs/nope/events", "/compare?a=x&b=y"):
        response = await client.get(url)
        assert response.status == 404 and "Not found" in await response.text()


async def test_the_compare_page_puts_two_runs_side_by_side(viewer: tuple[TestClient, Path]) -> None:
    client, path = viewer
    await stored_run(path, "a", 3)
    await stored_run(path, "b", 3)
    page = await (await client.get("/compare?a=a&b=b")).text()
    assert "id='compare'" in page and "q2" in page
    # compare_runs' verdicts first: the same seed answers the same, so there is no difference
    assert "id='verdicts'" in page and page.index("id='verdicts'") < page.index("id='compare'")
    assert "<td>p50_latency_s</td>" in page and "Per query: 0 changed first" in page
    # both timelines on one time axis, between the verdicts and the table
    timelines = page.index("Both timelines, on one time axis")
    assert page.index("id='verdicts'") < timelines < page.index("<svg", timelines) < page.index("id='compare'")
    # runs are picked from lists, these two preselected
    assert "<select name='a' required><option selected>a</option><option>b</option></select>" in page
    same = await client.get("/compare?a=a&b=a")
    assert same.status == 400 and "Pick two different runs" in await same.text()
    runs = await (await client.get("/")).text()
    assert "<select name='b' required><option>a</option><option selected>b</option></select>" in runs


async def test_a_finished_run_replays_its_events_and_a_reconnect_loses_none(viewer: tuple[TestClient, Path]) -> None:
    client, path = viewer
    await stored_run(path, "grid", 5)
    events = await read_events(client, "grid")
    kinds = [e["event"] for e in events]
    assert kinds.count("query_started") == 5 and kinds.count("query_completed") == 5 and kinds[-1] == "final_result"
    for i in range(5):  # each query starts before it completes
        assert kinds.index("query_started") <= [e["data"]["index"] for e in events].index(i)
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    completed = [e["data"] for e in events if e["event"] == "query_completed"]
    assert {c["name"] for c in completed} == {f"q{i}" for i in range(5)} and all(c["ok"] for c in completed)
    assert events[-1]["data"]["ok"] == 5 and events[-1]["data"]["status"] == "finished"
    # Reconnecting after the fourth event gets exactly the rest.
    rest = await read_events(client, "grid", headers={"Last-Event-ID": events[3]["id"]})
    assert [e["id"] for e in rest] == [e["id"] for e in events[4:]]


@pytest.mark.heavy
async def test_a_run_in_another_process_streams_live(viewer: tuple[TestClient, Path]) -> None:
    """The child writes to the store while the viewer streams: completions arrive while the run is
    still going (before final_result), and the final counts are the store's."""
    client, path = viewer
    n = 24
    async with sim.serve(sim.SimConfig(seed=3, time_scale=1.0)) as server:
        child = subprocess.Popen([sys.executable, "-c", LIVE_KERNEL, server.url, server.api_key, str(path), str(n)])  # noqa: ASYNC220
        try:
            reader = Store(path)
            while "live" not in set(reader.runs()["name"]):
                assert child.poll() is None, "the child ended before its run started"
                await asyncio.sleep(0.05)
            events = await read_events(client, "live")
        finally:
            child.wait(timeout=60)
    completed = [e for e in events if e["event"] == "query_completed"]
    assert len(completed) == n and events[-1]["event"] == "final_result"
    stored = reader.load("live")
    assert events[-1]["data"]["ok"] == stored.metrics.succeeded == n
    # Live: the first completions reached this client while the child was still running (the
    # final event's time is when the child ended the run; both clocks are this machine's wall clock).
    assert completed[0]["received"] < events[-1]["data"]["at"] - 0.5
    reader.close()


@pytest.mark.heavy
def test_the_cli_refuses_a_store_that_does_not_exist(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hybrid", "view", "--store", str(tmp_path / "missing.sqlite")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "No run store at" in done.stderr
    assert not (tmp_path / "missing.sqlite").exists()


async def test_streamed_queries_report_their_tokens_so_far(viewer: tuple[TestClient, Path]) -> None:
    client, path = viewer
    queries = [Query(f"s{i}", f"Stream number {i}", max_tokens=40, stream=True) for i in range(3)]
    async with Orchestrator(sim.backend(sim.SimConfig(seed=3, time_scale=0.0)), store=path) as orch:
        run = await orch.run(queries, name="streamed")
    events = await read_events(client, "streamed")
    progress = [e["data"] for e in events if e["event"] == "query_progress"]
    assert {p["index"] for p in progress} == {0, 1, 2}
    final = {r.index: r.usage.completion_tokens for r in run.results}
    assert all(0 < p["tokens"] <= final[p["index"]] for p in progress)
    for i in range(3):  # progress comes between a query's start and its completion
        kinds = [e["event"] for e in events if e["data"].get("index") == i]
        assert kinds[0] == "query_started" and kinds[-1] == "query_completed" and "query_progress" in kinds


async def test_store_view_serves_the_store_from_the_kernel_and_links_the_latest_run(tmp_path: Path) -> None:
    import aiohttp

    from hybrid.view import in_notebook
    from hybrid.view.in_notebook import ViewerLink

    path = tmp_path / "runs.sqlite"
    await stored_run(path, "first", 2)
    await stored_run(path, "latest", 3)
    with Store(path) as store:
        link = store.view()
        assert isinstance(link, ViewerLink) and link.run == "latest" and link.url.endswith("/runs/latest")
        assert store.view("first").url.rsplit("/", 2)[0] == link.url.rsplit("/", 2)[0]  # one viewer per store
        async with aiohttp.ClientSession() as session:
            for _ in range(100):  # the viewer starts on the loop, after this cell's code
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with session.get(link.url) as response:
                        page = await response.text()
                        break
                await asyncio.sleep(0.05)
        assert response.status == 200 and "3</span> of 3 finished" in page
        assert f"src='{link.proxied or link.url}'" in link._repr_html_()
    for _, task in in_notebook._SERVED.values():  # the kernel would keep it; this test's loop ends here
        task.cancel()
    await asyncio.gather(*(task for _, task in in_notebook._SERVED.values()), return_exceptions=True)


def test_store_view_in_a_script_says_which_command_serves_it(tmp_path: Path) -> None:
    with Store(tmp_path / "runs.sqlite") as store:
        assert store.view() == f"Serve this store with: hybrid view --store {store.path}"
