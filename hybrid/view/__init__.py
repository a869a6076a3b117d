"""``hybrid view``: a local web viewer of the run store, live while a run is still going.

``hybrid view --store runs.sqlite`` serves, on 127.0.0.1: the runs (name, mode, when, ok/failed,
wall, tokens, cost), a page per run (one row per query, the timeline, efficiency against the
ideal, tokens per query) and a page comparing two runs.  It only reads the store, which SQLite's
WAL mode lets it do while a notebook in another process writes to it, so a run shows up and fills
in as it goes: ``GET /runs/<name>/events`` streams the store's events as Server-Sent Events
(``query_started``, ``query_completed``, ``final_result``), replayed from the start for a finished
run and resumed from ``Last-Event-ID`` after a reconnect.  The pages are plain HTML, CSS and one
small script shipped in the package: no build step, no CDN, it works offline.

>>> hybrid.view.serve("runs.sqlite", port=8765)   # or, from a terminal: hybrid view --store runs.sqlite
"""

from hybrid.view.server import make_app, serve

__all__ = ["make_app", "serve"]
