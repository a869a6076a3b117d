"""The live run widget on the fake backend in virtual time: what it counts, when it may be cancelled,
what cancelling keeps, and what the cell shows when the run ends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hybrid import Orchestrator, Query, Store, live_run, progress
from hybrid.errors import ServerError
from hybrid.testing import Answer, Fail, FakeBackend

pytestmark = pytest.mark.looptime

QUERIES = [Query(f"q{i}", f"question {i}") for i in range(6)]


class Shown:
    """Stands in for IPython's display handle: what the cell's output became."""

    def __init__(self) -> None:
        self.updates: list[Any] = []

    def update(self, obj: Any) -> None:
        self.updates.append(obj)


@pytest.fixture
def widgets(monkeypatch: pytest.MonkeyPatch) -> list[live_run.LiveRun]:
    """A kernel someone is looking at: every run shows a live widget, collected here."""
    made: list[live_run.LiveRun] = []
    shown = Shown()

    class Recorded(live_run.LiveRun):
        def __init__(self, total: int, description: str) -> None:
            super().__init__(total, description)
            self._display = shown
            made.append(self)

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("HYBRID_PROGRESS", raising=False)
    monkeypatch.setattr(progress, "watched_kernel", lambda: True)
    monkeypatch.setattr(live_run, "LiveRun", Recorded)
    return made


def backend() -> FakeBackend:
    """q<i> answers after i+1 seconds with i+1 completion tokens; q4 fails."""
    script: dict[str, Any] = {f"q{i}": [Answer("fine", delay=i + 1.0, completion_tokens=i + 1)] for i in range(6)}
    script["q4"] = [Fail(ServerError("busy"))]
    return FakeBackend(script)


async def snapshot_at(widget: live_run.LiveRun, at: float) -> dict[str, Any]:
    await asyncio.sleep(at - asyncio.get_running_loop().time())
    widget.send()
    return dict(widget.widget.snapshot)


async def test_the_widget_counts_the_run_as_it_goes(widgets: list[live_run.LiveRun]) -> None:
    async with Orchestrator(backend(), max_concurrency=6, progress="auto") as orch:
        task = asyncio.create_task(orch.run(QUERIES))
        await asyncio.sleep(0)
        (widget,) = widgets
        start = asyncio.get_running_loop().time()
        middle = await snapshot_at(widget, start + 2.5)
        run = await task
    assert middle["state"] == "running" and middle["done"] == 3 and middle["ok"] == 2  # q0, q1 and q4 (failed)
    assert middle["failed"] == {"server_error": 1} and middle["in_flight"] == 3 and middle["limit"] == 6
    assert middle["tokens"] == run["q0"].usage.total_tokens + run["q1"].usage.total_tokens
    assert middle["per_s"] == round(3 / 2.5, 2)
    final = widget.widget.snapshot
    assert final["state"] == "ended" and final["done"] == 6 and final["ok"] == 5 and final["in_flight"] == 0
    assert final["tokens"] == run.metrics.total_tokens
    # one lane per query at this size: started at 0, finished when each query did
    assert [lane[1] for lane in final["lanes"]] == [r.finished_s for r in run.results]
    assert all(lane[2] == lane[3] == 1 for lane in final["lanes"]) and final["lanes"][4][4] == 1


async def test_a_big_run_draws_at_most_forty_lanes() -> None:
    tally = live_run.Tally(10_000)
    assert len(tally.lanes) == live_run.LANES and sum(lane.count for lane in tally.lanes) == 10_000
    assert len(live_run.Tally(7).lanes) == 7 and live_run.Tally(0).lanes == []


async def test_the_cancel_button_ends_that_run_with_its_finished_rows(
    widgets: list[live_run.LiveRun], tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store(tmp_path / "runs.sqlite")
    async with Orchestrator(backend(), max_concurrency=6, progress="auto", store=store) as orch:
        task = asyncio.create_task(orch.run(QUERIES, name="cancelled"))
        await asyncio.sleep(0)
        (widget,) = widgets
        assert not widget.widget.cancellable
        widget._message(widget.widget, {"type": "ready"}, [])  # the front end drew it, during the run
        await asyncio.sleep(0)
        assert widget.widget.cancellable  # so the button shows
        await asyncio.sleep(3.5 - asyncio.get_running_loop().time())
        widget._message(widget.widget, {"type": "cancel"}, [])  # the click
        run = await task  # returns the partial run; nothing raised
        later = await orch.run(QUERIES[:1])  # the orchestrator is still usable
    assert run.cancelled and "The run was cancelled from its widget." in run.warnings
    assert [r.ok for r in run.results] == [True, True, True, False, False, False]
    assert [r.error.kind for r in run.results[3:] if r.error] == ["cancelled", "server_error", "cancelled"]
    assert run.metrics.wall_s == 3.5 and later.ok
    assert widget.widget.snapshot["state"] == "cancelled" and not widget.widget.cancellable
    assert "cancelled from its widget; 4 of 6 queries had finished" in capsys.readouterr().err
    assert store.load("cancelled").cancelled and store.load("cancelled").metrics.succeeded == 3


async def test_a_ready_that_arrives_after_the_run_never_shows_the_button(widgets: list[live_run.LiveRun]) -> None:
    """ipykernel 6 delivers the front end's messages only when the cell ends: no dead button."""
    async with Orchestrator(backend(), max_concurrency=6, progress="auto") as orch:
        await orch.run(QUERIES)
        (widget,) = widgets
        widget._message(widget.widget, {"type": "ready"}, [])
        widget._message(widget.widget, {"type": "cancel"}, [])
        await asyncio.sleep(0)
        assert not widget.widget.cancellable and widget.widget.snapshot["state"] == "ended"
        assert (await orch.run(QUERIES)).metrics.succeeded == 5


async def test_when_the_run_ends_the_cell_shows_its_summary(widgets: list[live_run.LiveRun]) -> None:
    async with Orchestrator(backend(), max_concurrency=6, progress="auto") as orch:
        run = await orch.run(QUERIES)
        staged = await orch.pipeline([QUERIES[:2], QUERIES[2:4]])
    assert len(widgets) == 2  # one per run; both show in the one cell output they share here
    shown = widgets[0]._display.updates  # type: ignore[union-attr]
    assert [u.data for u in shown] == [run._repr_html_(), staged._repr_html_()]


async def test_no_widget_in_a_headless_kernel_or_a_script(monkeypatch: pytest.MonkeyPatch) -> None:
    class Refused(live_run.LiveRun):
        def __init__(self, total: int, description: str) -> None:
            raise AssertionError("a live widget where no one is looking")

    monkeypatch.setattr(live_run, "LiveRun", Refused)
    async with Orchestrator(backend(), max_concurrency=6, progress="auto") as orch:
        assert (await orch.run(QUERIES)).metrics.queries == 6
    with progress.bar(6, "a script", requested=progress.wanted("auto"), live=True) as shown:
        assert shown is None


async def test_the_button_cancels_a_stream_and_a_pipeline_the_same_way(widgets: list[live_run.LiveRun]) -> None:
    from hybrid.events import RunFinished

    async def click_at(at: float, which: int) -> None:
        await asyncio.sleep(at - asyncio.get_running_loop().time())
        widgets[which]._message(None, {"type": "cancel"}, [])

    async with Orchestrator(backend(), max_concurrency=6, progress="auto") as orch:
        start = asyncio.get_running_loop().time()
        clicking = asyncio.create_task(click_at(start + 2.5, 0))
        events = [event async for event in orch.stream(QUERIES)]
        await clicking
        clicking = asyncio.create_task(click_at(asyncio.get_running_loop().time() + 1.5, 1))
        staged = await orch.pipeline([QUERIES[:3], QUERIES[3:]])
        await clicking
    streamed = events[-1]
    assert isinstance(streamed, RunFinished) and streamed.run.cancelled
    assert [r.ok for r in streamed.run.results] == [True, True, False, False, False, False]
    assert staged.cancelled and [r.ok for r in staged.results[:2]] == [True, False]  # q1 takes 2 s: cut at 1.5
    assert all(w.widget.snapshot["state"] == "cancelled" for w in widgets)


async def test_a_long_run_on_a_virtual_clock_sends_snapshots_by_real_time(widgets: list[live_run.LiveRun]) -> None:
    """An hour of model time passes in milliseconds here: a snapshot per quarter of a model second
    would be 14,400 messages to the front end; by real time it is a few."""
    sent: list[object] = []
    hour = FakeBackend(default=Answer("fine", delay=3600.0))
    async with Orchestrator(hour, max_concurrency=6, progress="auto", timeout=None) as orch:
        task = asyncio.create_task(orch.run(QUERIES))
        await asyncio.sleep(0)
        widgets[0].widget.observe(sent.append, names="snapshot")
        run = await task
    assert run.metrics.wall_s == 3600.0 and 1 <= len(sent) <= 10


async def test_a_big_run_s_summary_shows_its_first_and_last_rows_at_once() -> None:
    """What the widget becomes (and what displaying a run shows) is built from 60 rows, whatever the run's size."""
    from hybrid.results import HTML_ROWS

    async with Orchestrator(FakeBackend(default=Answer("fine", delay=1.0)), max_concurrency=100) as orch:
        small = await orch.run(QUERIES)
        big = await orch.run([Query(f"q{i}", "x") for i in range(5_000)])
    page = big._repr_html_()
    assert "q0<" in page and "q29<" in page and "q30<" not in page and "q4970<" in page and "q4999<" in page
    assert page.count("<td>...</td>") == 8 and f"{5_000 - HTML_ROWS} more rows: run.to_frame()" in page
    assert "more rows" not in small._repr_html_() and small._repr_html_().count("<tr>") == len(QUERIES)
