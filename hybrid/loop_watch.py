"""Notice when something blocks the event loop during a run, and say for how long and where.

A gathered run only overlaps its requests while the loop is free.  A synchronous call in an async
cell (``time.sleep``, a blocking SDK call, a heavy consumer of ``orch.stream()``) stops every
request's progress at once and silently turns concurrency into a queue.  Nothing in the run's
numbers says so, since the blocked time looks like latency.

:class:`LoopWatch` is a small thread that pings the loop a few times per blocking threshold
(``loop.call_soon_threadsafe``).  When a ping goes unanswered past :data:`BLOCKED_S`, it reads the
loop thread's current frame, which is where the loop is stuck; when the loop answers, the stall's
length is known.  A loop has one watcher, shared by the runs on it (:func:`watch` gives each
run a :class:`Window` and its own stalls); its thread runs while any run does.  This has to be
real time: a blocked loop is invisible on the loop's own clock,
which is virtual in studies and tests.  Because of that, the notes go to
``RunResult.diagnostics`` (kept in the store, shown by the viewer) and never into ``warnings`` or a
repr: a loaded machine must not change a checked notebook cell.
"""

from __future__ import annotations

import asyncio
import linecache
import sys
import sysconfig
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

#: A loop blocked for longer than this (seconds of real time) gets a note.
BLOCKED_S = 0.1
#: Pings per threshold: a stall is measured to within ``BLOCKED_S / PINGS_PER_THRESHOLD``.
PINGS_PER_THRESHOLD = 4
#: Stalls described one by one; the rest are summed up in one line.
MAX_NOTES = 5


@dataclass(frozen=True)
class Stall:
    """The loop did not run for ``blocked_s`` seconds, starting ``at_s`` into the run, stuck in ``where``."""

    at_s: float
    blocked_s: float
    where: str


#: Each loop's one watcher: the runs on a loop share it (an open loop of single-query runs would
#: otherwise start a thread per query).
_WATCHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopWatch] = weakref.WeakKeyDictionary()


def watch(loop: asyncio.AbstractEventLoop) -> Window:
    """Start noting the stalls of ``loop`` for one run; :meth:`Window.stop` returns its notes."""
    watcher = _WATCHES.get(loop)
    if watcher is None:
        watcher = _WATCHES[loop] = LoopWatch(loop)
    return watcher.open()


class Window:
    """One run's view of its loop's watcher: the stalls between its start and :meth:`stop`."""

    def __init__(self, watcher: LoopWatch) -> None:
        self._watcher = watcher
        self._t0 = time.perf_counter()

    def stop(self) -> tuple[str, ...]:
        """Stop watching for this run and return its notes: one per stall that overlapped it (the
        longest :data:`MAX_NOTES`), in order, each timed from the run's start."""
        mine = [
            Stall(at - self._t0, blocked, where)
            for at, blocked, where in self._watcher.stalls
            if at + blocked > self._t0
        ]
        self._watcher.close(self)
        return notes(mine)


class LoopWatch:
    """Watches one loop from a daemon thread while any run on it has a :class:`Window` open."""

    def __init__(self, loop: asyncio.AbstractEventLoop, threshold_s: float = BLOCKED_S) -> None:
        self._loop = loop
        self._threshold = threshold_s
        self._loop_thread = threading.get_ident()
        self._windows: set[Window] = set()
        #: Stalls while windows were open: (when it began, seconds, where), on ``perf_counter``.
        self.stalls: list[tuple[float, float, str]] = []
        #: The ping in flight (when it was sent) and where the loop was found stuck since.
        self._sent: float | None = None
        self._where: str | None = None
        self._stop = threading.Event()

    def open(self) -> Window:
        """A window for one run; the thread starts with the first open window."""
        window = Window(self)
        if not self._windows:
            self._stop = threading.Event()
            threading.Thread(target=self._watch, args=(self._stop,), name="hybrid-loop-watch", daemon=True).start()
        self._windows.add(window)
        return window

    def close(self, window: Window) -> None:
        """The run of ``window`` ended; with the last one, the thread stops and the stalls are forgotten."""
        self._windows.discard(window)
        if not self._windows:
            self._stop.set()
            self.stalls.clear()

    def _watch(self, stop: threading.Event) -> None:
        every = self._threshold / PINGS_PER_THRESHOLD
        while not stop.wait(every):
            sent = self._sent
            if sent is None:
                self._sent = time.perf_counter()
                try:
                    self._loop.call_soon_threadsafe(self._answer)
                except RuntimeError:  # the loop closed under a run that never ended
                    return
            elif self._where is None and time.perf_counter() - sent > self._threshold:
                self._where = _where(sys._current_frames().get(self._loop_thread))

    def _answer(self) -> None:
        """Runs on the loop: the ping got through; a late one was a stall."""
        sent, where = self._sent, self._where
        self._sent = self._where = None
        if sent is None:
            return
        late = time.perf_counter() - sent
        if late > self._threshold and self._windows:
            self.stalls.append((sent, late, where or "an unknown place"))


def notes(stalls: list[Stall]) -> tuple[str, ...]:
    """What a run's diagnostics say about ``stalls``."""
    if not stalls:
        return ()
    shown = sorted(sorted(stalls, key=lambda s: -s.blocked_s)[:MAX_NOTES], key=lambda s: s.at_s)
    lines = [
        f"The event loop was blocked for at least {s.blocked_s:.2f} s (real time) {s.at_s:.2f} s into the run, in "
        f"{s.where}: every request stood still meanwhile. Move blocking work off the loop "
        "(await asyncio.to_thread(...)) or make it async."
        for s in shown
    ]
    if len(stalls) > len(shown):
        rest = [s for s in stalls if s not in shown]
        lines.append(f"... and {len(rest)} shorter stalls, {sum(s.blocked_s for s in rest):.2f} s in all.")
    return tuple(lines)


def _where(frame: FrameType | None) -> str:
    """Where the loop's thread is (:func:`_describe`); a frame caught mid-change (it is another
    thread's, read while it runs) is "an unknown place", never an error in the watching thread."""
    if frame is None:
        return "an unknown place"
    try:
        return _describe(frame)
    except Exception:
        return "an unknown place"


def _describe(frame: FrameType) -> str:
    """Where the loop is stuck: the innermost frame of the caller's own code (not the kit, the
    standard library or an installed package), which is the line to change, and the innermost frame
    when that is elsewhere (a blocking library call, say)."""
    frames: list[FrameType] = []
    current: FrameType | None = frame
    while current is not None:
        frames.append(current)
        current = current.f_back
    theirs = next((f for f in frames if not f.f_code.co_filename.startswith(_NOT_THE_CALLERS)), None)
    if theirs is None:
        return _line(frames[0])
    return _line(theirs) + ("" if theirs is frames[0] else f", inside {_line(frames[0])}")


def _line(frame: FrameType) -> str:
    code, line = frame.f_code, frame.f_lineno
    source = linecache.getline(code.co_filename, line).strip() if line is not None else ""
    return f"{code.co_filename}:{line} in {code.co_name}" + (f" ({source})" if source else "")


#: Code that is not the caller's own: the kit, the standard library, installed packages.
_NOT_THE_CALLERS = tuple(
    {
        str(Path(__file__).parent),
        *(sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")),
    }
)
