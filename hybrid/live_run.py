"""The live run widget: what a run is doing, in the cell that runs it, with a button that cancels it.

``progress="auto"`` in a kernel someone is looking at (:func:`hybrid.progress.watched_kernel`) shows
this instead of a tqdm bar when anywidget is installed (the ``notebook`` extra): counts by state and
error kind, throughput, tokens and cost so far, the concurrency in flight and its limit, the budget
left, and a small timeline of at most :data:`LANES` lanes that grows as queries finish.  When the
run ends, the widget's display is replaced (a ``display_id`` update) by ``RunResult._repr_html_``,
so a saved notebook shows the result without a live kernel.

How it stays cheap: every start and finish updates a :class:`Tally` in O(1) on the loop, and a task
sends one snapshot of it (a few hundred bytes, whatever the run's size) about every :data:`EVERY_S`
of real time.

The cancel button, and why it is hidden until proven to work: while a cell runs, ipykernel 6 queues
a widget's messages from the front end until the cell ends, so a button would do nothing.
ipykernel 7 with JupyterLab 4.4 or later sends them on a kernel subshell, a thread of its own, where
they arrive during the run (the ``notebook`` extra pins both).  The widget therefore says "ready"
when it is drawn; only a "ready" that arrives while the run is still going shows the button.  A
click is handed to the loop (``call_soon_threadsafe``) and cancels that run only, like
``task.cancel()`` would, but the run returns its partial :class:`~hybrid.results.RunResult` instead of
raising: finished rows kept, requests in flight closed, the kernel idle and usable.  On a front end
that cannot deliver the message in time (Notebook 6, older JupyterLab, VS Code today), the button
is never shown rather than dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybrid.query import QueryResult

#: Seconds between two snapshots sent to the front end.
EVERY_S = 0.25
#: The timeline's most lanes: beyond this many queries, a lane is a group of consecutive ones.
LANES = 40
#: The widget's front end (an ES module, as anywidget loads it).
SCRIPT = Path(__file__).with_name("live_run.js")


@dataclass
class Lane:
    """A group of consecutive queries on the timeline: when the first started and the last finished
    (seconds into the run), how many there are, and how many are done and failed."""

    count: int
    start: float | None = None
    end: float | None = None
    done: int = 0
    failed: int = 0


class Tally:
    """What a run has done so far, kept up to date in O(1) per event: counts, tokens, cost, and per
    lane (a group of consecutive queries) when it started, when it last finished and how many of it
    are done and failed."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.ok = 0
        self.failed: Counter[str] = Counter()
        self.in_flight = 0
        self.tokens = 0
        #: None until a priced answer lands (a model with no price: no cost to show).
        self.cost_usd: float | None = None
        self._size = max(1, -(-total // LANES))  # queries per lane
        self.lanes = [Lane(count=min(self._size, total - first)) for first in range(0, total, self._size)]

    def started(self, index: int, at_s: float) -> None:
        self.in_flight += 1
        lane = self.lanes[index // self._size]
        lane.start = at_s if lane.start is None else min(lane.start, at_s)

    def finished(self, result: QueryResult, at_s: float) -> None:
        if result.attempts and result.origin in ("sent", "batch"):
            self.in_flight = max(0, self.in_flight - 1)
        if result.ok:
            self.ok += 1
        elif result.error is not None:
            self.failed[result.error.kind] += 1
        self.tokens += result.usage.total_tokens
        if result.cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + result.cost_usd
        lane = self.lanes[result.index // self._size]
        lane.start = at_s if lane.start is None else lane.start
        lane.end = at_s if lane.end is None else max(lane.end, at_s)
        lane.done += 1
        lane.failed += 0 if result.ok else 1

    def snapshot(
        self, *, state: str, elapsed_s: float, limit: int | None, budget_left_usd: float | None
    ) -> dict[str, Any]:
        done = self.ok + sum(self.failed.values())
        return {
            "state": state,
            "total": self.total,
            "done": done,
            "ok": self.ok,
            "failed": dict(self.failed),
            "in_flight": self.in_flight,
            "elapsed_s": round(elapsed_s, 3),
            "per_s": round(done / elapsed_s, 2) if elapsed_s > 0 else None,
            "tokens": self.tokens,
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 6),
            "limit": limit,
            "budget_left_usd": None if budget_left_usd is None else round(budget_left_usd, 6),
            "lanes": [[lane.start, lane.end, lane.done, lane.count, lane.failed] for lane in self.lanes],
        }


class LiveRun:
    """A run's widget, its tally and the task that sends snapshots; made by :func:`hybrid.progress.bar`
    for a watched kernel.  The orchestrator gives it ``cancel`` (stop this run) and ``measures``
    (the concurrency limit and budget left, read at each snapshot) once the run exists."""

    def __init__(self, total: int, description: str) -> None:
        from IPython.display import display

        self.tally = Tally(total)
        self.cancel: Callable[[], None] | None = None
        self.measures: Callable[[], tuple[int | None, float | None]] = lambda: (None, None)
        self.state = "running"
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()
        self.widget = _widget_class()(title=description)
        self.widget.on_msg(self._message)
        self._display = display(self.widget, display_id=True)  # type: ignore[no-untyped-call]
        self._ticker = self._loop.create_task(self._tick(), name="hybrid-live-run")

    # -- on the loop ----------------------------------------------------------------------------
    def started(self, index: int) -> None:
        self.tally.started(index, self._loop.time() - self._t0)

    def finished(self, result: QueryResult) -> None:
        self.tally.finished(result, self._loop.time() - self._t0)

    def send(self) -> None:
        """One snapshot to the front end."""
        limit, budget_left = self.measures()
        self.widget.snapshot = self.tally.snapshot(
            state=self.state, elapsed_s=self._loop.time() - self._t0, limit=limit, budget_left_usd=budget_left
        )

    async def _tick(self) -> None:
        """A snapshot about every :data:`EVERY_S` of real time.  The wait is on the loop's clock, which
        on a virtual clock (``hybrid.simulate``) runs hours of model time per real second: each wait
        is stretched by how fast the loop's clock ran during the last one, so a virtual day costs a
        few ticks, not one per quarter of a model second."""
        step = EVERY_S
        while True:
            self.send()
            real, clock = time.monotonic(), self._loop.time()
            await asyncio.sleep(step)
            pace = (self._loop.time() - clock) / max(time.monotonic() - real, 1e-6)  # loop s per real s
            step = EVERY_S * max(1.0, pace)

    def close(self) -> None:
        """The run ended: stop sending, after one last snapshot (once, however often called)."""
        if self.state in ("ended", "cancelled"):
            return
        self._ticker.cancel()
        self.widget.cancellable = False
        self.state = "cancelled" if self.state == "cancelling" else "ended"
        self.send()

    def show(self, summary_html: str) -> None:
        """Replace the widget's display by the run's summary, and let the widget go."""
        from IPython.display import HTML

        if self._display is not None:
            self._display.update(HTML(summary_html))  # type: ignore[no-untyped-call]
        with contextlib.suppress(Exception):  # a front end already gone
            self.widget.close()

    def _cancel_on_loop(self) -> None:
        if self.state == "running" and self.cancel is not None:
            self.state = "cancelling"
            self.widget.cancellable = False
            self.send()
            self.cancel()

    def _ready_on_loop(self) -> None:
        if self.state == "running" and self.cancel is not None:
            self.widget.cancellable = True

    # -- from the front end: on a kernel subshell's thread, or after the cell on an old kernel ----
    def _message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        handler = {"cancel": self._cancel_on_loop, "ready": self._ready_on_loop}.get(str(kind))
        if handler is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the run is long over
                self._loop.call_soon_threadsafe(handler)


_WIDGET: Any = None


def _widget_class() -> Any:
    """The anywidget class, made on first use (anywidget is imported only in a watched kernel)."""
    global _WIDGET
    if _WIDGET is None:
        import anywidget
        import traitlets

        class RunWidget(anywidget.AnyWidget):
            _esm = SCRIPT
            title = traitlets.Unicode("").tag(sync=True)
            snapshot = traitlets.Dict({}).tag(sync=True)
            cancellable = traitlets.Bool(False).tag(sync=True)

        _WIDGET = RunWidget
    return _WIDGET


def available() -> bool:
    """Whether the widget can be shown here (anywidget installed)."""
    import importlib.util

    return importlib.util.find_spec("anywidget") is not None
